"""The probe sequence x ⊕ reasoning ⊕ conclusion ⊕ answer, laid out so that every row ends at its answer.

The estimators accept any batch of contiguous rows (left padded, right padded, or with tokens after the
answer). ``align_to_end`` rolls each row so that its last needed token sits in the last column and masks
out everything after it; then the positions an outcome needs are the last few columns of every row, and
one ``logits_to_keep=K`` forward gives logits at those positions only. Position ids come from the
attention mask (cumsum - 1), so padding does not change the result.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


@dataclass
class AlignedProbe:
    input_ids: Tensor  # [N, L'] long, left padded, row b ends (last column) at its end token
    attention_mask: Tensor  # [N, L'] bool
    reasoning: Tensor  # [N, L'] bool
    answer: Tensor  # [N, L'] bool, the last n_answer[b] columns of row b
    n_answer: Tensor  # [N] long
    source: Tensor  # [N, L'] long: column of the original batch each aligned column came from
    length: int  # L of the original batch

    def to_original(self, values: Tensor) -> Tensor:
        """Scatter aligned [N, L'] values (0 where not attended) back to the original [N, L] layout."""
        out = values.new_zeros(values.shape[0], self.length)
        return out.scatter(1, self.source, values * self.attention_mask)


def position_ids(attention_mask: Tensor) -> Tensor:
    """[N, L] long: 0, 1, 2, ... over the attended tokens, so that left padding gives the unpadded positions."""
    return (attention_mask.long().cumsum(1) - 1).clamp_min(0)


def last_true(mask: Tensor) -> Tensor:
    """[N] long: index of the last True in each row of [N, L] mask (-1 if none)."""
    cols = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask, cols, -1).amax(1)


def first_true(mask: Tensor) -> Tensor:
    """[N] long: index of the first True in each row of [N, L] mask (L if none)."""
    cols = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask, cols, mask.shape[1]).amin(1)


def align_to_end(
    input_ids: Tensor,
    attention_mask: Tensor,
    reasoning_mask: Tensor,
    answer_mask: Tensor | None,
    through_answer: bool = True,
) -> AlignedProbe:
    """Roll each row so that its end is the last column; drop the tokens after it and the columns that are
    padding in every row. The end is the last answer token, or with through_answer=False the token before
    the first answer token (all that the "last" outcome reads: the answer itself is then left out, and
    n_answer is 0); without answer_mask, the last reasoning token.

    Rows without an answer (or without reasoning) keep no reasoning tokens: their importance will be 0.
    """
    attn = attention_mask.bool()
    reasoning = reasoning_mask.bool() & attn
    cols = torch.arange(attn.shape[1], device=attn.device)
    if answer_mask is None:
        answer = torch.zeros_like(reasoning)
        end = last_true(reasoning)
        reasoning = reasoning & (cols[None, :] <= end[:, None])
    else:
        answer = answer_mask.bool() & attn
        start = first_true(answer)  # [N]
        # reasoning lies before the answer; rows without an answer keep none
        reasoning = reasoning & (cols[None, :] < start[:, None]) & answer.any(1, keepdim=True)
        if through_answer:
            end = last_true(answer)
        else:
            end = torch.where(answer.any(1), start - 1, -1)
            answer = torch.zeros_like(answer)
    end = torch.where(end >= 0, end, last_true(attn)).clamp_min(0)  # [N]

    length = input_ids.shape[1]
    shift = (length - 1 - end)[:, None]  # [N, 1]
    source = (cols[None, :] - shift) % length  # [N, L]: aligned column j takes original column source[j]
    keep = cols[None, :] >= shift  # the wrapped-around columns hold tokens after the end
    attn = attn.gather(1, source) & keep
    first = int(attn.any(0).long().argmax()) if attn.any() else length - 1
    sl = slice(first, length)
    answer = answer.gather(1, source) & attn
    return AlignedProbe(
        input_ids=input_ids.gather(1, source)[:, sl],
        attention_mask=attn[:, sl],
        reasoning=(reasoning.gather(1, source) & attn)[:, sl],
        answer=answer[:, sl],
        n_answer=answer.sum(1),
        source=source[:, sl],
        length=length,
    )


def forward_logits(
    model,
    attention_mask: Tensor,
    keep: int,
    input_ids: Tensor | None = None,
    inputs_embeds: Tensor | None = None,
    return_cache: bool = False,
):
    """[N, keep, V] logits of the last `keep` columns of a left-padded batch, in float32 (float64 stays).

    return_cache: also return the key/value cache of every column (the model's cache object), for
    ``prefix_cache`` / ``forward_logits_after_prefix``.
    """
    out = model(
        input_ids=input_ids,
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask.long(),
        position_ids=position_ids(attention_mask),
        logits_to_keep=keep,
        use_cache=return_cache,
    )
    logits = out.logits[:, -keep:]
    logits = logits if logits.dtype == torch.float64 else logits.float()
    if not return_cache:
        return logits
    cache = getattr(out, "cache", None)
    return logits, cache if cache is not None else out.past_key_values


def _cache_kwarg(model) -> str:
    """The name under which this transformers version's forward takes a KV cache."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def keeps_every_column(cache, length: int) -> bool:
    """Whether a forward's key/value cache holds the keys and values of all `length` columns in every layer, as
    ``prefix_cache`` needs: False for None, for sliding-window layers (they keep the last window only) and for
    layers without key/value tensors (linear attention, state-space layers)."""
    if cache is None:
        return False
    try:
        layers = list(cache)  # (keys, values[, sliding window]) per layer; keys [N, heads, L, head_dim]
    except TypeError:
        return False
    return bool(layers) and all(
        len(layer) >= 2
        and (len(layer) < 3 or layer[2] is None)
        and all(isinstance(t, Tensor) and t.ndim == 4 and t.shape[2] == length for t in layer[:2])
        for layer in layers
    )


def prefix_cache(cache, rows: Tensor, split: int):
    """A new cache of the same class holding columns [0, split) of the given rows [C] of a batch's cache.

    Raises ValueError for a cache that does not hold every column (sliding-window layers).
    """
    layers = []
    for layer in cache:  # (keys, values[, sliding window]) per layer; keys [N, heads, L, head_dim]
        if len(layer) > 2 and layer[2] is not None:
            raise ValueError(
                "reuse_prefix needs a key/value cache of every column, and this model's cache has "
                "sliding-window layers: set reuse_prefix=False"
            )
        layers.append((layer[0][rows, :, :split], layer[1][rows, :, :split]))
    return type(cache)(layers)


def forward_logits_after_prefix(model, cache, suffix_ids: Tensor, attention_mask: Tensor, keep: int) -> Tensor:
    """[C, keep, V] logits of the last `keep` columns of C rows whose first `split` columns are in `cache`.

    cache: from ``prefix_cache`` (C rows, split columns); suffix_ids [C, s] the remaining columns;
    attention_mask [C, split + s] covers both (left padding allowed), positions follow from it.
    """
    split = attention_mask.shape[1] - suffix_ids.shape[1]
    out = model(
        input_ids=suffix_ids,
        attention_mask=attention_mask.long(),
        position_ids=position_ids(attention_mask)[:, split:],
        use_cache=True,
        logits_to_keep=keep,
        **{_cache_kwarg(model): cache},
    )
    logits = out.logits[:, -keep:]
    return logits if logits.dtype == torch.float64 else logits.float()


def trim_left(attention_mask: Tensor) -> int:
    """First column attended by any row of a left-padded batch (columns before it are pure padding)."""
    return int(attention_mask.any(0).long().argmax())


@contextlib.contextmanager
def eval_mode(model):
    """Dropout off for the duration; the model's train/eval flag is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def repeated_blocks(model) -> nn.ModuleList | None:
    """The model's stack of blocks: the nn.ModuleList that holds the most parameters (transformers' decoder
    ``layers``, GPT-2's ``transformer.h``, nanoGPT's ``transformer.h``); None if the model has no ModuleList."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m)]
    if not lists:
        return None
    return max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))  # first of equals on a tie


def _checkpointed_call(forward, *args, **kwargs):
    if not torch.is_grad_enabled():  # nothing is kept for a backward pass anyway
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


@contextlib.contextmanager
def activation_checkpointing(model, enabled: bool = True):
    """Activation (gradient) checkpointing of the model's repeated blocks for the duration, in train or eval mode.

    Each block keeps only its inputs for the backward pass and recomputes its activations there
    (``torch.utils.checkpoint``, non-reentrant, which replays the forward under the same autocast state).
    transformers applies its own checkpointing only in train mode, where dropout is on; the estimators run in
    eval mode, so they wrap each block's ``forward`` themselves. The previous forwards are restored afterwards.
    Raises ValueError if enabled and the model has no stack of blocks to checkpoint.
    """
    blocks = repeated_blocks(model) if enabled else None
    if enabled and blocks is None:
        raise ValueError(
            f"activation_checkpointing: {type(model).__name__} has no nn.ModuleList of blocks to "
            "checkpoint; turn activation checkpointing off for the credit pass"
        )
    saved = []
    try:
        for block in blocks or ():
            saved.append((block, block.__dict__.get("forward")))
            block.forward = functools.partial(_checkpointed_call, block.forward)
        yield model
    finally:
        for block, own_forward in saved:
            if own_forward is None:
                del block.forward
            else:
                block.forward = own_forward
