#!/usr/bin/env bash
# The SmolLM2 study (issue 12): `oarl compare` with every estimator x 3 seeds on the default SmolLM2 regime,
# one run after another, held-out accuracy every 10 steps (for "steps to reach GRPO's final accuracy").
#   nohup experiments/smollm2/run_study.sh > experiments/smollm2/logs/study.log 2>&1 &
# Two at a time on two cores: one process per seed into the same folder (SEEDS=1 ... & SEEDS=2 ... &), then
# once more with SEEDS=0,1,2 for the whole table (finished runs are reused, not retrained).
# Threads: 2 on an idle machine; set OMP_NUM_THREADS=1 when the machine is shared (oversubscribed OpenMP
# threads spin). The load average is printed before and after.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
uptime
start=$(date +%s)
PYTHONPATH=src $PY -m oarl.cli compare --model smollm2-135m --credits none,gradient,perturbation,entropy \
    --seeds ${SEEDS:-0,1,2} --eval_every ${EVAL_EVERY:-10} --output_dir ${OUT:-runs/smollm2-study} "$@"
echo "study wall time: $(( $(date +%s) - start )) s"
uptime
