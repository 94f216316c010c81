"""Seeing the credit: a per-token heat map of OAR importances and weights, as one self-contained HTML page.

    render_html(tokens, importance, weights, segments)   one completion, one estimator -> a page
    render_page(sections, title)                          several completions (x estimators) -> one page
    explain_batch(model, tokenizer, prompts, completions) importances and weights of every estimator on the
                                                          same completions, and their page

Each completion token is one ``<span class="tok">`` (in order), coloured by its weight on a diverging scale
with a log axis: suppressed (w < 1) blue, neutral (w = 1) white, boosted (w > 1) red, saturating at
``scale`` and ``1/scale``. Tokens outside the reasoning (conclusion, answer, rest) carry weight 1 and get a
neutral style of their own; tokens a tool or an environment wrote (``tool``: not the model's, weight 0, never
trained on) are boxed with a dashed border. The tooltip (``title``) of a token shows its raw importance, the normalised
importance (log1p then min-max over the reasoning tokens, as Bi-Level reshaping sees it) and its weight.
Whitespace is made visible: a space shows as ``·``, a tab as ``→``, a newline as ``↵`` and a line break.

The page has inline CSS only: no script, no font or stylesheet from the network.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

SEGMENT_KINDS = ("reasoning", "conclusion", "answer", "rest", "tool")
ESTIMATOR_LABELS = {
    "perturbation": "OAR-P",
    "gradient": "OAR-G",
    "entropy": "entropy",
    "none": "GRPO",
    "grail": "GRAIL",
    "rollout": "rollout credit",
}
DEFAULT_SCALE = 4.0  # weights at or beyond 4x (or 1/4x) get the full colour
MAX_FADE = 200  # how far (0-255) a channel fades at full colour
NO_ANSWER_NOTE = "no parsable final answer: uniform weights (w = 1), importance not computed"
NO_REASONING_NOTE = "no reasoning tokens before the final answer: nothing to reshape"

CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 70em; }
h1 { font-size: 1.3em; } h2 { font-size: 1.05em; margin: 1.6em 0 0.3em; } h3 { font-size: 0.95em; margin: 0.8em 0 0.2em; }
.prompt { font-family: ui-monospace, monospace; white-space: pre-wrap; color: #777; margin: 0.2em 0; }
.text { font-family: ui-monospace, monospace; white-space: pre-wrap; line-height: 1.9; word-break: break-all; }
.tok { padding: 1px 0; border-radius: 2px; }
.ws { color: #aaa; }
.seg-conclusion { background: #ececec; font-style: italic; border-bottom: 2px dotted #666; }
.seg-answer { background: #e4f4e4; font-weight: bold; border-bottom: 2px solid #2a8a2a; }
.seg-rest { background: #f6f6f6; color: #999; }
.seg-tool { background: #fff3cf; color: #6b5300; outline: 1px dashed #b08a1e; outline-offset: -1px; }
.pivot { outline: 2px solid #000; outline-offset: 0; }
.summary { font-size: 0.85em; color: #555; margin: 0.1em 0 0.3em; }
.note { font-size: 0.85em; color: #a33; }
.legend { font-size: 0.85em; border: 1px solid #ddd; padding: 0.6em; margin-bottom: 1em; }
.bar { display: inline-block; width: 16em; height: 0.9em; vertical-align: middle;
       background: linear-gradient(to right, rgb(55,55,255), rgb(255,255,255), rgb(255,55,55)); }
section.completion { border-top: 1px solid #ccc; }
"""


# ---------------------------------------------------------------------------------------------- colours


def weight_rgb(weight: float, scale: float = DEFAULT_SCALE) -> tuple[int, int, int]:
    """Diverging colour of a weight: s = clamp(log(w) / log(scale), -1, 1); s < 0 blue, s > 0 red, 0 white.
    red minus blue = MAX_FADE * s, so the colour is monotone in the weight."""
    if math.isnan(weight):
        s = 0.0
    elif weight <= 0:
        s = -1.0
    else:
        s = max(-1.0, min(1.0, math.log(weight) / math.log(scale)))
    fade = round(MAX_FADE * abs(s))
    return (255, 255 - fade, 255 - fade) if s >= 0 else (255 - fade, 255 - fade, 255)


def _css_rgb(rgb: tuple[int, int, int]) -> str:
    return f"rgb({rgb[0]},{rgb[1]},{rgb[2]})"


# ---------------------------------------------------------------------------------------------- helpers


def _floats(values, n: int) -> list[float]:
    if values is None:
        return [0.0] * n
    if isinstance(values, torch.Tensor):
        values = values.detach().float().cpu().tolist()
    out = [float(v) for v in values]
    if len(out) != n:
        raise ValueError(f"expected {n} values (one per token), got {len(out)}")
    return out


def _labels(segments, n: int) -> list[str]:
    if segments is None:
        return ["rest"] * n
    labels = list(segments)
    if len(labels) != n:
        raise ValueError(f"expected {n} segment labels (one per token), got {len(labels)}")
    bad = sorted({s for s in labels if s not in SEGMENT_KINDS})
    if bad:
        raise ValueError(f"segment labels must be among {SEGMENT_KINDS}, got {bad}")
    return labels


def segment_labels(segments, row: int, length: int | None = None) -> list[str]:
    """Per-token labels ("reasoning" / "conclusion" / "answer" / "rest" / "tool") of row ``row`` of a
    ``oarl.credit.Segments``, over its first ``length`` tokens (all if None)."""
    reasoning, conclusion, answer = (
        m[row].bool().cpu() for m in (segments.reasoning, segments.conclusion, segments.answer)
    )
    tool = segments.tool[row].bool().cpu() if segments.tool is not None else torch.zeros_like(reasoning)
    n = reasoning.shape[0] if length is None else length
    return [
        "tool"
        if tool[t]
        else "reasoning"
        if reasoning[t]
        else "conclusion"
        if conclusion[t]
        else "answer"
        if answer[t]
        else "rest"
        for t in range(n)
    ]


def normalised_importance(importance: Sequence[float], reasoning: Sequence[bool]) -> list[float | None]:
    """log1p(max(I, 0)) min-max scaled to [0, 1] over the reasoning tokens (what Bi-Level thresholds);
    None outside the reasoning; all-equal -> 0."""
    picked = [math.log1p(max(v, 0.0)) for v, r in zip(importance, reasoning) if r and math.isfinite(v)]
    lo, hi = (min(picked), max(picked)) if picked else (0.0, 0.0)
    spread = hi - lo
    out: list[float | None] = []
    for v, r in zip(importance, reasoning):
        if not r:
            out.append(None)
        elif not math.isfinite(v):
            out.append(float("nan"))
        else:
            out.append((math.log1p(max(v, 0.0)) - lo) / spread if spread > 0 else 0.0)
    return out


def _visible(token: str) -> str:
    """HTML of a token's text with its whitespace made visible (escaped)."""
    if token == "":
        return '<span class="ws">∅</span>'
    parts = []
    for ch in token:
        if ch == " ":
            parts.append('<span class="ws">·</span>')
        elif ch == "\t":
            parts.append('<span class="ws">→</span>')
        elif ch == "\n":
            parts.append('<span class="ws">↵</span>\n')
        elif ch == "\r":
            parts.append('<span class="ws">␍</span>')
        else:
            parts.append(html.escape(ch))
    return "".join(parts)


def _fmt(x: float | None, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    return f"{x:.{digits}g}"


# ---------------------------------------------------------------------------------------------- sections


@dataclass
class Section:
    """One completion under one estimator. tokens: completion tokens as text; importance / weights: one
    number per token; segments: one label per token (SEGMENT_KINDS). prompt: shown above in grey.
    pivot: optional per-token bools (a known pivotal span, e.g. the flawed step of a demo), outlined.
    summary: extra numbers shown under the heading. heading: the completion's title (first estimator only)."""

    tokens: list[str]
    importance: Sequence[float] | None
    weights: Sequence[float] | None
    segments: Sequence[str] | None
    estimator: str | None = None
    heading: str | None = None
    prompt: str | None = None
    advantage: float | None = None
    note: str | None = None
    pivot: Sequence[bool] | None = None
    summary: dict = field(default_factory=dict)
    signed: Sequence[float] | None = None  # rollout credit: V(after step) - V(before step), shown in the tooltip


def _summary_numbers(weights: list[float], importance: list[float], labels: list[str]) -> dict:
    w = [x for x, s in zip(weights, labels) if s == "reasoning"]
    imp = [x for x, s in zip(importance, labels) if s == "reasoning"]
    out = {"reasoning tokens": len(w)}
    if "tool" in labels:
        out["tool tokens"] = labels.count("tool")
    if w:
        mean = sum(w) / len(w)
        out.update(
            {
                "weight min": min(w),
                "weight max": max(w),
                "weight std": math.sqrt(sum((x - mean) ** 2 for x in w) / len(w)),
                "boosted": sum(x > 1 for x in w) / len(w),
                "suppressed": sum(x < 1 for x in w) / len(w),
                "importance max": max(imp) if imp else 0.0,
            }
        )
    return out


def render_section(section: Section, scale: float = DEFAULT_SCALE) -> str:
    n = len(section.tokens)
    importance = _floats(section.importance, n)
    weights = _floats(section.weights, n) if section.weights is not None else [1.0] * n
    labels = _labels(section.segments, n)
    pivot = list(section.pivot) if section.pivot is not None else [False] * n
    signed = _floats(section.signed, n) if section.signed is not None else None
    if len(pivot) != n:
        raise ValueError(f"expected {n} pivot flags (one per token), got {len(pivot)}")
    norm = normalised_importance(importance, [s == "reasoning" for s in labels])

    out = []
    if section.heading is not None:
        out.append(f"<h2>{html.escape(section.heading)}</h2>")
    if section.prompt is not None:
        out.append(f'<div class="prompt">{_visible(section.prompt)}</div>')
    name = section.estimator or "credit"
    label = ESTIMATOR_LABELS.get(name, name)
    out.append(f"<h3>{html.escape(label)}" + (f" ({html.escape(name)})" if label != name else "") + "</h3>")
    numbers = {}
    if section.advantage is not None:
        numbers["advantage"] = section.advantage
    numbers.update(_summary_numbers(weights, importance, labels))
    numbers.update(section.summary)
    text = "; ".join(
        f"{html.escape(str(k))} {html.escape(_fmt(v) if isinstance(v, float) else str(v))}" for k, v in numbers.items()
    )
    out.append(f'<div class="summary">{text}</div>')
    if section.note:
        out.append(f'<div class="note">{html.escape(section.note)}</div>')

    spans = []
    for t, (token, label_t) in enumerate(zip(section.tokens, labels)):
        classes = ["tok", f"seg-{label_t}"] + (["pivot"] if pivot[t] else [])
        tip = f"#{t} {label_t} | importance {_fmt(importance[t])} | normalised {_fmt(norm[t])} | weight {_fmt(weights[t])}"
        if signed is not None and label_t == "reasoning":
            tip += f" | delta V {_fmt(signed[t])}"
        if pivot[t]:
            tip += " | pivot"
        style = ""
        if label_t == "reasoning":
            style = f' style="background:{_css_rgb(weight_rgb(weights[t], scale))}"'
        spans.append(
            f'<span class="{" ".join(classes)}" data-i="{t}" title="{html.escape(tip, quote=True)}"{style}>'
            f"{_visible(token)}</span>"
        )
    out.append(f'<div class="text">{"".join(spans)}</div>')
    return "\n".join(out)


def _legend(scale: float) -> str:
    lo, hi = _css_rgb(weight_rgb(1 / scale, scale)), _css_rgb(weight_rgb(scale, scale))
    return (
        '<div class="legend"><b>Weight</b> of a reasoning token (log scale): '
        f'<span class="tok" style="background:{lo}">&nbsp;&le;{_fmt(1 / scale, 3)}&nbsp;</span> suppressed '
        f'<span class="bar"></span> boosted '
        f'<span class="tok" style="background:{hi}">&nbsp;&ge;{_fmt(scale, 3)}&nbsp;</span>; white = 1.<br>'
        'Outside the reasoning (weight 1): <span class="tok seg-conclusion">conclusion</span> '
        '<span class="tok seg-answer">answer</span> <span class="tok seg-rest">rest</span>; '
        '<span class="tok seg-tool">tool</span> = written by a tool or an environment, not the model (no credit, '
        "weight 0, not trained on); "
        '<span class="tok pivot">pivot</span> = the known pivotal span (first wrong result of a flawed demo).<br>'
        "Hover a token: raw importance, normalised importance (log1p, min-max over the reasoning tokens), weight. "
        'Whitespace: <span class="ws">·</span> space, <span class="ws">↵</span> newline, '
        '<span class="ws">→</span> tab.</div>'
    )


def render_page(
    sections: Sequence[Section],
    title: str = "oarl credit heat map",
    intro: str | None = None,
    scale: float = DEFAULT_SCALE,
) -> str:
    """One HTML page: title, legend, then the sections (a new completion starts where a section has a heading)."""
    body, open_section = [], False
    for section in sections:
        if section.heading is not None:
            if open_section:
                body.append("</section>")
            body.append('<section class="completion">')
            open_section = True
        body.append(render_section(section, scale))
    if open_section:
        body.append("</section>")
    intro_html = f"<p>{html.escape(intro)}</p>" if intro else ""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n{intro_html}\n{_legend(scale)}\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )


def render_html(
    tokens: list[str],
    importance,
    weights,
    segments,
    title: str = "oarl credit heat map",
    advantage: float | None = None,
    estimator: str | None = None,
    prompt: str | None = None,
    note: str | None = None,
    pivot=None,
    scale: float = DEFAULT_SCALE,
) -> str:
    """A page for one completion: ``tokens`` (text of each completion token), ``importance`` and ``weights``
    (one number per token: lists, arrays or tensors), ``segments`` (one label per token among
    SEGMENT_KINDS, or None for all "rest")."""
    section = Section(
        list(tokens),
        importance,
        weights,
        segments,
        estimator=estimator,
        heading="completion",
        prompt=prompt,
        advantage=advantage,
        note=note,
        pivot=pivot,
    )
    return render_page([section], title=title, scale=scale)
