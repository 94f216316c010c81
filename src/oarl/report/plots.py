"""Training plots (PNG, matplotlib) from a run directory's ``metrics.jsonl``."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no screen needed
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

# figure file -> (title, y label, [(metric key, legend label), ...])
PLOTS = {
    "reward.png": ("Training reward", "reward", [("reward", "mean reward"), ("reward_std", "reward std")]),
    "heldout_accuracy.png": ("Held-out accuracy", "accuracy", []),  # keys starting with "heldout/" are added
    "credit_weights.png": (
        "Credit weights",
        "value",
        [("credit/weight_std", "weight std"), ("credit/weight_max", "weight max"),
         ("credit/suppressed_frac", "suppressed frac"), ("credit/boosted_frac", "boosted frac")],
    ),
}


def read_metrics(path: str | Path) -> list[dict]:
    rows = []
    with open(path) as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    return rows


def _series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for row in rows:
        value = row.get(key)
        if isinstance(value, (int, float)) and value == value:  # skip None / NaN
            xs.append(row.get("step", len(xs)))
            ys.append(value)
    return xs, ys


def make_plots(run_dir: str | Path) -> list[Path]:
    """Write the PNG plots of ``run_dir/metrics.jsonl`` into ``run_dir/plots/``; returns their paths."""
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
    heldout = sorted({k for row in rows for k in row if k.startswith("heldout/")})
    out_dir = run_dir / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (title, ylabel, series) in PLOTS.items():
        if name == "heldout_accuracy.png":
            series = [(k, k.removeprefix("heldout/")) for k in heldout]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        drawn = False
        for key, label in series:
            xs, ys = _series(rows, key)
            if xs:
                ax.plot(xs, ys, marker="o" if len(xs) < 20 else None, label=label)
                drawn = True
        if drawn:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no data logged", ha="center", va="center", transform=ax.transAxes)
        ax.set(title=title, xlabel="step", ylabel=ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=100)
        plt.close(fig)
        written.append(out_dir / name)
    return written
