"""OAR-P: importance of a reasoning token = how much replacing it moves the model's final answer.

    I_t = KL(p_final || p_final^(t))        (last, answer_mean)
    I_t = max(phi - phi^(t), 0)             (answer_joint)

where ^(t) is the probe with token t replaced by a neutral token (the pad id by default). One forward per
reasoning token: the (row, token) variants of the whole batch are flattened and sent through the model
``chunk_size`` at a time, so that peak memory does not grow with the number of reasoning tokens, and each
forward computes logits only at the last K columns that the outcome reads.
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
) -> Tensor:
    """[B, L] float32 importances of the reasoning tokens of probes input_ids [B, L] (0 elsewhere).

    Masks are [B, L] in the same layout as input_ids (any contiguous padding). The replacement token is
    `replace_with`, else `pad_token_id`, else the model config's pad_token_id. With reuse_prefix, each chunk
    holds variants of one row only, and the tokens before its first replaced token go through the model once
    (their key/value cache is shared by the chunk's variants); needs a model whose forward takes a cache.
    """
    check_choice("mode", mode, OUTCOMES)
    check_chunk_size(chunk_size)
    if replace_with is None:
        replace_with = pad_token_id if pad_token_id is not None else getattr(model.config, "pad_token_id", None)
    if replace_with is None:
        raise ValueError("replace_with: no replacement token id (pass replace_with or pad_token_id)")

    probe = align_to_end(input_ids, attention_mask, reasoning_mask, answer_mask, through_answer=mode != "last")
    importance = torch.zeros(probe.input_ids.shape, dtype=torch.float32, device=input_ids.device)  # [B, L']
    variants = probe.reasoning.nonzero()  # [M, 2]: (row, column) of every reasoning token, row-major
    if variants.shape[0] == 0:
        return probe.to_original(importance)

    keep = outcome_keep(probe.n_answer[probe.reasoning.any(1)])
    with eval_mode(model):
        clean = final_outcome(
            forward_logits(model, probe.attention_mask, keep, input_ids=probe.input_ids),
            probe.input_ids, probe.n_answer, mode,
        )  # [B, V] or [B]
        for chunk in _chunks(variants, chunk_size, one_row=reuse_prefix):
            rows, cols = variants[chunk].unbind(1)  # [C], [C]
            ids = probe.input_ids[rows]  # [C, L'] (a copy)
            ids[torch.arange(ids.shape[0], device=ids.device), cols] = replace_with
            attn = probe.attention_mask[rows]
            first = trim_left(attn)  # drop the columns that are padding in every variant of this chunk
            if reuse_prefix and int(cols[0]) > first:
                split = int(cols[0])  # variants are sorted by column: nothing before it is replaced
                logits = forward_logits_after_prefix(model, ids[:1, first:split], ids[:, split:], keep)
            else:
                ids, attn = ids[:, first:], attn[:, first:]
                logits = forward_logits(model, attn, keep, input_ids=ids)
            perturbed = final_outcome(logits, ids, probe.n_answer[rows], mode)
            importance[rows, cols] = outcome_divergence(clean[rows], perturbed, mode).float()
    return probe.to_original(importance)


def _chunks(variants: Tensor, chunk_size: int, one_row: bool) -> list[slice]:
    """Slices of the row-major variant list, at most chunk_size long (and within one row if one_row)."""
    total = variants.shape[0]
    if not one_row:
        return [slice(s, min(s + chunk_size, total)) for s in range(0, total, chunk_size)]
    counts = torch.unique_consecutive(variants[:, 0], return_counts=True)[1].tolist()
    out, start = [], 0
    for count in counts:  # per row, then per chunk
        out += [slice(s, min(s + chunk_size, start + count)) for s in range(start, start + count, chunk_size)]
        start += count
    return out
