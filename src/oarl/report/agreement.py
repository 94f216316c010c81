"""The credit benchmark: how well each estimator agrees with rollout credit, and finds a known wrong step.

    rankdata(x) / spearman(a, b) / kendall(a, b)   rank correlations (ties: average ranks; Kendall's tau-b)
    step_scores(values, steps)                     a completion's token importances -> one score per step (mean)
    top_step_hit(scores, wrong)                    hit@1 of the known wrong step, ties shared
    summarize(explained, estimators)               the report of an ``explain_batch`` result (see below)
    format_table(report)                           one plain-text table for all estimators

Everything is compared at the level of reasoning steps (sentences or lines, the steps rollout credit samples
at), because that is the resolution of the reference: rollout credit gives every token of a step the same value.
An estimator's score of a step is the mean importance of its tokens (the mean, not the sum, so that a long step
does not win by its length). Per completion with at least 2 steps:

    Spearman's rho and Kendall's tau-b between the estimator's step scores and rollout credit |delta V|
    (NaN, and left out, when either side is constant: no ranking to compare), then their mean +- standard error
    over the completions of each source ("sampled" completions of the model, flawed "demo"s, a "file");
    hit@1: 1 if the estimator's top step is the known wrong step (1/m when m steps tie at the top), with the chance
    rate of a random step, 1 / (number of steps), beside it. Completions with fewer than 2 steps are left out:
    there hit@1 is 1 whatever the estimator does (a hit@k with k >= the number of steps says nothing).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import torch

REFERENCE = "rollout"


def rankdata(x) -> torch.Tensor:
    """Ranks 1..n of a 1-D sequence, ties get the average of the ranks they span (as scipy.stats.rankdata)."""
    x = torch.as_tensor(x, dtype=torch.float64).flatten()
    n = x.numel()
    if n == 0:
        return x
    order = torch.argsort(x, stable=True)
    ordered = x[order]
    new_group = torch.ones(n, dtype=torch.bool)
    new_group[1:] = ordered[1:] != ordered[:-1]
    group = torch.cumsum(new_group.long(), 0) - 1  # [n] tie group of each sorted position
    positions = torch.arange(1, n + 1, dtype=torch.float64)
    counts = torch.zeros(int(group[-1]) + 1, dtype=torch.float64).index_add_(
        0, group, torch.ones(n, dtype=torch.float64)
    )
    sums = torch.zeros_like(counts).index_add_(0, group, positions)
    ranks = torch.empty(n, dtype=torch.float64)
    ranks[order] = (sums / counts)[group]
    return ranks


def _pair(a, b, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.as_tensor(a, dtype=torch.float64).flatten()
    b = torch.as_tensor(b, dtype=torch.float64).flatten()
    if a.numel() != b.numel():
        raise ValueError(f"{name} needs equal lengths, got {a.numel()} and {b.numel()}")
    return a, b


def spearman(a, b) -> float:
    """Spearman's rho of a and b (Pearson correlation of their average ranks); NaN when fewer than 2 values
    or when either side is constant (no ranking to compare)."""
    a, b = _pair(a, b, "spearman")
    if a.numel() < 2:
        return float("nan")
    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float((ra * ra).sum()) * float((rb * rb).sum()))
    if denom == 0:
        return float("nan")
    return max(-1.0, min(1.0, float((ra * rb).sum()) / denom))


def kendall(a, b) -> float:
    """Kendall's tau-b of a and b: (concordant - discordant pairs) / sqrt((n0 - ties_a) (n0 - ties_b)), the
    variant for ties (Kendall 1945; scipy.stats.kendalltau's default); NaN when fewer than 2 values or when
    either side is constant."""
    a, b = _pair(a, b, "kendall")
    if a.numel() < 2:
        return float("nan")
    upper = torch.triu(torch.ones(a.numel(), a.numel(), dtype=torch.bool), diagonal=1)  # each pair once
    sa = torch.sign(a[:, None] - a[None, :])[upper]
    sb = torch.sign(b[:, None] - b[None, :])[upper]
    denom = math.sqrt(float((sa * sa).sum()) * float((sb * sb).sum()))
    if denom == 0:
        return float("nan")
    return max(-1.0, min(1.0, float((sa * sb).sum()) / denom))


def describe(values: Sequence[float]) -> dict:
    """mean, standard error of the mean (sample std / sqrt(n); None below 2 values) over the finite values,
    with n (used) and n_nan (left out)."""
    kept = [v for v in values if v is not None and math.isfinite(v)]
    return {
        "mean": statistics.fmean(kept) if kept else None,
        "se": statistics.stdev(kept) / math.sqrt(len(kept)) if len(kept) > 1 else None,
        "n": len(kept),
        "n_nan": len(values) - len(kept),
    }


def step_scores(values: Sequence[float], steps: Sequence[int]) -> list[float]:
    """Mean of values over the tokens of each step 0..S-1 (steps: one id per token, -1 outside the steps)."""
    count = max(steps, default=-1) + 1
    sums, sizes = [0.0] * count, [0] * count
    for value, step in zip(values, steps):
        if step >= 0:
            sums[step] += value
            sizes[step] += 1
    return [s / n if n else float("nan") for s, n in zip(sums, sizes)]


def top_step_hit(scores: Sequence[float], wrong: int) -> float | None:
    """1 if step `wrong` has the highest score, 1/m if it ties with m - 1 others at the top, else 0; None when a
    score is not finite."""
    if not all(math.isfinite(s) for s in scores):
        return None
    best = max(scores)
    top = [i for i, s in enumerate(scores) if s == best]
    return 1.0 / len(top) if wrong in top else 0.0


def wrong_step(spans: Sequence[Sequence[int]], steps: Sequence[int], char_span: Sequence[int]) -> int | None:
    """The step of the first token that overlaps char_span = (start, end) (the known wrong result), or None."""
    s0, s1 = char_span
    for (s, e), step in zip(spans, steps):
        if e > s0 and s < s1 and step >= 0:
            return step
    return None


def summarize(explained: dict, estimators: Sequence[str], reference: str | None = REFERENCE) -> dict:
    """The benchmark report of an ``explain_batch`` result whose rows hold "steps" (step id per token), "source",
    and optionally "error_span" (the known wrong result, character span): per source, each estimator's
    Spearman and Kendall against `reference` (when it is among the estimators) and, over the rows with a known
    wrong step, hit@1 and the chance rate."""
    rows = explained["completions"]
    estimators = list(estimators)
    reference = reference if reference in estimators else None
    agreement: dict = {}
    hits = {name: [] for name in estimators}
    chance = []
    for row in rows:
        n_steps = max(row["steps"], default=-1) + 1
        if not row["has_answer"] or n_steps < 2:
            continue
        scores = {name: step_scores(row["importance"][name], row["steps"]) for name in estimators}
        if reference is not None:
            per_source = agreement.setdefault(
                row.get("source", "file"), {name: {"spearman": [], "kendall": []} for name in estimators}
            )
            for name in estimators:
                per_source[name]["spearman"].append(spearman(scores[name], scores[reference]))
                per_source[name]["kendall"].append(kendall(scores[name], scores[reference]))
        if row.get("error_span") is not None:
            wrong = wrong_step(row["spans"], row["steps"], row["error_span"])
            if wrong is None:
                continue
            chance.append(1.0 / n_steps)
            for name in estimators:
                hits[name].append(top_step_hit(scores[name], wrong))
    report = {
        "completions": len(rows),
        "with_answer": sum(bool(r["has_answer"]) for r in rows),
        "estimators": estimators,
        "reference": reference,
        "agreement": {
            source: {name: {k: describe(v) for k, v in metrics.items()} for name, metrics in per.items()}
            for source, per in agreement.items()
        },
        "time_s": explained.get("time_s", {}),
    }
    if chance:
        report["wrong_step"] = {
            "n": len(chance),
            "chance": statistics.fmean(chance),
            "estimators": {name: describe(v) for name, v in hits.items()},
        }
    return report


def json_safe(obj):
    """obj with every NaN / inf float replaced by None (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def _mean_se(d: dict | None) -> str:
    if not d or d["mean"] is None:
        return "-"
    return f"{d['mean']:+.2f}" + (f" ± {d['se']:.2f}" if d["se"] is not None else "")


def format_table(report: dict) -> str:
    """One plain-text table: a row per estimator; agreement with the reference per source, hit@1, time."""
    sources = list(report["agreement"])
    wrong = report.get("wrong_step")
    head = f"  {'estimator':<14}"
    for source in sources:
        n = max((m["spearman"]["n"] for m in report["agreement"][source].values()), default=0)
        head += f" | {f'Spearman ({source}, n={n})':>24} {'Kendall':>13}"
    if wrong:
        head += f" | {f'hit@1 (n={wrong[chr(110)]})':>13} {'chance':>6}"
    head += f" | {'s/completion':>12}"
    lines = []
    if report["reference"]:
        lines.append(
            f"Agreement with rollout credit at step level (mean ± SE over completions), "
            f"{report['with_answer']}/{report['completions']} completions with an answer"
        )
    else:
        lines.append("No agreement: rollout credit, the reference, is not among the estimators")
    if wrong:
        lines.append("hit@1: the top step is the known wrong step of a flawed demonstration (chance: a random step)")
    lines.append(head)
    per_completion = report["completions"] or 1
    for name in report["estimators"]:
        line = f"  {name:<14}"
        for source in sources:
            metrics = report["agreement"][source][name]
            line += f" | {_mean_se(metrics['spearman']):>24} {_mean_se(metrics['kendall']):>13}"
        if wrong:
            line += f" | {_mean_se(wrong['estimators'][name]):>13} {wrong['chance']:>6.2f}"
        seconds = report["time_s"].get(name)
        line += f" | {'-' if seconds is None else f'{seconds / per_completion:.3f}':>12}"
        lines.append(line)
    return "\n".join(lines)
