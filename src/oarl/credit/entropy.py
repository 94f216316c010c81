"""Policy entropy as importance (a cheap GTPO-style baseline from the same family).

    I_t = H(pi(. | x, y_<t)) = -sum_v p_v log p_v    at the position that predicts reasoning token t.

One forward without gradient; logits only from the first reasoning token of the batch onwards, and the
probe ends at the last reasoning token (the answer is not needed).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .probe import align_to_end, eval_mode, forward_logits


@torch.no_grad()
def entropy_importance(
    model, input_ids: Tensor, attention_mask: Tensor, reasoning_mask: Tensor, answer_mask: Tensor | None = None
) -> Tensor:
    """[B, L] float32 entropies at the reasoning tokens of input_ids [B, L] (0 elsewhere).

    answer_mask is accepted for a uniform estimator signature: rows whose answer_mask is all False get 0.
    """
    if answer_mask is not None:
        reasoning_mask = reasoning_mask.bool() & answer_mask.bool().any(1, keepdim=True)
    probe = align_to_end(input_ids, attention_mask, reasoning_mask, None)
    reasoning = probe.reasoning
    importance = torch.zeros(reasoning.shape, dtype=torch.float32, device=input_ids.device)  # [B, L']
    if not reasoning.any():
        return probe.to_original(importance)
    length = reasoning.shape[1]
    first = int(reasoning.any(0).long().argmax())  # first reasoning column of the batch
    keep = min(length - first + 1, length)  # from the position predicting it to the end
    with eval_mode(model):
        logp = forward_logits(model, probe.attention_mask, keep, input_ids=probe.input_ids).log_softmax(-1)
        entropy = -(logp.exp() * logp).sum(-1)  # [B, K]: entropy at kept position k predicts column L'-K+k+1
    importance[:, length - keep + 1 :] = entropy[:, :-1]
    return probe.to_original(importance * reasoning)
