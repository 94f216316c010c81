"""Answer finding and verification on real text, before and after a change (issue 9).

Two corpora, each scored by the current tree and by a baseline revision of oarl (``--baseline``, default
the commit before issue 9's rules) in child processes, so that one command prints both:

(a) worked solutions of the shared benchmark files: the final answer extracted from MATH-500, AIME24 and
    Minerva ``solution`` and from GSM8K's ``answer`` text (with its ``####`` line) must verify against the
    row's gold answer; rate per benchmark, and every failure with its reason;
(b) SmolLM2-135M-Instruct completions saved by ``sample_smollm2.py`` (``smollm2_samples.jsonl``): verdict
    per completion; every verdict that differs between the baseline and the tree is listed for hand-checking.

(c) Qwen2.5-Math-1.5B completions from a public write-up (``qwen_math_samples.jsonl``, made by
    ``public_samples.py``): R1-Zero-format (``</think> <answer> ... </answer>``) and ``\\boxed{}`` text with
    GSM8K golds; the same listing as (b).

Every extracted answer that changed is listed too (in (a) with an unchanged verdict, in (b) and (c) all).

    PYTHONPATH=src python experiments/answers/corpus.py [--baseline REV] [--failures]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SAMPLES = {"smollm2": HERE / "smollm2_samples.jsonl", "qwen": HERE / "qwen_math_samples.jsonl"}
BASELINE = "3d520c2"  # main before issue 9
DATA = Path(os.environ.get("OARL_DATA_DIR") or ROOT.parent / "shared" / "data" / "benchmarks")  # as the tests
SOLUTIONS = {
    "math500": ("math500.jsonl", "solution"),
    "aime24": ("aime24.jsonl", "solution"),
    "minerva": ("minerva_math.jsonl", "solution"),
    "gsm8k": ("gsm8k.jsonl", "answer"),
}

# Runs in a child process with PYTHONPATH set to one version of oarl: prints one JSON object.
_CHILD = r"""
import json, sys
try:
    from oarl.answer import extract_answer
except ImportError:  # a revision before the answer parser became the leaf module oarl.answer (issue 23)
    from oarl.credit.answer import extract_answer
from oarl.data.benchmarks import load_benchmark
from oarl.rewards import normalize_gold, verify
data, solutions, samples = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
out = {"solutions": {}, "samples": {}}
for name, (file, field) in solutions.items():
    raw = [json.loads(l) for l in open(f"{data}/{file}") if l.strip()]
    golds = load_benchmark(name, data_dir=data)
    rows = []
    for r, g in zip(raw, golds):
        pred = extract_answer(r[field])
        rows.append({"id": g["id"], "pred": pred, "gold": g["answer"], "ok": pred is not None and verify(pred, g["answer"])})
    out["solutions"][name] = rows
for name, path in samples.items():
    out["samples"][name] = []
    for line in open(path):
        s = json.loads(line)
        pred = extract_answer(s["completion"])
        gold = normalize_gold(s["gold"])
        out["samples"][name].append({"pred": pred, "ok": bool(pred is not None and verify(pred, gold))})
print(json.dumps(out))
"""


def score(src: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src))
    samples = {name: str(path) for name, path in SAMPLES.items() if path.exists()}
    res = subprocess.run(
        [sys.executable, "-c", _CHILD, str(DATA), json.dumps(SOLUTIONS), json.dumps(samples)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(res.stdout.strip().splitlines()[-1])


def baseline_src(rev: str, tmp: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
    return tmp / "src"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default=BASELINE, help="git revision scored as 'before'")
    ap.add_argument("--failures", action="store_true", help="list every failure of the worked solutions")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        before = score(baseline_src(args.baseline, Path(tmp)))
    after = score(ROOT / "src")

    print(f"(a) worked solutions: extracted final answer verifies against the gold (before = {args.baseline})")
    print(f"{'benchmark':<10} {'rows':>5} {'before':>8} {'after':>8}")
    for name in SOLUTIONS:
        b, a = before["solutions"][name], after["solutions"][name]
        print(f"{name:<10} {len(a):>5} {_rate(b):>8.2%} {_rate(a):>8.2%}")
    for name in SOLUTIONS:
        fails = [r for r in after["solutions"][name] if not r["ok"]]
        changed = [(x, y) for x, y in zip(before["solutions"][name], after["solutions"][name]) if x["ok"] != y["ok"]]
        print(
            f"\n{name}: {len(fails)} failures after, {len(changed)} verdicts changed "
            f"({sum(y['ok'] for _, y in changed)} to right, {sum(not y['ok'] for _, y in changed)} to wrong)"
        )
        for x, y in changed:
            print(
                f"  changed {y['id']}: {x['pred']!r} {'right' if x['ok'] else 'wrong'} -> {y['pred']!r} "
                f"{'right' if y['ok'] else 'wrong'} (gold {y['gold']!r})"
            )
        moved = [
            (x, y)
            for x, y in zip(before["solutions"][name], after["solutions"][name])
            if x["pred"] != y["pred"] and x["ok"] == y["ok"]
        ]
        print(f"  extracted answer changed, same verdict: {len(moved)}")
        for x, y in moved:
            print(
                f"    {y['id']}: {x['pred']!r} -> {y['pred']!r} ({'right' if y['ok'] else 'wrong'}, gold {y['gold']!r})"
            )
        if args.failures:
            for r in fails:
                why = "no final answer found" if r["pred"] is None else f"extracted {r['pred']!r} != gold {r['gold']!r}"
                print(f"  FAIL {r['id']}: {why}")

    titles = {"smollm2": "(b) SmolLM2-135M-Instruct completions", "qwen": "(c) Qwen2.5-Math-1.5B completions (public)"}
    for name, path in SAMPLES.items():
        if name in after["samples"]:
            compare_samples(titles[name], path, before["samples"][name], after["samples"][name])
        else:
            print(f"\n{titles[name]}: no samples at {path}")


def _rate(rows: list[dict]) -> float:
    """Share of rows whose answer verified."""
    return sum(r["ok"] for r in rows) / len(rows)


def compare_samples(title: str, path: Path, before: list[dict], after: list[dict]) -> None:
    samples = [json.loads(line) for line in path.open()]
    print(f"\n{title} ({path.name}): accuracy before -> after, answer found")
    groups = Counter((s.get("benchmark", "gsm8k"), s.get("style", s.get("source", "").split("#")[0])) for s in samples)
    for key in sorted(groups):
        idx = [
            i
            for i, s in enumerate(samples)
            if (s.get("benchmark", "gsm8k"), s.get("style", s.get("source", "").split("#")[0])) == key
        ]
        acc = [_rate([res[i] for i in idx]) for res in (before, after)]
        found = [sum(res[i]["pred"] is not None for i in idx) / len(idx) for res in (before, after)]
        print(
            f"  {key[0]:<8} {key[1]:<7} n={len(idx):>3}  acc {acc[0]:6.1%} -> {acc[1]:6.1%}   "
            f"answer found {found[0]:6.1%} -> {found[1]:6.1%}"
        )
    changed = [i for i in range(len(samples)) if before[i]["ok"] != after[i]["ok"]]
    moved = [i for i in range(len(samples)) if before[i]["pred"] != after[i]["pred"]]
    print(
        f"  verdicts changed: {len(changed)} ({sum(after[i]['ok'] for i in changed)} wrong -> right, "
        f"{sum(not after[i]['ok'] for i in changed)} right -> wrong); extracted answer changed: {len(moved)}"
    )
    for i in moved:
        s, b, a = samples[i], before[i], after[i]
        tail = s["completion"][-160:].replace("\n", "\\n")
        mark = "VERDICT" if b["ok"] != a["ok"] else "answer "
        where = s.get("id", s.get("source"))
        print(
            f"  {mark} #{i} {where} gold {s['gold']!r}: {b['pred']!r} {'right' if b['ok'] else 'wrong'}"
            f" -> {a['pred']!r} {'right' if a['ok'] else 'wrong'}\n      ...{tail}"
        )


if __name__ == "__main__":
    main()
