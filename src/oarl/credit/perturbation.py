"""OAR-P: importance of a reasoning token = how much replacing it moves the model's final answer.

    I_t = KL(p_final || p_final^(t))        (last, answer_mean)
    I_t = max(phi - phi^(t), 0)             (answer_joint)

where ^(t) is the probe with token t replaced by a neutral token (the pad id by default). One forward per
reasoning token: the (row, token) variants of the whole batch are flattened and sent through the model
``chunk_size`` at a time, so that peak memory does not grow with the number of reasoning tokens, and each
forward computes logits only at the last K columns that the outcome reads ("last" reads one column, and
its probe stops before the answer).

Two ways to pay less, both exact for what they compute:
- reuse_prefix: a chunk holds variants of one row; the tokens before its first replaced token go through
  the model once and their key/value cache is shared (pays off with long prompts);
- span_ids: replace a whole reasoning step (line, sentence) per variant: one pass per step, not per token.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .config import OUTCOMES, check_choice, check_chunk_size
from .outcome import final_outcome, outcome_divergence, outcome_keep
from .probe import align_to_end, eval_mode, forward_logits, forward_logits_after_prefix, trim_left


@torch.no_grad()
def perturbation_importance(
    model,
    input_ids: Tensor,
    attention_mask: Tensor,
    reasoning_mask: Tensor,
    answer_mask: Tensor,
    mode: str = "last",
    chunk_size: int = 32,
    replace_with: int | None = None,
    pad_token_id: int | None = None,
    reuse_prefix: bool = False,
    span_ids: Tensor | None = None,
) -> Tensor:
    """[B, L] float32 importances of the reasoning tokens of probes input_ids [B, L] (0 elsewhere).

    Masks are [B, L] in the same layout as input_ids (any contiguous padding). The replacement token is
    `replace_with`, else `pad_token_id`, else the model config's pad_token_id.
    reuse_prefix: each chunk holds variants of one row only, and the tokens before its first replaced token
    go through the model once (their key/value cache is shared by the chunk's variants); needs a model
    whose forward takes a cache. The result is the same.
    span_ids [B, L] long (optional): reasoning tokens of a row with the same id (a step: a line, a
    sentence) are replaced together, one variant per step, and each gets the step's importance.
    """
    check_choice("mode", mode, OUTCOMES)
    check_chunk_size(chunk_size)
    if replace_with is None:
        replace_with = pad_token_id if pad_token_id is not None else getattr(model.config, "pad_token_id", None)
    if replace_with is None:
        raise ValueError("replace_with: no replacement token id (pass replace_with or pad_token_id)")

    probe = align_to_end(input_ids, attention_mask, reasoning_mask, answer_mask, through_answer=mode != "last")
    importance = torch.zeros(probe.input_ids.shape, dtype=torch.float32, device=input_ids.device)  # [B, L']
    tokens = probe.reasoning.nonzero()  # [M, 2]: (row, column) of every reasoning token, row-major
    if tokens.shape[0] == 0:
        return probe.to_original(importance)

    # Variants: one per (row, step); a step is a single token unless span_ids groups them.
    step = tokens[:, 1] if span_ids is None else span_ids.gather(1, probe.source)[tokens[:, 0], tokens[:, 1]]
    step = step - step.min()
    key = tokens[:, 0] * (int(step.max()) + 1) + step  # [M], sorted by row, then step
    variant_key, variant_of = torch.unique(key, return_inverse=True)  # [V], [M]
    order = torch.argsort(variant_of, stable=True)  # tokens grouped by variant, columns ascending within
    tokens, variant_of = tokens[order], variant_of[order]
    variant_row = variant_key // (int(step.max()) + 1)  # [V]
    token_start = torch.searchsorted(variant_of, torch.arange(len(variant_key) + 1, device=key.device))  # [V+1]

    keep = outcome_keep(probe.n_answer[probe.reasoning.any(1)])
    divergence = torch.zeros(len(variant_key), dtype=torch.float32, device=input_ids.device)  # [V]
    with eval_mode(model):
        clean = final_outcome(
            forward_logits(model, probe.attention_mask, keep, input_ids=probe.input_ids),
            probe.input_ids, probe.n_answer, mode,
        )  # [B, V] or [B]
        for chunk in _chunks(variant_row, chunk_size, one_row=reuse_prefix):
            rows = variant_row[chunk]  # [C]
            lo, hi = int(token_start[chunk.start]), int(token_start[chunk.stop])
            ids = probe.input_ids[rows]  # [C, L'] (a copy)
            ids[variant_of[lo:hi] - chunk.start, tokens[lo:hi, 1]] = replace_with
            attn = probe.attention_mask[rows]
            first = trim_left(attn)  # drop the columns that are padding in every variant of this chunk
            split = int(tokens[lo:hi, 1].min())  # nothing before this column is replaced
            if reuse_prefix and split > first:
                logits = forward_logits_after_prefix(model, ids[:1, first:split], ids[:, split:], keep)
            else:
                ids, attn = ids[:, first:], attn[:, first:]
                logits = forward_logits(model, attn, keep, input_ids=ids)
            perturbed = final_outcome(logits, ids, probe.n_answer[rows], mode)
            divergence[chunk] = outcome_divergence(clean[rows], perturbed, mode).float()
    importance[tokens[:, 0], tokens[:, 1]] = divergence[variant_of]
    return probe.to_original(importance)


def _chunks(variant_row: Tensor, chunk_size: int, one_row: bool) -> list[slice]:
    """Slices of the row-sorted variant list, at most chunk_size long (and within one row if one_row)."""
    total = variant_row.shape[0]
    if not one_row:
        return [slice(s, min(s + chunk_size, total)) for s in range(0, total, chunk_size)]
    counts = torch.unique_consecutive(variant_row, return_counts=True)[1].tolist()
    out, start = [], 0
    for count in counts:  # per row, then per chunk
        out += [slice(s, min(s + chunk_size, start + count)) for s in range(start, start + count, chunk_size)]
        start += count
    return out
