"""Outcome distributions p_final and their divergences (docs/architecture.md, the method, step 2).

All three read logits at the last K columns of an end-aligned probe (see probe.py): column k of the kept
logits is the position that predicts the token in column k + 1. With n answer tokens in the last n columns,
the positions that predict the answer are kept columns K-1-n .. K-2. The "last" outcome needs no answer
token in the input: the estimators then end the probe just before the answer (n = 0, K = 1).

    last:          log_softmax(logits[K-1-n])                       -> [N, V]
    answer_mean:   log_softmax(mean_k logits[k]) over those n positions -> [N, V]
    answer_joint:  phi = mean_k log p(answer token | prefix)        -> [N]
"""

from __future__ import annotations

import torch
from torch import Tensor

from .config import OUTCOMES, check_choice


def outcome_keep(n_answer: Tensor) -> int:
    """How many final columns of logits the outcome needs: one per answer token plus the one before."""
    return int(n_answer.max()) + 1 if n_answer.numel() else 1


def predict_mask(n_answer: Tensor, keep: int, mode: str) -> Tensor:
    """[N, K] bool: the kept positions the outcome reads."""
    k = torch.arange(keep, device=n_answer.device)[None, :]
    first = (keep - 1 - n_answer)[:, None]
    if mode == "last":
        return k == first
    return (k >= first) & (k <= keep - 2)


def final_outcome(logits: Tensor, input_ids: Tensor, n_answer: Tensor, mode: str) -> Tensor:
    """p_final of each row from logits [N, K, V] at the last K columns of end-aligned input_ids [N, L].

    Returns log-probabilities [N, V] for "last" / "answer_mean", phi [N] for "answer_joint".
    """
    check_choice("mode", mode, OUTCOMES)
    keep = logits.shape[1]
    sel = predict_mask(n_answer, keep, mode)  # [N, K]
    count = sel.sum(1).clamp_min(1)  # [N]
    if mode == "answer_joint":
        # kept position k predicts column L-K+k+1; the last kept position predicts nothing.
        targets = torch.zeros_like(sel, dtype=torch.long)
        targets[:, :-1] = input_ids[:, input_ids.shape[1] - keep + 1 :]
        logp = logits.log_softmax(-1).gather(2, targets[..., None]).squeeze(-1)  # [N, K]
        return (logp * sel).sum(1) / count
    mean_logits = (logits * sel[..., None]).sum(1) / count[:, None]  # [N, V]
    return mean_logits.log_softmax(-1)


def outcome_divergence(clean: Tensor, other: Tensor, mode: str, clamp: bool = True) -> Tensor:
    """[N] forward KL(p_clean || p_other), or phi_clean - phi_other for "answer_joint" (clamped at 0 if clamp)."""
    if mode == "answer_joint":
        delta = clean - other
        return delta.clamp_min(0.0) if clamp else delta
    return (clean.exp() * (clean - other)).sum(-1)
