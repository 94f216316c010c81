#!/usr/bin/env bash
# The SmolLM2 study (issue 12): `oarl compare` with every estimator x 3 seeds on the default SmolLM2 regime,
# one run after another, held-out accuracy every 5 steps (for "steps to reach GRPO's final accuracy").
#   nohup experiments/smollm2/run_study.sh > experiments/logs/smollm2/study.log 2>&1 &
# Threads: 2 on an idle machine; set OMP_NUM_THREADS=1 when the machine is shared (oversubscribed OpenMP
# threads spin). The load average is printed before and after.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
uptime
start=$(date +%s)
PYTHONPATH=src $PY -m oarl.cli compare --model smollm2-135m --credits none,gradient,perturbation,entropy \
    --seeds ${SEEDS:-0,1,2} --eval_every ${EVAL_EVERY:-5} --output_dir ${OUT:-runs/smollm2-study} "$@"
echo "study wall time: $(( $(date +%s) - start )) s"
uptime
