"""Completion tokens -> reasoning / conclusion / answer / rest masks, through the tokenizer's offsets.

The row is decoded (special tokens such as EOS left out of the text), the final answer is found in the text
by ``find_final_answer`` (character spans), and each token's character span [s, e) is found by
re-encoding the text with ``return_offsets_mapping``; when that does not give back the same ids (a
non-canonical tokenisation sampled by the model), by incremental decoding instead (tokenizers'
DecodeStream, linear; decoding every prefix for tokenizers without a Rust backend). Assignment rule, in
this order of precedence:

    answer:      the span overlaps the answer characters     (a token straddling into the answer is answer)
    conclusion:  the span overlaps the statement lead-in     (one straddling reasoning/conclusion is conclusion)
    reasoning:   a non-empty span that ends before the statement starts
    rest:        every other completion token (after the answer, special tokens, ...)

Tool calls and multi-turn environments (``model_mask``): a completion may hold tokens the model did not write,
a tool's result or an environment's reply inserted between its turns (TRL's ``tool_mask`` / ``env_mask`` = 0,
the template's turn markers around them included). Those tokens are ``tool``, never reasoning, conclusion,
answer or rest, and the final answer is found in the model's own text only: the text with every character of a
tool token replaced by a newline (a tool's output is a paragraph break the model did not write, so no statement
runs across it and no number a tool printed can be read as the answer). An answer whose span would still cover
a tool character (parts joined across a tool's output) is no answer. The newlines also end a reasoning step.

An answer in several parts (``\\boxed{2}, \\boxed{4} and \\boxed{9}``, ``$x=-1$ or $x=4$``) is one character span
from its first part to its last (``FinalAnswer``), so its answer tokens are one run that covers every part,
the joiners between the parts included (the probe reads the answer as the last run of its tokens).

No answer, an empty completion, a truncated ``\\boxed{``, or a completion marked `truncated` whose answer
runs to the very end of its text (it may have been cut) -> has_answer False and all four masks False.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import Tensor

from oarl.answer import find_final_answer

from .config import SPANS, check_choice

try:  # tokenizers >= 0.21
    from tokenizers.decoders import DecodeStream
except ImportError:  # pragma: no cover
    DecodeStream = None

# Where a new reasoning step starts: after a newline, or (sentences) after ". ", "? ", "! ".
STEP_BREAKS = {"line": re.compile(r"\n+"), "sentence": re.compile(r"\n+|(?<=[.!?])[ \t]+")}


@dataclass
class Segments:
    reasoning: Tensor  # [B, T] bool, completion coordinates
    conclusion: Tensor  # [B, T] bool
    answer: Tensor  # [B, T] bool
    rest: Tensor  # [B, T] bool
    has_answer: Tensor  # [B] bool
    steps: Tensor | None = None  # [B, T] long: reasoning step (line / sentence) of each reasoning token, else -1
    tool: Tensor | None = None  # [B, T] bool: completion tokens the model did not write (model_mask 0); None: all False


def _decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _spans_by_offsets(tokenizer, ids: list[int], text: str) -> list[tuple[int, int]] | None:
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, ValueError, TypeError):  # slow (Python) tokenizers have no offsets
        return None
    if list(enc["input_ids"]) != ids:
        return None
    return [tuple(span) for span in enc["offset_mapping"]]


def _spans_by_stream(tokenizer, ids: list[int], text: str) -> list[tuple[int, int]] | None:
    """Each token's span by incremental decoding (linear). A token that ends inside a multi-byte character
    decodes to nothing yet: it gets the span of the character, as the token that completes it does."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if DecodeStream is None or backend is None:
        return None
    stream = DecodeStream(skip_special_tokens=False)
    spans, chunks, start, pending = [], [], 0, 0
    for token_id in ids:
        chunk = stream.step(backend, token_id)
        if chunk is None:
            pending += 1
            continue
        chunks.append(chunk)
        end = start + len(chunk)
        spans.extend([(start, end)] * (pending + 1))
        start, pending = end, 0
    spans.extend([(start, start)] * pending)
    return spans if "".join(chunks) == text else None


def _spans_by_prefix_decoding(tokenizer, ids: list[int], text: str) -> list[tuple[int, int]] | None:
    """Each token's span from the lengths of the decoded prefixes (quadratic: the last resort)."""
    prefixes = tokenizer.batch_decode(
        [ids[: i + 1] for i in range(len(ids))], skip_special_tokens=False, clean_up_tokenization_spaces=False
    )
    spans, start, pending = [], 0, 0
    for prefix in prefixes:
        if not text.startswith(prefix):  # ends inside a multi-byte character: wait for the token completing it
            pending += 1
            continue
        spans.extend([(start, len(prefix))] * (pending + 1))
        start, pending = len(prefix), 0
    spans.extend([(start, start)] * pending)
    return spans if start == len(text) else None


def _token_spans(tokenizer, ids: Tensor) -> tuple[str, Tensor] | None:
    """Text of the non-special tokens of ids [n] and the [s, e) char spans [n, 2] of every token
    (a special token gets the empty span at the end of the text before it)."""
    special = torch.tensor(sorted(tokenizer.all_special_ids), dtype=ids.dtype, device=ids.device)
    plain = ~torch.isin(ids, special)  # [n]
    plain_ids = ids[plain].tolist()
    text = _decode(tokenizer, plain_ids)
    spans = (
        _spans_by_offsets(tokenizer, plain_ids, text)
        or _spans_by_stream(tokenizer, plain_ids, text)
        or _spans_by_prefix_decoding(tokenizer, plain_ids, text)
    )
    if spans is None:
        return None
    out = torch.zeros(len(ids), 2, dtype=torch.long, device=ids.device)
    out[plain] = torch.tensor(spans, dtype=torch.long, device=ids.device).reshape(-1, 2)
    cursor = out[:, 1].cummax(0).values  # ends are non-decreasing: the text end so far
    out[~plain] = cursor[~plain, None]
    return text, out


def own_text(text: str, foreign: list[tuple[int, int]]) -> str:
    """``text`` with the characters of the [start, end) spans in ``foreign`` (what a tool or an environment wrote)
    replaced by newlines: the model's own text, at the same offsets."""
    chars = list(text)
    for start, end in foreign:
        chars[start:end] = "\n" * len(chars[start:end])
    return "".join(chars)


def segment_completions(
    tokenizer,
    completion_ids: Tensor,
    completion_mask: Tensor,
    truncated: Tensor | None = None,
    span: str = "token",
    model_mask: Tensor | None = None,
) -> Segments:
    """Segment right-padded completions completion_ids [B, T] (valid where completion_mask [B, T] is 1).

    truncated [B] bool (optional): completions cut by the length limit. span "line" or "sentence" also
    numbers the reasoning steps (Segments.steps): a token belongs to the step in which its first character
    lies; "token" leaves steps None. model_mask [B, T] (optional, 1 = written by the model, 0 = by a tool or an
    environment: TRL's tool_mask / env_mask): the 0 tokens are Segments.tool and the answer is read from the
    model's own text (see the module doc). Raises ValueError if model_mask's shape is not completion_ids'.
    """
    check_choice("span", span, SPANS)
    batch, length = completion_ids.shape
    if model_mask is not None and tuple(model_mask.shape) != (batch, length):
        raise ValueError(
            f"model_mask must have the shape of completion_ids {(batch, length)}, got {tuple(model_mask.shape)}"
        )
    # string work, on the CPU whatever the completions' device; the masks move to that device at the end
    cpu = torch.device("cpu")
    starts = torch.zeros(batch, length, dtype=torch.long, device=cpu)  # token char spans, [B, T]
    ends = torch.zeros(batch, length, dtype=torch.long, device=cpu)
    step_of = torch.zeros(batch, length, dtype=torch.long, device=cpu)
    bounds = torch.full((batch, 3), -1, dtype=torch.long, device=cpu)  # statement_start, answer_start, answer_end
    valid = completion_mask.bool().cpu()
    own = valid if model_mask is None else valid & model_mask.bool().cpu()  # [B, T] the model's own tokens
    ids_cpu = completion_ids.cpu()
    for b in range(batch):  # one pass per completion: string work
        ids = ids_cpu[b][valid[b]]
        parsed = _token_spans(tokenizer, ids) if len(ids) else None
        if parsed is None:
            continue
        text, span_tensor = parsed
        foreign = span_tensor[~own[b][valid[b]]]  # [n_tool, 2] char spans of the tool tokens
        if len(foreign):
            text = own_text(text, foreign.tolist())
        final = find_final_answer(text)
        if final is None:
            continue
        if len(foreign) and bool(((foreign[:, 0] < final.answer_end) & (foreign[:, 1] > final.answer_start)).any()):
            continue  # the answer's parts are joined across a tool's output
        if truncated is not None and bool(truncated[b]) and not text[final.answer_end :].strip():
            continue  # the answer runs to the end of a cut completion: it may be cut too
        cols = valid[b].nonzero().squeeze(1)
        starts[b, cols], ends[b, cols] = span_tensor[:, 0], span_tensor[:, 1]
        bounds[b] = torch.tensor([final.statement_start, final.answer_start, final.answer_end], device=cpu)
        if span != "token":
            breaks = torch.tensor(
                [m.end() for m in STEP_BREAKS[span].finditer(text, 0, final.statement_start)],
                dtype=torch.long,
                device=cpu,
            )
            step_of[b, cols] = torch.searchsorted(breaks, span_tensor[:, 0].contiguous(), right=True)

    has_answer = bounds[:, 0] >= 0  # [B]
    stmt, a0, a1 = (bounds[:, i : i + 1] for i in range(3))  # [B, 1] each
    token = own & has_answer[:, None] & (ends >= starts)
    nonempty = ends > starts
    answer = token & nonempty & (starts < a1) & (ends > a0)
    conclusion = token & nonempty & ~answer & (starts < a0) & (ends > stmt)
    reasoning = token & nonempty & ~answer & ~conclusion & (ends <= stmt)
    rest = token & ~answer & ~conclusion & ~reasoning
    device = completion_ids.device
    steps = None if span == "token" else torch.where(reasoning, step_of, -1).to(device)
    return Segments(
        reasoning=reasoning.to(device),
        conclusion=conclusion.to(device),
        answer=answer.to(device),
        rest=rest.to(device),
        has_answer=has_answer.to(device),
        steps=steps,
        tool=(valid & ~own).to(device),
    )
