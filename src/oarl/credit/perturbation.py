"""OAR-P: importance of a reasoning token = how much replacing it moves the model's final answer.

    I_t = KL(p_final || p_final^(t))        (last, answer_mean)
    I_t = max(phi - phi^(t), 0)             (answer_joint)

where ^(t) is the probe with token t replaced by a neutral token (the pad id by default). One forward per
reasoning token: the (row, token) variants of the whole batch are flattened and sent through the model
``chunk_size`` at a time, so that peak memory does not grow with the number of reasoning tokens, and each
forward computes logits only at the last K columns that the outcome reads ("last" reads one column, and
its probe stops before the answer).

Three ways to pay less:
- reuse_prefix (exact, on by default wherever the model's cache allows it): a variant equals the original probe
  before its first replaced token, so the clean forward keeps its key/value cache and each variant recomputes
  only from its first replaced column on (in every mode: a step's variant from the step's first token).
  Variants are sorted by that column, so that a chunk (rows mixed) starts nearly where each variant does.
  Cost per token-variant: the tokens after it instead of the whole probe (about half the completion, none
  of the prompt, instead of prompt + completion); memory: the cache of the batch's rows (one clean forward)
  and a copy of one chunk's prefixes. A model whose cache does not keep every column (sliding-window layers,
  linear attention) recomputes every variant instead, with a note logged once per model class.
- span_ids: replace a whole reasoning step (line, sentence) per variant: one pass per step, not per token;
  every token of the step gets the step's importance.
- span_ids + refine (hierarchical): steps first; then token by token inside the steps whose normalised
  importance reaches the `refine`-quantile of their completion (docs/architecture.md, the method, step 5's tau with q = refine: the
  steps that Bi-Level reshaping would boost); the other steps' tokens keep their step's importance. Exact
  token-level importances where they decide the boost, at the cost of about (1 - refine) of token-level.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from .bilevel import reaches_threshold
from .config import OUTCOMES, check_choice, check_chunk_size, check_reuse_prefix
from .outcome import final_outcome, outcome_divergence, outcome_keep
from .probe import (
    AlignedProbe,
    align_to_end,
    eval_mode,
    forward_logits,
    forward_logits_after_prefix,
    keeps_every_column,
    prefix_cache,
    trim_left,
)

logger = logging.getLogger(__name__)
_NOTED: set[str] = set()  # model classes whose fallback to recomputation was logged


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
    reuse_prefix: bool | str = "auto",
    span_ids: Tensor | None = None,
    refine: float | None = None,
) -> Tensor:
    """[B, L] float32 importances of the reasoning tokens of probes input_ids [B, L] (0 elsewhere).

    Masks are [B, L] in the same layout as input_ids (any contiguous padding). The replacement token is
    `replace_with`, else `pad_token_id`, else the model config's pad_token_id.
    reuse_prefix: "auto" (default) or True: reuse the clean forward's key/value cache before each variant's first
    replaced token when the model's cache keeps every column (transformers' DynamicCache without sliding-window
    layers), else recompute every variant (logged once per model class); False: always recompute. The result is
    the same either way (to float rounding).
    span_ids [B, L] long (optional): reasoning tokens of a row with the same id (a step: a line, a
    sentence) are replaced together, one variant per step, and each gets the step's importance.
    refine (with span_ids): a quantile q in (0, 1); the steps whose normalised importance reaches the q-quantile
    of their row are then perturbed token by token (hierarchical OAR-P).
    """
    check_choice("mode", mode, OUTCOMES)
    check_chunk_size(chunk_size)
    check_reuse_prefix(reuse_prefix)
    if refine is not None and (span_ids is None or not 0.0 < refine < 1.0):
        raise ValueError(
            f"refine must be None or a quantile in (0, 1) used with span_ids, got {refine!r}"
            + ("" if span_ids is not None else " without span_ids")
        )
    if replace_with is None:
        replace_with = pad_token_id if pad_token_id is not None else getattr(model.config, "pad_token_id", None)
    if replace_with is None:
        raise ValueError("replace_with: no replacement token id (pass replace_with or pad_token_id)")

    probe = align_to_end(input_ids, attention_mask, reasoning_mask, answer_mask, through_answer=mode != "last")
    importance = torch.zeros(probe.input_ids.shape, dtype=torch.float32, device=input_ids.device)  # [B, L']
    tokens = probe.reasoning.nonzero()  # [M, 2]: (row, column) of every reasoning token, row-major
    if tokens.shape[0] == 0:
        return probe.to_original(importance)

    keep = outcome_keep(probe.n_answer[probe.reasoning.any(1)])
    with eval_mode(model):
        reuse = reuse_prefix is not False
        out = forward_logits(model, probe.attention_mask, keep, input_ids=probe.input_ids, return_cache=reuse)
        logits, cache = out if reuse else (out, None)
        if reuse and not keeps_every_column(cache, probe.input_ids.shape[1]):
            _note_recomputation(model)
            cache = None
        clean = final_outcome(logits, probe.input_ids, probe.n_answer, mode)  # [B, V] or [B]
        variants = _Variants(model, probe, clean, keep, mode, replace_with, chunk_size, cache)
        if span_ids is None:
            values = variants.divergence(tokens, tokens[:, 1])  # [M]
        else:
            values = variants.divergence(tokens, span_ids.gather(1, probe.source)[tokens[:, 0], tokens[:, 1]])
            if refine is not None:
                importance[tokens[:, 0], tokens[:, 1]] = values
                chosen = reaches_threshold(importance, probe.reasoning, refine)[tokens[:, 0], tokens[:, 1]]  # [M]
                values[chosen] = variants.divergence(tokens[chosen], tokens[chosen, 1])
    importance[tokens[:, 0], tokens[:, 1]] = values
    return probe.to_original(importance)


def _note_recomputation(model) -> None:
    name = type(model).__name__
    if name not in _NOTED:
        _NOTED.add(name)
        logger.warning(
            "OAR-P recomputes every perturbed variant with %s: its key/value cache does not keep every "
            "column (sliding-window or linear-attention layers), which prefix reuse needs. Same "
            "importances, at the cost of whole forwards.",
            name,
        )


class _Variants:
    """Sends groups of reasoning tokens, each replaced together, through the model in chunks."""

    def __init__(
        self, model, probe: AlignedProbe, clean: Tensor, keep: int, mode: str, replace_with: int, chunk_size: int, cache
    ):
        self.model, self.probe, self.clean, self.keep, self.mode = model, probe, clean, keep, mode
        self.replace_with, self.chunk_size, self.cache = replace_with, chunk_size, cache

    def divergence(self, tokens: Tensor, group: Tensor) -> Tensor:
        """[M] divergence of the variant that replaces the tokens [M, 2] (row, column) sharing their row and
        group id [M]; every token gets its variant's value."""
        if tokens.shape[0] == 0:
            return torch.zeros(0, dtype=torch.float32, device=tokens.device)
        group = group - group.min()
        span = int(group.max()) + 1
        variant_key, variant_of = torch.unique(tokens[:, 0] * span + group, return_inverse=True)  # [V], [M]
        variant_row = variant_key // span  # [V]
        first = torch.full_like(variant_row, self.probe.input_ids.shape[1]).scatter_reduce(
            0, variant_of, tokens[:, 1], "amin"
        )  # [V]: first replaced column
        # variant order: by first replaced column when reusing the prefix (a chunk starts where its variants do),
        # else by row (a chunk trims the padding its rows share)
        by_row = torch.arange(len(first), device=first.device)
        order = torch.argsort(first, stable=True) if self.cache is not None else by_row
        rank = torch.empty_like(order)
        rank[order] = torch.arange(len(order), device=order.device)
        variant_of, variant_row, first = rank[variant_of], variant_row[order], first[order]
        by_variant = torch.argsort(variant_of, stable=True)
        tokens, variant_of = tokens[by_variant], variant_of[by_variant]
        token_start = torch.searchsorted(variant_of, torch.arange(len(order) + 1, device=order.device))  # [V+1]

        divergence = torch.zeros(len(order), dtype=torch.float32, device=tokens.device)  # [V]
        for start in range(0, len(order), self.chunk_size):
            chunk = slice(start, min(start + self.chunk_size, len(order)))
            rows = variant_row[chunk]  # [C]
            lo, hi = int(token_start[chunk.start]), int(token_start[chunk.stop])
            ids = self.probe.input_ids[rows]  # [C, L'] (a copy)
            ids[variant_of[lo:hi] - chunk.start, tokens[lo:hi, 1]] = self.replace_with
            attn = self.probe.attention_mask[rows]
            split = int(first[chunk].min())  # nothing before this column is replaced in the chunk
            if self.cache is not None and split > 0:
                cache = prefix_cache(self.cache, rows, split)
                logits = forward_logits_after_prefix(self.model, cache, ids[:, split:], attn, self.keep)
            else:
                left = trim_left(attn)  # drop the columns that are padding in every variant of this chunk
                ids, attn = ids[:, left:], attn[:, left:]
                logits = forward_logits(self.model, attn, self.keep, input_ids=ids)
            perturbed = final_outcome(logits, ids, self.probe.n_answer[rows], self.mode)
            divergence[chunk] = outcome_divergence(self.clean[rows], perturbed, self.mode).float()
        return divergence[variant_of][torch.argsort(by_variant)]
