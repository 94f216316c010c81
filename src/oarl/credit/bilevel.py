"""Bi-Level reshaping: raw importances -> per-token weights (docs/architecture.md, the method, steps 4-5), vectorised over the batch.

Per row, over the tokens of `mask` only (m of them):

    I'  = log1p(max(I, 0))                                   (KL and clamped deltas are >= 0; this drops -0.0 noise)
    n   = (I' - min I') / (max I' - min I')                  in [0, 1]; all-equal row -> uniform weights
    tau = q-quantile of n (linear interpolation, as torch.quantile)
    w   = max(n / (tau + eps), floor)                        if n < tau   (suppression)
    w   = 1 + beta * (n - tau) / (1 - tau + eps)             if n >= tau  (boosting)
    w  *= m / sum(w)                                         (the row keeps its advantage mass)

Weights are exactly 1 outside `mask`, and in rows that are uniform (all equal, fewer than two tokens) or
that hold a NaN/inf importance in `mask` (see `nonfinite_rows`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .config import check_bilevel

EPS = 1e-8


def nonfinite_rows(importance: Tensor, mask: Tensor) -> Tensor:
    """[B] bool: rows with a NaN or inf importance among the `mask` tokens (they get uniform weights)."""
    return (~torch.isfinite(importance) & mask.bool()).any(1)


def masked_quantile(values: Tensor, mask: Tensor, q: float) -> Tensor:
    """[B] q-quantile of each row's masked entries of values [B, T] (linear interpolation); 0 for empty rows."""
    count = mask.sum(1)  # [B]
    ordered = torch.where(mask, values, torch.full_like(values, float("inf"))).sort(1).values  # masked-out last
    pos = q * (count - 1).clamp_min(0).to(values.dtype)  # [B] fractional rank
    lo = pos.floor().long()
    hi = torch.minimum(lo + 1, (count - 1).clamp_min(0))
    v_lo = ordered.gather(1, lo[:, None]).squeeze(1)
    v_hi = ordered.gather(1, hi[:, None]).squeeze(1)
    tau = v_lo + (pos - lo.to(values.dtype)) * (v_hi - v_lo)
    return torch.where(count > 0, tau, torch.zeros_like(tau))


def normalised_importance(importance: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Step 4 of the method (docs/architecture.md) (log1p, then min-max per row) on [B, T] importances over the tokens of mask [B, T].

    Returns (norm [B, T] in [0, 1], 0 outside the mask; mask [B, T] without the rows holding a NaN / inf;
    varied [B, 1]: rows with at least two tokens whose importances are not all equal).
    """
    mask = mask.bool()
    dtype = importance.dtype if importance.is_floating_point() else torch.float32
    mask = mask & ~nonfinite_rows(importance, mask)[:, None]
    imp = torch.where(mask, importance.to(dtype), torch.zeros((), dtype=dtype, device=importance.device))
    imp = torch.log1p(imp.clamp_min(0.0))  # [B, T]

    lo = torch.where(mask, imp, torch.full_like(imp, float("inf"))).amin(1, keepdim=True)  # [B, 1]
    hi = torch.where(mask, imp, torch.full_like(imp, float("-inf"))).amax(1, keepdim=True)
    spread = hi - lo
    varied = (mask.sum(1, keepdim=True) > 1) & (spread > 0)  # [B, 1] rows that get reshaped
    spread = torch.where(varied, spread, torch.ones_like(spread))
    lo = torch.where(varied, lo, torch.zeros_like(lo))
    norm = ((imp - lo) / spread).clamp(0.0, 1.0) * mask  # [B, T] in [0, 1]
    return norm, mask, varied


def reaches_threshold(importance: Tensor, mask: Tensor, threshold: float) -> Tensor:
    """[B, T] bool: the tokens of mask whose normalised importance reaches tau, the threshold-quantile of their
    row (the tokens that Bi-Level reshaping boosts); every token of a uniform row; none of a non-finite row."""
    norm, mask, _ = normalised_importance(importance, mask)
    tau = masked_quantile(norm, mask, threshold)[:, None]  # [B, 1]
    return mask & (norm >= tau)


def bilevel_weights(
    importance: Tensor, mask: Tensor, threshold: float = 0.4, beta: float = 2.0, floor: float = 0.1
) -> Tensor:
    """[B, T] weights from raw importances [B, T] over the tokens of mask [B, T] (1 everywhere else)."""
    check_bilevel(threshold, beta, floor)
    norm, mask, varied = normalised_importance(importance, mask)

    tau = masked_quantile(norm, mask, threshold)[:, None]  # [B, 1]
    suppressed = torch.clamp_min(norm / (tau + EPS), floor)
    boosted = 1.0 + beta * (norm - tau) / (1.0 - tau + EPS)
    weights = torch.where(norm < tau, suppressed, boosted) * mask  # [B, T]

    count = mask.sum(1, keepdim=True).to(norm.dtype)
    weights = weights * count / weights.sum(1, keepdim=True).clamp_min(EPS)
    return torch.where(mask & varied, weights, torch.ones_like(weights))
