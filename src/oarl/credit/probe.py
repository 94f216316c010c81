"""The probe sequence x ⊕ reasoning ⊕ conclusion ⊕ answer, laid out so that every row ends at its answer.

The estimators accept any batch of contiguous rows (left padded, right padded, or with tokens after the
answer). ``align_to_end`` rolls each row so that its last needed token sits in the last column and masks
out everything after it; then the positions an outcome needs are the last few columns of every row, and
one ``logits_to_keep=K`` forward gives logits at those positions only. Position ids come from the
attention mask (cumsum - 1), so padding does not change the result.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class AlignedProbe:
    input_ids: Tensor       # [N, L'] long, left padded, row b ends (last column) at its end token
    attention_mask: Tensor  # [N, L'] bool
    reasoning: Tensor       # [N, L'] bool
    answer: Tensor          # [N, L'] bool, the last n_answer[b] columns of row b
    n_answer: Tensor        # [N] long
    source: Tensor          # [N, L'] long: column of the original batch each aligned column came from
    length: int             # L of the original batch

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


def forward_logits(model, attention_mask: Tensor, keep: int, input_ids: Tensor | None = None,
                   inputs_embeds: Tensor | None = None) -> Tensor:
    """[N, keep, V] logits of the last `keep` columns of a left-padded batch, in float32 (float64 stays)."""
    out = model(
        input_ids=input_ids,
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask.long(),
        position_ids=position_ids(attention_mask),
        logits_to_keep=keep,
        use_cache=False,
    )
    logits = out.logits[:, -keep:]
    return logits if logits.dtype == torch.float64 else logits.float()


def _cache_kwarg(model) -> str:
    """The name under which this transformers version's forward takes a KV cache."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def forward_logits_after_prefix(model, prefix_ids: Tensor, suffix_ids: Tensor, keep: int) -> Tensor:
    """[C, keep, V] logits of the last `keep` columns of prefix ⊕ suffix_c for C suffixes sharing one prefix.

    prefix_ids [1, p] and suffix_ids [C, s] hold no padding. The prefix goes through the model once; its
    key/value cache is repeated C times and each suffix attends to it.
    """
    name = _cache_kwarg(model)
    prefix_len, (count, suffix_len) = prefix_ids.shape[1], suffix_ids.shape
    out = model(input_ids=prefix_ids, use_cache=True, logits_to_keep=1)
    cache = getattr(out, "cache", None) or out.past_key_values
    cache.batch_repeat_interleave(count)
    positions = torch.arange(prefix_len, prefix_len + suffix_len, device=suffix_ids.device).expand(count, -1)
    out = model(
        input_ids=suffix_ids,
        attention_mask=torch.ones(count, prefix_len + suffix_len, dtype=torch.long, device=suffix_ids.device),
        position_ids=positions,
        use_cache=True,
        logits_to_keep=keep,
        **{name: cache},
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
