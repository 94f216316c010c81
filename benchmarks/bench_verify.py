"""Throughput of the verifiable reward (items/s), this tree against a baseline revision, on benchmark golds.

    python benchmarks/bench_verify.py [--baseline REV] [--rounds 5]

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

Both versions are imported into this one process (the baseline from ``git archive``, each with its own
math-verify worker, started afresh each round and not timed) and timed alternately, item set by item set,
``--rounds`` times: the table gives the best round of each and the ratio tree / baseline, measured at the
same moments of the machine's load. Write ``uptime`` next to the figures.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "3d520c2"  # main before issue 9
DATA = Path(os.environ.get("OARL_DATA_DIR") or ROOT.parent / "shared" / "data" / "benchmarks")  # as the tests


def load_oarl(src: Path):
    """oarl.rewards and oarl.data.benchmarks of the package under ``src``, imported afresh; the modules keep
    their own globals when the next version replaces them in ``sys.modules``."""
    for name in [m for m in sys.modules if m == "oarl" or m.startswith("oarl.")]:
        del sys.modules[name]
    sys.path.insert(0, str(src))
    try:
        return importlib.import_module("oarl.rewards"), importlib.import_module("oarl.data.benchmarks")
    finally:
        sys.path.remove(str(src))


def item_sets(rewards, benchmarks) -> dict[str, tuple]:
    gsm_raw = [json.loads(line) for line in open(DATA / "gsm8k.jsonl") if line.strip()]
    math_raw = [json.loads(line) for line in open(DATA / "math500.jsonl") if line.strip()]
    gsm = benchmarks.load_benchmark("gsm8k", data_dir=DATA)
    math = benchmarks.load_benchmark("math500", data_dir=DATA)
    number = [int(g["answer"].replace(",", "")) for g in gsm]
    verify, is_correct = rewards.verify, rewards.is_correct
    return {
        "gsm8k solutions": (is_correct, [(r["answer"], g["answer"]) for r, g in zip(gsm_raw, gsm)]),
        "gsm8k wrong numbers": (verify, [(str(n + 1), g["answer"]) for n, g in zip(number, gsm)]),
        "gsm8k math-verify": (
            lambda a, b: verify(a, b, use_fast_path=False),
            [(g["answer"], g["answer"]) for g in gsm],
        ),
        "gsm8k wrong lists": (verify, [(f"{g['answer']}, {n + 1}", g["answer"]) for n, g in zip(number, gsm)]),
        "math500 solutions": (is_correct, [(r["solution"], g["answer"]) for r, g in zip(math_raw, math)]),
    }


def rate(fn, items) -> tuple[float, int]:
    started = time.perf_counter()
    right = sum(bool(fn(*item)) for item in items)
    return len(items) / (time.perf_counter() - started), right


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default=BASELINE, help="git revision of the baseline")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", args.baseline, "src"], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        versions, modules = {}, {}
        for label, src in (("baseline", Path(tmp) / "src"), ("tree", ROOT / "src")):
            modules[label], benchmarks = load_oarl(src)
            versions[label] = item_sets(modules[label], benchmarks)
        best: dict[str, dict[str, tuple[float, int]]] = {"baseline": {}, "tree": {}}
        for r in range(args.rounds):
            for rewards in modules.values():  # a fresh worker each round: math-verify's parse cache starts empty
                rewards.shutdown_verifier()
                rewards.verify("\\frac{2}{4}", "\\frac{1}{2}", use_fast_path=False)  # its start is not timed
            for name in versions["tree"]:
                for label in ("baseline", "tree") if r % 2 == 0 else ("tree", "baseline"):
                    speed, right = rate(*versions[label][name])
                    if speed > best[label].get(name, (0.0, 0))[0]:
                        best[label][name] = (speed, right)
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    print(f"{'items':<20} {'baseline items/s':>17} {'tree items/s':>13} {'ratio':>6}   scored right (baseline, tree)")
    for name, (speed, right) in best["tree"].items():
        base, base_right = best["baseline"][name]
        print(f"{name:<20} {base:>17.0f} {speed:>13.0f} {speed / base:>6.2f}   {base_right}, {right}")


if __name__ == "__main__":
    main()
