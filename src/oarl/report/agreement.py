"""Agreement between credit estimators, and how often they find the known pivotal token.

    spearman(a, b)            rank correlation (average ranks for ties) of two importance vectors
    pairwise_spearman(...)    per completion, over its reasoning tokens, for pairs of estimators; mean / median
    pivot_hits(...)           for completions with a known pivotal character span (flawed arithmetic demos):
                              does the top-k of an estimator's reasoning tokens overlap the span? with the
                              chance rate of k random reasoning tokens for reference
    summarize(explained, ...) both, from the dict ``oarl.report.heatmap.explain_batch`` returns

The paper's claim "OAR-G approximates OAR-P" is a claim about rankings of tokens within a completion: Bi-Level
reshaping only uses the min-max normalised log1p importances, i.e. (up to the threshold's interpolation) their
order. So Spearman over the reasoning tokens of each completion is the number that matters.
"""

from __future__ import annotations

import math
import statistics
from itertools import combinations
from typing import Sequence

import torch


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
    counts = torch.zeros(int(group[-1]) + 1, dtype=torch.float64).index_add_(0, group, torch.ones(n, dtype=torch.float64))
    sums = torch.zeros_like(counts).index_add_(0, group, positions)
    ranks = torch.empty(n, dtype=torch.float64)
    ranks[order] = (sums / counts)[group]
    return ranks


def spearman(a, b) -> float:
    """Spearman's rho of a and b (Pearson correlation of their average ranks); NaN when fewer than 2 values
    or when either side is constant (no ranking to compare)."""
    a = torch.as_tensor(a, dtype=torch.float64).flatten()
    b = torch.as_tensor(b, dtype=torch.float64).flatten()
    if a.numel() != b.numel():
        raise ValueError(f"spearman needs equal lengths, got {a.numel()} and {b.numel()}")
    if a.numel() < 2:
        return float("nan")
    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float((ra * ra).sum()) * float((rb * rb).sum()))
    if denom == 0:
        return float("nan")
    return max(-1.0, min(1.0, float((ra * rb).sum()) / denom))


def _finite(values: list[float]) -> list[float]:
    return [v for v in values if v == v]


def describe(values: Sequence[float]) -> dict:
    """mean / median over the finite values, with n (used) and n_nan (left out)."""
    kept = _finite(list(values))
    return {
        "mean": statistics.fmean(kept) if kept else None,
        "median": statistics.median(kept) if kept else None,
        "n": len(kept),
        "n_nan": len(values) - len(kept),
    }


def _reasoning(values: Sequence[float], segments: Sequence[str]) -> list[float]:
    return [v for v, s in zip(values, segments) if s == "reasoning"]


def pairwise_spearman(completions: list[dict], pairs: Sequence[tuple[str, str]]) -> dict:
    """For each pair (a, b): Spearman of a's and b's importances over each completion's reasoning tokens.

    completions: dicts with "segments" (labels per token) and "importance" ({estimator: [float per token]})
    as explain_batch returns them. Completions without a parsed answer or with < 2 reasoning tokens give NaN
    (left out of mean / median, counted in n_nan)."""
    out = {}
    for a, b in pairs:
        rhos = []
        for row in completions:
            if not row.get("has_answer", True):
                rhos.append(float("nan"))
                continue
            rhos.append(spearman(_reasoning(row["importance"][a], row["segments"]),
                                 _reasoning(row["importance"][b], row["segments"])))
        out[f"{a}~{b}"] = {"a": a, "b": b, **describe(rhos), "per_completion": rhos}
    return out


def span_tokens(spans: Sequence[Sequence[int]], char_span: Sequence[int]) -> list[bool]:
    """Per token: does its [start, end) character span overlap char_span = (start, end)?"""
    s0, s1 = char_span
    return [e > s0 and s < s1 for s, e in spans]


def top_k(values: Sequence[float], k: int) -> list[int]:
    """Indices of the k largest values (ties: the earlier token first; NaN counts as smallest)."""
    keyed = [(-(v if v == v else -math.inf), i) for i, v in enumerate(values)]
    return [i for _, i in sorted(keyed)[:k]]


def chance_hit(num_tokens: int, num_pivot: int, k: int) -> float:
    """Probability that k reasoning tokens drawn at random (without replacement) include a pivot token:
    1 - C(L - s, k) / C(L, k). For k = 1 this is s / L."""
    if num_tokens <= 0 or num_pivot <= 0:
        return 0.0
    k = min(k, num_tokens)
    return 1.0 - math.comb(num_tokens - num_pivot, k) / math.comb(num_tokens, k)


def pivot_hits(importance: Sequence[float], segments: Sequence[str], pivot: Sequence[bool],
               ks: Sequence[int] = (1, 3)) -> dict | None:
    """Whether the top-k reasoning tokens by importance overlap the pivot tokens, for each k; and the chance
    rate of k random reasoning tokens. None when no pivot token is a reasoning token (nothing to find)."""
    idx = [t for t, s in enumerate(segments) if s == "reasoning"]
    flags = [bool(pivot[t]) for t in idx]
    if not any(flags):
        return None
    values = [importance[t] for t in idx]
    out = {"reasoning_tokens": len(idx), "pivot_tokens": sum(flags)}
    for k in ks:
        out[f"hit@{k}"] = any(flags[j] for j in top_k(values, k))
        out[f"chance@{k}"] = chance_hit(len(idx), sum(flags), k)
    return out


def pivot_hit_rate(completions: list[dict], estimators: Sequence[str], pivots: Sequence[Sequence[int] | None],
                   ks: Sequence[int] = (1, 3), candidates: Sequence[Sequence[Sequence[int]] | None] | None = None) -> dict:
    """Fraction of the completions with a known pivot span (character span, None = unknown) whose top-k
    reasoning tokens by each estimator overlap it; with the mean chance rate of k random reasoning tokens and
    the mean ratio pivot tokens / reasoning tokens ("span_fraction") for reference.

    candidates (optional): per completion, character spans of the places a pivot can be at all (e.g. every
    written intermediate result of an arithmetic solution); adds "chance_candidates", the hit rate of k
    tokens drawn at random among the candidate reasoning tokens: a stronger baseline than random tokens."""
    per_estimator = {name: {f"hit@{k}": [] for k in ks} for name in estimators}
    chance = {f"chance@{k}": [] for k in ks}
    chance_candidates = {f"chance@{k}": [] for k in ks}
    span_fraction = []
    for i, (row, char_span) in enumerate(zip(completions, pivots)):
        if char_span is None or not row.get("has_answer", True):
            continue
        pivot = span_tokens(row["spans"], char_span)
        first = None
        for name in estimators:
            hits = pivot_hits(row["importance"][name], row["segments"], pivot, ks)
            if hits is None:
                break
            first = first or hits
            for k in ks:
                per_estimator[name][f"hit@{k}"].append(float(hits[f"hit@{k}"]))
        if first is None:
            continue
        for k in ks:
            chance[f"chance@{k}"].append(first[f"chance@{k}"])
        span_fraction.append(first["pivot_tokens"] / first["reasoning_tokens"])
        if candidates is not None and candidates[i]:
            allowed = [any(flags) for flags in zip(*(span_tokens(row["spans"], c) for c in candidates[i]))]
            pool = [p for p, a, s in zip(pivot, allowed, row["segments"]) if s == "reasoning" and (a or p)]
            for k in ks:
                chance_candidates[f"chance@{k}"].append(chance_hit(len(pool), sum(pool), k))
    n = len(span_fraction)
    mean = lambda xs: statistics.fmean(xs) if xs else None  # noqa: E731
    out = {
        "n": n,
        "estimators": {name: {key: mean(v) for key, v in hits.items()} for name, hits in per_estimator.items()},
        "chance": {key: mean(v) for key, v in chance.items()},
        "span_fraction": mean(span_fraction),
    }
    if candidates is not None:
        out["chance_candidates"] = {key: mean(v) for key, v in chance_candidates.items()}
    return out


def default_pairs(estimators: Sequence[str]) -> list[tuple[str, str]]:
    """Every estimator against OAR-P when it is there (the reference the paper approximates), else all pairs."""
    names = [e for e in estimators if e != "none"]
    if "perturbation" in names:
        return [(e, "perturbation") for e in names if e != "perturbation"]
    return list(combinations(names, 2))


def summarize(explained: dict, estimators: Sequence[str], pivots: Sequence[Sequence[int] | None] | None = None,
              pairs: Sequence[tuple[str, str]] | None = None, ks: Sequence[int] = (1, 3),
              candidates: Sequence[Sequence[Sequence[int]] | None] | None = None) -> dict:
    """The agreement report of an explain_batch result: Spearman per pair, pivot hit rates (when pivots given;
    candidates: see pivot_hit_rate)."""
    rows = explained["completions"]
    pairs = default_pairs(estimators) if pairs is None else list(pairs)
    report = {
        "completions": len(rows),
        "with_answer": sum(bool(r["has_answer"]) for r in rows),
        "estimators": list(estimators),
        "spearman": pairwise_spearman(rows, pairs),
        "time_s": explained.get("time_s", {}),
    }
    if pivots is not None and any(p is not None for p in pivots):
        report["pivot"] = pivot_hit_rate(rows, estimators, pivots, ks, candidates)
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


def format_table(report: dict) -> str:
    """A short plain-text table of a summarize() report."""
    fmt = lambda x: "  -  " if x is None else f"{x:+.3f}" if x < 0 else f"{x:.3f}"  # noqa: E731
    lines = [f"Spearman over reasoning tokens ({report['with_answer']}/{report['completions']} completions with an answer)",
             f"  {'pair':<28} {'mean':>7} {'median':>7} {'n':>4}"]
    for item in report["spearman"].values():
        name = f"{item['a']} vs {item['b']}"
        lines.append(f"  {name:<28} {fmt(item['mean']):>7} {fmt(item['median']):>7} {item['n']:>4}")
    pivot = report.get("pivot")
    if pivot:
        keys = [k for k in pivot["chance"]]
        hit_keys = [k.replace("chance", "hit") for k in keys]
        lines.append(f"Pivot hit rate ({pivot['n']} flawed completions; top-k reasoning tokens overlap the first wrong result)")
        lines.append(f"  {'estimator':<28} " + " ".join(f"{k:>7}" for k in hit_keys))
        for name, hits in pivot["estimators"].items():
            lines.append(f"  {name:<28} " + " ".join(f"{fmt(hits[k]):>7}" for k in hit_keys))
        lines.append(f"  {'chance (random tokens)':<28} " + " ".join(f"{fmt(pivot['chance'][k]):>7}" for k in keys))
        if pivot.get("chance_candidates"):
            lines.append(f"  {'chance (random candidates)':<28} "
                         + " ".join(f"{fmt(pivot['chance_candidates'][k]):>7}" for k in keys))
        lines.append(f"  span tokens / reasoning tokens: {fmt(pivot['span_fraction'])}")
    times = report.get("time_s") or {}
    if times:
        lines.append("Time: " + ", ".join(f"{k} {v:.2f}s" for k, v in times.items()))
    return "\n".join(lines)
