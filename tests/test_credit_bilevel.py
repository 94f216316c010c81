"""Bi-Level reshaping: a row worked out on paper, and properties checked with hypothesis."""

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from oarl.credit import bilevel_weights
from oarl.credit.bilevel import masked_quantile, nonfinite_rows


def test_hand_computed_five_tokens():
    # Importances e^x - 1 for x = 0..4 (shuffled), plus one masked-out column:
    #   log1p        -> 0, 1, 2, 3, 4
    #   min-max      -> n = 0, .25, .5, .75, 1
    #   tau = 0.4-quantile of 5 values: rank 0.4 * 4 = 1.6 -> .25 + .6 * (.5 - .25) = 0.4
    #   suppression (n < .4): n=0 -> max(0 / .4, .1) = .1 ;  n=.25 -> .25 / .4 = .625
    #   boosting (beta=2):    n=.5 -> 1 + 2 * .1 / .6 = 4/3 ; n=.75 -> 1 + 2 * .35 / .6 = 13/6 ; n=1 -> 3
    #   sum = .1 + .625 + 4/3 + 13/6 + 3 = 7.225 -> scale 5 / 7.225
    x = torch.tensor([[2.0, 0.0, 4.0, 1.0, 3.0, 9.0]], dtype=torch.float64)
    importance = torch.expm1(x)
    mask = torch.tensor([[True, True, True, True, True, False]])
    scale = 5 / 7.225
    expected = torch.tensor(
        [[4 / 3 * scale, 0.1 * scale, 3 * scale, 0.625 * scale, 13 / 6 * scale, 1.0]], dtype=torch.float64
    )
    weights = bilevel_weights(importance, mask, threshold=0.4, beta=2.0, floor=0.1)
    torch.testing.assert_close(weights, expected, atol=1e-6, rtol=0)
    assert weights[0, 5] == 1.0


def test_uniform_cases():
    mask = torch.tensor([[True, True, True, False], [True, False, False, False], [False] * 4])
    importance = torch.tensor([[0.3, 0.3, 0.3, 5.0], [7.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0]])
    assert torch.equal(bilevel_weights(importance, mask), torch.ones(3, 4))


def test_nonfinite_row_falls_back_to_uniform():
    importance = torch.tensor([[0.1, float("nan"), 0.5], [0.1, 0.2, float("inf")], [0.1, 0.9, 0.5]])
    mask = torch.tensor([[True, True, True], [True, True, False], [True, True, True]])
    weights = bilevel_weights(importance, mask)
    assert torch.equal(nonfinite_rows(importance, mask), torch.tensor([True, False, False]))
    assert torch.equal(weights[0], torch.ones(3))
    assert torch.isfinite(weights).all()
    assert not torch.equal(weights[1], torch.ones(3)) and weights[1, 2] == 1.0


@st.composite
def batches(draw):
    rows, cols = draw(st.integers(1, 4)), draw(st.integers(1, 12))
    magnitude = draw(st.sampled_from([1e-6, 1.0, 1e4]))
    values = draw(arrays(np.float64, (rows, cols), elements=st.floats(0.0, 1.0))) * magnitude
    mask = draw(arrays(np.bool_, (rows, cols)))
    q = draw(st.floats(0.05, 0.95))
    beta = draw(st.floats(0.0, 4.0))
    floor = draw(st.floats(0.0, 1.0))
    return torch.from_numpy(values), torch.from_numpy(mask), q, beta, floor


@settings(max_examples=150, deadline=None)
@given(batches())
def test_properties(batch):
    importance, mask, q, beta, floor = batch
    weights = bilevel_weights(importance, mask, threshold=q, beta=beta, floor=floor)
    count = mask.sum(1).double()
    # masked-out positions are exactly 1
    assert torch.equal(weights[~mask], torch.ones_like(weights[~mask]))
    # mass preserved per row
    torch.testing.assert_close((weights * mask).sum(1), count, atol=1e-9 * (1 + count.max().item()), rtol=1e-9)
    # the floor holds before the mass-preserving rescale (scale >= 1/(1+beta)), so after it
    # every weight is >= floor / (1 + beta), and relative to the row's max weight likewise.
    bound = floor / (1 + beta)
    assert (weights >= bound - 1e-9).all()
    row_max = weights.amax(1, keepdim=True)
    assert ((weights / row_max)[mask] >= bound - 1e-9).all()
    # monotone non-decreasing in importance within a row
    for b in range(importance.shape[0]):
        imp, w = importance[b][mask[b]], weights[b][mask[b]]
        order = torch.argsort(imp, stable=True)
        assert (w[order].diff() >= -1e-9).all()
        # ties -> uniform
        if imp.numel() and (imp == imp[0]).all():
            assert torch.equal(w, torch.ones_like(w))


@settings(max_examples=60, deadline=None)
@given(batches())
def test_masked_quantile_matches_torch(batch):
    importance, mask, q, _, _ = batch
    tau = masked_quantile(importance, mask, q)
    for b in range(importance.shape[0]):
        if mask[b].any():
            expected = torch.quantile(importance[b][mask[b]], q)
            torch.testing.assert_close(tau[b], expected, atol=1e-12 * (1 + expected.abs().item()), rtol=1e-9)


def test_floor_binds_before_rescale():
    # One tiny importance far below tau: its pre-rescale weight is exactly the floor.
    importance = torch.tensor([[0.0, 1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    mask = torch.ones(1, 5, dtype=torch.bool)
    weights = bilevel_weights(importance, mask, threshold=0.4, beta=2.0, floor=0.3)
    # n = 0, 1, 1, 1, 1 -> tau = 1 -> raw weights 0.3, 1, 1, 1, 1 -> scale 5 / 4.3
    expected = torch.tensor([[0.3, 1, 1, 1, 1]], dtype=torch.float64) * 5 / 4.3
    torch.testing.assert_close(weights, expected, atol=1e-6, rtol=0)
    assert math.isclose(float(weights[0, 0] / weights[0, 1]), 0.3, rel_tol=1e-6)
