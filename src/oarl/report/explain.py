"""``oarl explain``'s work: credit of every estimator on the same completions, the heat map and the report files.

    explain_rows(model, tokenizer, ...)          the completions to explain: sampled ones and flawed demos
    explain_batch(model, tokenizer, prompts, completions, estimators)
                                                 importances and weights of every estimator, and their page
    write_report(out, explained, report, ...)    heatmap.html, agreement.json/.png, credit.jsonl (and heatmap.png)
    read_completions_jsonl(path)                 a user's completions

The heat map is drawn by ``oarl.report.heatmap``; the agreement with rollout credit by ``oarl.report.agreement``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from oarl.answer import extract_answer
from oarl.credit import CreditConfig, segment_completions, token_advantages
from oarl.credit.rollout import step_groups
from oarl.credit.segments import own_text
from oarl.data.arithmetic import demos, problems
from oarl.generation import HFBackend, Sampling, build_prompt
from oarl.report.agreement import json_safe
from oarl.report.heatmap import NO_ANSWER_NOTE, NO_REASONING_NOTE, Section, render_page, segment_labels
from oarl.report.plots import agreement_plot


def encode_completion(tokenizer, text: str) -> tuple[list[int], list[str], list[tuple[int, int]]]:
    """Token ids of ``text`` (no special tokens), each token's text and its [start, end) character span."""
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, spans = list(enc["input_ids"]), [tuple(s) for s in enc["offset_mapping"]]
    except (NotImplementedError, ValueError, TypeError, KeyError):  # slow tokenizers: no offsets
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        spans, pos = [], 0
        for i in range(len(ids)):  # prefix decoding: the span each token adds
            end = len(tokenizer.decode(ids[: i + 1], skip_special_tokens=False, clean_up_tokenization_spaces=False))
            spans.append((pos, max(pos, end)))
            pos = max(pos, end)
    tokens = [text[s:e] if e > s else tokenizer.decode([i], skip_special_tokens=False) for i, (s, e) in zip(ids, spans)]
    return ids, tokens, spans


def _pad(rows: list[list[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, W] ids and mask on the CPU (the caller moves them to the model's device)."""
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), max(width, 1)), pad_id, dtype=torch.long, device="cpu")
    mask = torch.zeros_like(ids)
    for b, r in enumerate(rows):
        if not r:
            continue
        cols = slice(width - len(r), width) if side == "left" else slice(0, len(r))
        ids[b, cols] = torch.tensor(r, dtype=torch.long, device="cpu")
        mask[b, cols] = 1
    return ids, mask


def explain_batch(
    model,
    tokenizer,
    prompts: list[str],
    completions: list[str],
    estimators: Sequence[str] = ("gradient", "perturbation", "entropy"),
    advantage: float = 1.0,
    *,
    batch_size: int = 8,
    seed: int = 0,
    title: str = "oarl credit heat map",
    headings: Sequence[str] | None = None,
    pivots: Sequence[tuple[int, int] | None] | None = None,
    tool_spans: Sequence[Sequence[tuple[int, int]] | None] | None = None,
    sampler=None,
    scorer=None,
    max_completion_length: int | None = None,
    **config_overrides,
) -> dict:
    """Importances and weights of every estimator on the same completions, and a heat-map page of them.

    prompts / completions: texts (a completion is what the model wrote after its prompt, no EOS).
    advantage: the (nonzero) advantage every completion gets, so none is skipped; every estimator computes its
    importances on every completion (apply_to "all" unless config_overrides says otherwise: GRAIL's own default
    would skip positive advantages).
    pivots: optional (start, end) character span per completion (None = none) outlined on the page.
    tool_spans: optional, per completion, the (start, end) character spans that a tool or an environment wrote (a
    token overlapping one is a tool token: no credit, shown as such; the answer is read from the rest). Rollout
    credit does not take them (its continuations would need the tool loop): ValueError.
    sampler / scorer / max_completion_length: rollout credit's (oarl.credit.rollout; the scorer's rows index
    `completions`), needed when "rollout" is among the estimators.
    config_overrides: CreditConfig fields (threshold, beta, floor, noise_std, outcome, chunk_size, rollouts, ...).

    Returns {"completions": [{"prompt", "completion", "tokens", "spans", "segments", "has_answer", "note",
    "steps" (the reasoning step of each token, -1 elsewhere: rollout credit's steps, merged to max_steps),
    "importance": {estimator: [float per token]}, "weights": {estimator: [...]}, "signed": [...] (rollout:
    V(after) - V(before) of each token's step)}, ...], "time_s": {estimator: seconds}, "stats": {estimator:
    CreditOutput.stats averaged over batches}, "html": the page, "sections": per completion, its Sections (to render
    a page of some of them with render_page)}.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    if advantage == 0:
        raise ValueError("advantage must be nonzero (a zero advantage skips the credit computation)")
    if pivots is not None and len(pivots) != len(completions):
        raise ValueError(f"{len(pivots)} pivots but {len(completions)} completions")
    if tool_spans is not None and len(tool_spans) != len(completions):
        raise ValueError(f"{len(tool_spans)} tool span lists but {len(completions)} completions")
    has_tools = tool_spans is not None and any(tool_spans)
    estimators = list(estimators)
    if has_tools and "rollout" in estimators:
        raise ValueError(
            "rollout credit cannot explain completions with tool spans (its continuations are sampled "
            "without the tool loop): leave it out of the estimators"
        )
    if "rollout" in estimators and (sampler is None or scorer is None):
        raise ValueError("rollout credit needs a sampler and a scorer")
    config_overrides = {"apply_to": "all", **config_overrides}
    configs = {name: CreditConfig(estimator=name, **config_overrides) for name in estimators}  # validates early
    steps_config = CreditConfig(estimator="rollout", **config_overrides)  # the steps every estimator is scored on
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device

    rows = []
    for i, (prompt, completion) in enumerate(zip(prompts, completions)):
        ids, tokens, spans = encode_completion(tokenizer, completion)
        foreign = (tool_spans[i] or []) if tool_spans is not None else []
        own = [int(not any(s < b and e > a for a, b in foreign)) for s, e in spans]
        rows.append(
            {
                "prompt": prompt,
                "completion": completion,
                "tokens": tokens,
                "spans": [list(s) for s in spans],
                "_ids": ids,
                "_prompt_ids": list(tokenizer(prompt, add_special_tokens=False)["input_ids"]),
                "_own": own,
                "segments": None,
                "has_answer": False,
                "note": None,
                "importance": {},
                "weights": {},
            }
        )
    times = {name: 0.0 for name in estimators}
    stats: dict[str, dict[str, float]] = {name: {} for name in estimators}

    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        prompt_ids, prompt_mask = _pad([r["_prompt_ids"] for r in chunk], pad_id, "left")
        completion_ids, completion_mask = _pad([r["_ids"] for r in chunk], pad_id, "right")
        tensors = [t.to(device) for t in (prompt_ids, prompt_mask, completion_ids, completion_mask)]
        adv = torch.full((len(chunk),), float(advantage), device=device)
        model_mask = _pad([r["_own"] for r in chunk], 1, "right")[0].to(device) if has_tools else None
        segments = segment_completions(
            tokenizer, tensors[2], tensors[3], span=steps_config.resolved_span(), model_mask=model_mask
        )
        steps = segments.steps if segments.steps is not None else segments.reasoning.long().cumsum(1) - 1
        steps = step_groups(torch.where(segments.reasoning, steps, -1), steps_config.max_steps)
        chunk_scorer = (
            None if scorer is None else (lambda indices, ids, offset=start: scorer([offset + i for i in indices], ids))
        )
        for name in estimators:
            generator = torch.Generator(device=device).manual_seed(seed + start)
            began = time.perf_counter()
            out = token_advantages(
                model,
                tokenizer,
                *tensors,
                adv,
                configs[name],
                generator=generator,
                sampler=sampler,
                scorer=chunk_scorer,
                max_completion_length=max_completion_length,
                model_mask=model_mask,
            )
            times[name] += time.perf_counter() - began
            for key, value in out.stats.items():
                stats[name][key] = stats[name].get(key, 0.0) + value * len(chunk) / len(rows)
            for b, row in enumerate(chunk):
                n = len(row["_ids"])
                row["importance"][name] = out.importance[b, :n].float().cpu().tolist()
                row["weights"][name] = out.weights[b, :n].float().cpu().tolist()
                if out.signed is not None:
                    row["signed"] = out.signed[b, :n].float().cpu().tolist()
        for b, row in enumerate(chunk):
            n = len(row["_ids"])
            row["segments"] = segment_labels(segments, b, n)
            row["has_answer"] = bool(segments.has_answer[b])
            row["steps"] = steps[b, :n].cpu().tolist()
            if not row["has_answer"]:
                row["note"] = NO_ANSWER_NOTE
            elif "reasoning" not in row["segments"]:
                row["note"] = NO_REASONING_NOTE

    sections = []  # per completion, its sections (one per estimator)
    for i, row in enumerate(rows):
        pivot = None
        if pivots is not None and pivots[i] is not None:
            s0, s1 = pivots[i]
            pivot = [e > s0 and s < s1 for s, e in row["spans"]]
            row["pivot"] = pivot
        heading = headings[i] if headings is not None else f"completion {i}"
        own = [
            Section(
                row["tokens"],
                row["importance"][name],
                row["weights"][name],
                row["segments"],
                estimator=name,
                heading=heading if j == 0 else None,
                prompt=row["prompt"] if j == 0 else None,
                advantage=float(advantage) if j == 0 else None,
                note=row["note"] if j == 0 else None,
                pivot=pivot,
                signed=row.get("signed") if name == "rollout" else None,
            )
            for j, name in enumerate(estimators)
        ]
        sections.append(
            own
            or [
                Section(
                    row["tokens"],
                    None,
                    None,
                    row["segments"],
                    heading=heading,
                    prompt=row["prompt"],
                    note=row["note"],
                    pivot=pivot,
                )
            ]
        )
    for row in rows:
        del row["_ids"], row["_prompt_ids"], row["_own"]
    page = render_page([s for own in sections for s in own], title=title)
    return {"completions": rows, "time_s": times, "stats": stats, "html": page, "sections": sections}


# ---------------------------------------------------------------------------------------------- user data


def read_completions_jsonl(path) -> list[dict]:
    """Rows of a JSONL file of {"prompt": str, "completion": str} (optional: "answer", the gold answer,
    "error_span", a [start, end) character span of the completion to outline as the known pivot, and "tool_spans",
    a list of [start, end) character spans of the completion that a tool or an environment wrote).
    Raises ValueError naming the file and line for anything else."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"completions file {str(path)!r} does not exist (or is not a file)")
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object with fields prompt and completion")
            for key in ("prompt", "completion"):
                if not isinstance(row.get(key), str):
                    raise ValueError(f"{where}: field {key!r} missing or not a string")
            span = row.get("error_span")
            if span is not None and not (
                isinstance(span, list)
                and len(span) == 2
                and all(isinstance(x, int) for x in span)
                and 0 <= span[0] < span[1] <= len(row["completion"])
            ):
                raise ValueError(f"{where}: error_span must be [start, end] character offsets inside the completion")
            tools = row.get("tool_spans")
            if tools is not None and not (
                isinstance(tools, list)
                and all(
                    isinstance(t, list)
                    and len(t) == 2
                    and all(isinstance(x, int) for x in t)
                    and 0 <= t[0] < t[1] <= len(row["completion"])
                    for t in tools
                )
            ):
                raise ValueError(
                    f"{where}: tool_spans must be a list of [start, end] character offsets inside the completion"
                )
            rows.append(row)
    if not rows:
        raise ValueError(f"completions file {str(path)!r} has no rows")
    return rows


# ---------------------------------------------------------------------------------------------- oarl explain


def explain_rows(
    model,
    tokenizer,
    n: int,
    *,
    task,
    split: str = "test",
    demos_only: bool = False,
    temperature: float = 1.0,
    max_new_tokens: int = 96,
    seed: int = 0,
    batch_size: int = 8,
) -> list[dict]:
    """The completions to explain: ``n`` sampled from the model on ``split`` problems of the arithmetic ``task``
    and ``n`` flawed demos (only the demos with ``demos_only``), each with prompt, completion, answer (gold), source,
    and error_span for a flawed demo. A chat model is asked through its chat template, as ``oarl train`` asks it."""
    chat = getattr(tokenizer, "chat_template", None) is not None

    def prompt_of(row: dict) -> str:
        return build_prompt({"problem": f"{row['expression']} = ?"}, tokenizer) if chat else row["prompt"]

    rows = []
    if not demos_only:
        sampled = problems(split, n, seed=seed, task=task)
        prompts = [prompt_of(r) for r in sampled]
        sampling = Sampling(temperature=temperature, top_p=1.0, max_new_tokens=max_new_tokens, seed=seed)
        generations = HFBackend(model, tokenizer, batch_size=batch_size, add_special_tokens=not chat).generate(
            prompts, 1, sampling
        )
        rows += [
            {"prompt": p, "completion": gen["text"], "answer": r["answer"], "source": "sampled"}
            for r, p, (gen,) in zip(sampled, prompts, generations)
        ]
    pool = 4 * n + 16
    while True:  # about a third of the demos are flawed
        flawed = [d for d in demos(pool, seed=seed, task=task) if d["flawed"]][:n]
        if len(flawed) == n:
            break
        pool *= 2
    rows += [
        {
            "prompt": prompt_of(d),
            "completion": d["completion"],
            "answer": d["answer"],
            "source": "demo",
            "error_span": d["error_span"],
        }
        for d in flawed
    ]
    return rows


def headings(rows: list[dict]) -> list[str]:
    """Each completion's heading on the page: its source, the gold answer and whether it was stated, and the known
    wrong result of a flawed demo."""
    out = []
    for i, row in enumerate(rows):
        heading = f"{row['source']} {i}"
        if row.get("answer") is not None:
            stated = extract_answer(own_text(row["completion"], row.get("tool_spans") or []))
            verdict = (
                "no answer"
                if stated is None
                else "correct"
                if stated.strip().rstrip(".") == str(row["answer"])
                else "wrong"
            )
            heading += f" - gold {row['answer']}, {verdict}"
        if row.get("error_span") is not None:
            heading += " - known wrong result outlined"
        out.append(heading)
    return out


def write_report(out: Path, explained: dict, report: dict, title: str, png: int | None = None) -> list[Path]:
    """heatmap.html, agreement.json, agreement.png, credit.jsonl into ``out`` (created), and heatmap.png (the heat
    map of the first ``png`` completions, rendered by headless Chromium) if asked; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "heatmap.html").write_text(explained["html"], encoding="utf-8")
    with open(out / "agreement.json", "w", encoding="utf-8") as f:
        json.dump(json_safe(report), f, indent=2, allow_nan=False)
    with open(out / "credit.jsonl", "w", encoding="utf-8") as f:
        for row in explained["completions"]:
            f.write(json.dumps(json_safe(row), allow_nan=False) + "\n")
    agreement_plot(report, out / "agreement.png")
    written = [out / "heatmap.html", out / "agreement.json", out / "agreement.png", out / "credit.jsonl"]
    if png is not None:
        from oarl.report.browser import screenshot  # lazy: selenium is an optional dependency

        page = out / "heatmap_first.html"
        first = [section for own in explained["sections"][:png] for section in own]
        page.write_text(render_page(first, title=title), encoding="utf-8")
        screenshot(page, out / "heatmap.png")
        page.unlink()
        written.append(out / "heatmap.png")
    return written
