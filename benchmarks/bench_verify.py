"""Throughput of the verifiable reward (items/s), this tree against a baseline revision, on benchmark golds.

    python benchmarks/bench_verify.py [--baseline REV] [--rounds 2]

Items, from the shared benchmark files (what a reward scores per completion):

    gsm8k solutions       ``is_correct`` of the 1,319 worked solutions (``answer`` text with its ``####`` line)
                          against their gold: answer finding + verification (numbers: the fast path)
    gsm8k wrong numbers   ``verify(gold + 1, gold)``: a wrong number, decided in-process
    gsm8k math-verify     the 1,319 golds against themselves with ``use_fast_path=False``: every pair through
                          the math-verify worker (the cost of an answer the fast path cannot decide)
    gsm8k wrong lists     ``verify("gold, gold + 1", gold)``: a wrong list against one number (issue 24: the
                          fast path no longer reads "18, 19" as the number 1819; math-verify decides)
    math500 solutions     ``is_correct`` of the 500 MATH-500 worked solutions against their gold (LaTeX:
                          mostly the worker)

The baseline (default: main before issue 9) and the tree run in child processes, alternately, ``--rounds``
times; the table gives the best round of each and the ratio tree / baseline. The worker start is not timed.
Run it alone on the machine (``flock -x /tmp/oarl-measure.lock``) and write ``uptime`` next to the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "3d520c2"  # main before issue 9
DATA = Path(os.environ.get("OARL_DATA_DIR") or ROOT.parent / "shared" / "data" / "benchmarks")  # as the tests

# one child per (version, round): prints {"name": items_per_s}
_CHILD = r"""
import json, sys, time
from oarl.data.benchmarks import load_benchmark
from oarl.rewards import is_correct, verify
data = sys.argv[1]
gsm_raw = [json.loads(l) for l in open(f"{data}/gsm8k.jsonl") if l.strip()]
gsm = load_benchmark("gsm8k", data_dir=data)
math = load_benchmark("math500", data_dir=data)
verify("\\frac{2}{4}", "\\frac{1}{2}", use_fast_path=False)  # start the worker (not timed)

def rate(fn, items):
    t0 = time.perf_counter()
    ok = sum(bool(fn(*item)) for item in items)
    return len(items) / (time.perf_counter() - t0), ok

out = {}
math_raw = [json.loads(l) for l in open(f"{data}/math500.jsonl") if l.strip()]
out["gsm8k solutions"] = rate(is_correct, [(r["answer"], g["answer"]) for r, g in zip(gsm_raw, gsm)])
out["gsm8k wrong numbers"] = rate(verify, [(str(int(g["answer"].replace(",", "")) + 1), g["answer"]) for g in gsm])
out["gsm8k math-verify"] = rate(lambda a, b: verify(a, b, use_fast_path=False), [(g["answer"], g["answer"]) for g in gsm])
out["gsm8k wrong lists"] = rate(verify, [(f"{g['answer']}, {int(g['answer'].replace(',', '')) + 1}", g["answer"]) for g in gsm])
out["math500 solutions"] = rate(is_correct, [(r["solution"], g["answer"]) for r, g in zip(math_raw, math)])
print(json.dumps(out))
"""


def run(src: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src))
    res = subprocess.run([sys.executable, "-c", _CHILD, str(DATA)], env=env, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default=BASELINE, help="git revision of the baseline")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline, "src"], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        best: dict[str, dict[str, tuple[float, int]]] = {"baseline": {}, "tree": {}}
        for r in range(args.rounds):
            for label, src in (("baseline", Path(tmp) / "src"), ("tree", ROOT / "src")):
                for name, (speed, ok) in run(src).items():
                    if speed > best[label].get(name, (0.0, 0))[0]:
                        best[label][name] = (speed, ok)
                print(f"round {r + 1}/{args.rounds}: {label} done", file=sys.stderr, flush=True)
    print(f"{'items':<20} {'baseline items/s':>17} {'tree items/s':>13} {'ratio':>6}   scored right (baseline, tree)")
    for name, (speed, ok) in best["tree"].items():
        base, base_ok = best["baseline"][name]
        print(f"{name:<20} {base:>17.0f} {speed:>13.0f} {speed / base:>6.2f}   {base_ok}, {ok}")


if __name__ == "__main__":
    main()
