# Per-run table of an `oarl compare` SmolLM2 study folder (experiments/SMOLLM2.md 3h):
#   python experiments/smollm2/per_run_table.py runs/smol-p16
import json, math, statistics, sys
from pathlib import Path
root = Path(sys.argv[1])
names = {"none": "GRPO", "gradient": "OAR-G", "perturbation": "OAR-P (sentence spans)", "entropy": "entropy"}
print("| run | before | step 10 | step 20 | gain (paired SE) | step time mean (min-max) | credit share | whole run |")
print("|---|---|---|---|---|---|---|---|")
for credit in names:
    for seed in (0, 1, 2):
        d = root / f"{credit}-seed{seed}"
        if not (d / "summary.json").is_file():
            print(f"| {names[credit]}, seed {seed} | missing |"); continue
        s = json.loads((d / "summary.json").read_text())
        rows = [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines() if l.strip()]
        curve = {r["step"]: r["heldout/test"] for r in rows if "heldout/test" in r}
        times = [r["step_time"] for r in rows if "step_time" in r]
        b, a = s["heldout_before"]["test"], s["heldout_after"]["test"]
        diffs = [y - x for x, y in zip(b["per_problem"], a["per_problem"])]
        se = statistics.stdev(diffs) / math.sqrt(len(diffs))
        ov = s.get("credit_overhead")
        print(f"| {names[credit]}, seed {seed} | {b['avg']:.3f} | {curve.get(10, float('nan')):.3f} | {a['avg']:.3f} | "
              f"{a['avg'] - b['avg']:+.3f} ± {se:.3f} | {statistics.fmean(times):.0f} s ({min(times):.0f}-{max(times):.0f}) | "
              f"{'-' if ov is None else f'{100*ov:.1f}%'} | {s['wall_time_s']:.0f} s ({s.get('sessions',1)} sessions) |")
