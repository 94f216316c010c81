"""Training plots (PNG, matplotlib) from a run directory's ``metrics.jsonl``."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no screen needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

# figure file -> (title, y label, [(metric key, legend label), ...])
PLOTS = {
    "reward.png": ("Training reward", "reward", [("reward", "mean reward"), ("reward_std", "reward std")]),
    "heldout_accuracy.png": ("Held-out accuracy", "accuracy", []),  # keys starting with "heldout/" are added
    "credit_weights.png": (
        "Credit weights",
        "value",
        [
            ("credit/weight_std", "weight std"),
            ("credit/weight_max", "weight max"),
            ("credit/suppressed_frac", "suppressed frac"),
            ("credit/boosted_frac", "boosted frac"),
        ],
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
    """Write the PNG plots of ``run_dir/metrics.jsonl`` into ``run_dir/plots/``; returns their paths. A plot with
    nothing to show (no held-out evaluation, no credit pass) is not written."""
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
        if not drawn:  # nothing was logged (no held-out evaluation, no credit pass): no empty figure
            plt.close(fig)
            continue
        ax.legend(fontsize=8)
        ax.set(title=title, xlabel="step", ylabel=ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=100)
        plt.close(fig)
        written.append(out_dir / name)
    return written


def agreement_plot(report: dict, path: str | Path) -> Path:
    """One figure of an ``oarl explain`` benchmark report (``oarl.report.agreement.summarize``): per estimator,
    Spearman and Kendall against rollout credit for each source of completions (mean ± SE), and hit@1 of the
    known wrong step with the chance rate as a line."""
    estimators, sources, wrong = report["estimators"], list(report["agreement"]), report.get("wrong_step")
    panels = (["agreement"] if sources else []) + (["wrong_step"] if wrong else [])
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(5.5 * max(len(panels), 1), 3.6), squeeze=False)
    x = np.arange(len(estimators))
    for ax, panel in zip(axes[0], panels):
        if panel == "agreement":
            bars = [(source, metric) for source in sources for metric in ("spearman", "kendall")]
            width = 0.8 / len(bars)
            for i, (source, metric) in enumerate(bars):
                values = [report["agreement"][source][e][metric] for e in estimators]
                ax.bar(
                    x + (i - (len(bars) - 1) / 2) * width,
                    [v["mean"] or 0.0 for v in values],
                    width,
                    yerr=[v["se"] or 0.0 for v in values],
                    capsize=2,
                    label=f"{metric} ({source})",
                )
            ax.axhline(0.0, color="black", linewidth=0.8)
            ax.set(title="Agreement with rollout credit (step level)", ylabel="rank correlation", ylim=(-1.05, 1.05))
        else:
            values = [wrong["estimators"][e] for e in estimators]
            ax.bar(
                x,
                [v["mean"] or 0.0 for v in values],
                0.6,
                yerr=[v["se"] or 0.0 for v in values],
                capsize=2,
                label="hit@1",
            )
            ax.axhline(wrong["chance"], color="red", linestyle="--", label=f"chance {wrong['chance']:.2f}")
            ax.set(title=f"Wrong step found (n={wrong['n']} flawed demos)", ylabel="hit@1", ylim=(0, 1.05))
        ax.set_xticks(x, estimators, rotation=20)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, axis="y")
    if not panels:
        axes[0][0].text(0.5, 0.5, "nothing to compare", ha="center", va="center", transform=axes[0][0].transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
