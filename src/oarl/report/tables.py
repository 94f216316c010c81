"""The tables of ``oarl eval``: one evaluation as markdown (results.md), several side by side (``--compare``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

RESULTS_JSON = "results.json"  # what ``oarl eval`` writes into its report folder (``oarl.commands.eval``)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def metric_rows(bench: dict) -> list[tuple[str, str]]:
    """(label, formatted value) of one benchmark's numbers, in table order."""
    n = bench.get("n", 1)
    rows = [("problems", str(bench.get("problems", 0)))]
    if f"avg@{n}" in bench:
        rows.append((f"avg@{n}", f"{_pct(bench[f'avg@{n}'])} ± {_pct(bench[f'avg@{n}_se'])}"))
    rows += [(k, _pct(v)) for k, v in bench.items() if k.startswith("pass@")]
    if f"maj@{n}" in bench:
        rows.append((f"maj@{n}", _pct(bench[f"maj@{n}"])))
    if "no_answer_frac" in bench:
        rows.append(("no answer %", _pct(bench["no_answer_frac"])))
        rows.append(("mean length", f"{bench['mean_length']:.1f}"))
    if bench.get("skipped_rows"):
        rows.append(("skipped rows", str(len(bench["skipped_rows"]))))
    return rows


def results_markdown(results: dict) -> str:
    """One table: a row per benchmark, a column per metric (percentages)."""
    s = results["settings"]
    header = (
        f"# Evaluation of `{results['model']}`\n\n"
        f"n={s['n']}, temperature={s['temperature']}, top_p={s['top_p']}, max_new_tokens={s['max_new_tokens']}, "
        f"seed={s['seed']}, backend={results['backend']}, prompt: {s['prompt_format']}"
        f" (`{s['prompt_template_used']!r}`"
        + (
            f"; {', '.join(s['own_prompt_benchmarks'])}: the task's own prompt"
            if s.get("own_prompt_benchmarks")
            else ""
        )
        + ")\n\n"
    )
    benches = results["benchmarks"]
    labels: list[str] = []
    for b in benches.values():
        labels += [lab for lab, _ in metric_rows(b) if lab not in labels]
    lines = ["| benchmark | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for name, b in benches.items():
        vals = dict(metric_rows(b))
        lines.append(f"| {name} | " + " | ".join(vals.get(lab, "–") for lab in labels) + " |")
    return header + "\n".join(lines) + "\n\nAccuracies in %; avg@n ± its standard error over problems.\n"


def _results_file(path: str | Path) -> Path:
    """A results.json, a report folder, or a train run (its newest evaluation, ``eval-*/``)."""
    path = Path(path)
    runs = sorted(path.glob(f"eval*/{RESULTS_JSON}"), key=lambda p: p.stat().st_mtime) if path.is_dir() else []
    for candidate in (path, path / RESULTS_JSON, *runs[-1:]):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no {RESULTS_JSON} at {path} (nor in {path / RESULTS_JSON} or {path / 'eval-*'})")


def compare_markdown(paths: Sequence[str | Path]) -> str:
    """One table with a column per evaluated model (a report dir, its results.json, or a train run dir)."""
    runs = []
    for p in paths:
        file = _results_file(p)
        runs.append((str(p).rstrip("/"), json.loads(file.read_text())))
    labels = [r.get("model") or p for p, r in runs]
    if len(set(labels)) < len(labels):
        labels = [p for p, _ in runs]
    table: dict[tuple[str, str], dict[int, str]] = {}
    for j, (_, res) in enumerate(runs):
        for bench, b in res["benchmarks"].items():
            for lab, val in metric_rows(b):
                table.setdefault((bench, lab), {})[j] = val
    lines = [
        "| benchmark | metric | " + " | ".join(f"`{lab}`" for lab in labels) + " |",
        "|---|---|" + "---|" * len(labels),
    ]
    for (bench, lab), vals in table.items():
        lines.append(f"| {bench} | {lab} | " + " | ".join(vals.get(j, "–") for j in range(len(runs))) + " |")
    settings = "\n".join(
        f"- `{lab}`: n={r['settings']['n']}, temperature={r['settings']['temperature']}, "
        f"max_new_tokens={r['settings']['max_new_tokens']}, prompt: {r['settings']['prompt_format']}"
        for lab, (_, r) in zip(labels, runs)
    )
    return "\n".join(lines) + "\n\n" + settings + "\n"
