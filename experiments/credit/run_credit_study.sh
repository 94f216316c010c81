#!/bin/sh
# Issue 13: every credit estimator against the others, on both forms of the embedded task (experiments/credit/README.md).
#   1. the credit benchmark: `oarl explain` (agreement with rollout credit, hit@1 of the wrong step), tree and chain;
#   2. the learning table: `oarl compare` of all six estimators x 3 seeds, tree and chain.
# Each command's output and the machine's load before and after it go to logs/credit_*.log.
# Env: THREADS (torch threads, default 2), STEPS (what to run, default "explain compare"), TASKS (default "tree chain").
cd "$(dirname "$0")/../.."
export PYTHONPATH="$PWD/src" OMP_NUM_THREADS="${THREADS:-2}" MKL_NUM_THREADS="${THREADS:-2}"
mkdir -p experiments/credit/logs
run() {  # run <log name> <command...>
  log="experiments/credit/logs/credit_$1.log"; shift
  { echo "# $(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg); threads ${OMP_NUM_THREADS}"
    echo "# $*"
    /usr/bin/time -f "# wall %e s" "$@" 2>&1 | grep -v -i "warn\|examples/s\|it/s\|^{'"
    echo "# $(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg)"; } > "$log" 2>&1
}
for step in ${STEPS:-explain compare}; do
  for task in ${TASKS:-tree chain}; do
    case "$step" in
      explain) run "explain_$task" oarl explain --task "$task" --n 64 --output "runs/credit-explain-$task" --png 3 ;;
      compare) run "compare_$task" oarl compare --task "$task" --credits none,gradient,perturbation,entropy,grail,rollout \
                 --seeds 0,1,2 --output_dir "runs/credit-compare-$task" ;;
    esac
  done
done
