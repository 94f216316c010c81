#!/bin/sh
# The three timed default runs of experiments/regime/README.md, one after the other (never in parallel):
# first run (fresh cache, warm start included), cached run (plain GRPO), cached run with OAR-G.
# Env: THREADS (torch threads, default 1), OARL_CACHE, KEEP_CACHE=1 (do not wipe the cache), RUNS.
cd "$(dirname "$0")"
export PYTHONPATH="$PWD/../../src:$PWD" OARL_CACHE="${OARL_CACHE:-/tmp/oarl_timing_cache}"
mkdir -p logs
[ "${KEEP_CACHE:-0}" = 1 ] || rm -rf "$OARL_CACHE"
for what in ${RUNS:-first:none cached:none cached:gradient}; do
  set -- $(echo "$what" | tr : " ")
  echo "== $1 run, credit=$2, $(date +%T), load: $(cut -d' ' -f1-3 /proc/loadavg)"
  /usr/bin/time -f "wall %e s" python default_run.py --credit "$2" --threads "${THREADS:-1}" 2>&1 | grep -v -i "warn\|examples/s\|it/s\|^{'" | tail -12
done
