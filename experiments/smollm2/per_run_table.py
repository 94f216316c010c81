"""Per-run table of an `oarl compare` SmolLM2 study folder (experiments/smollm2/README.md 3h):

PYTHONPATH=src python experiments/smollm2/per_run_table.py runs/smol-p16
"""

import json
import statistics
import sys
from pathlib import Path

from oarl.runs import heldout_curve, heldout_gain

NAMES = {"none": "GRPO", "gradient": "OAR-G", "perturbation": "OAR-P (sentence spans)", "entropy": "entropy"}

root = Path(sys.argv[1])
print("| run | before | step 10 | step 20 | gain (paired SE) | step time mean (min-max) | credit share | whole run |")
print("|---|---|---|---|---|---|---|---|")
for credit, name in NAMES.items():
    for seed in (0, 1, 2):
        run = root / f"{credit}-seed{seed}"
        if not (run / "summary.json").is_file():
            print(f"| {name}, seed {seed} | missing |")
            continue
        s = json.loads((run / "summary.json").read_text())
        curve = dict(map(tuple, heldout_curve(run)["test"]))
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        times = [r["step_time"] for r in rows if "step_time" in r]
        before, after = s["heldout_before"]["test"], s["heldout_after"]["test"]
        gain, se = heldout_gain(before, after)
        share = "-" if s["credit_overhead"] is None else f"{s['credit_overhead']:.1%}"
        print(
            f"| {name}, seed {seed} | {before['avg']:.3f} | {curve.get(10, float('nan')):.3f} | {after['avg']:.3f} | "
            f"{gain:+.3f} ± {se:.3f} | {statistics.fmean(times):.0f} s ({min(times):.0f}-{max(times):.0f}) | "
            f"{share} | {s['wall_time_s']:.0f} s ({s.get('sessions', 1)} sessions) |"
        )
