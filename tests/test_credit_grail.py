"""GRAIL against a naive reference written here (one row at a time, full logits, plain autograd), and its
weights inside token_advantages."""

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from test_credit_core import make_batch
from test_credit_estimators import VOCAB, batch, make_rows, unpad
from test_credit_fixtures import bpe_tokenizer, tiny_qwen2

from oarl.credit import CreditConfig, token_advantages
from oarl.credit.grail import grail_saliency, grail_weights

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return tiny_qwen2(VOCAB)


def naive_saliency(model, ids, reasoning, answer, temperature):
    """||dL/de_t * e_t||_2 for one unpadded row, L = -sum over answer tokens of log softmax(logits / T)."""
    embeds = model.get_input_embeddings()(torch.tensor([ids])).detach().requires_grad_(True)  # [1, L, D]
    logits = model(inputs_embeds=embeds).logits[0] / temperature  # [L, V], every position
    loss = 0.0
    for t, is_answer in enumerate(answer):
        if is_answer:
            loss = loss - torch.log_softmax(logits[t - 1], -1)[ids[t]]
    (grad,) = torch.autograd.grad(loss, [embeds])
    saliency = (grad[0] * embeds[0].detach()).norm(dim=-1)
    return torch.where(torch.tensor(reasoning), saliency, torch.zeros_like(saliency))


def naive_weights(saliency, mask, answer, scale, w_min, w_max):
    """GRAIL's weights for one row, as plain Python floats."""
    picked = [math.log(s + 1e-8) for s, m in zip(saliency, mask) if m]
    mean = sum(picked) / len(picked)
    std = math.sqrt(sum((x - mean) ** 2 for x in picked) / len(picked) + 1e-8)
    out = []
    for s, m, a in zip(saliency, mask, answer):
        if a:
            out.append(w_max)
        elif m:
            out.append(min(max(1 + scale * (math.log(s + 1e-8) - mean) / std, w_min), w_max))
        else:
            out.append(1.0)
    return out


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_saliency_matches_naive_loop(model, side, temperature):
    rows = make_rows()
    ids, attn, reasoning, answer = batch(rows, side)
    got = grail_saliency(model, ids, attn, reasoning, answer, temperature=temperature)
    for b, row in enumerate(rows):
        expected = naive_saliency(model, *row, temperature)
        torch.testing.assert_close(unpad(got, attn)[b].double(), expected, atol=1e-6, rtol=1e-5)
        assert (expected[torch.tensor(row[1])] > 0).all()
    other = grail_saliency(model, ids, attn, reasoning, answer, temperature=2.0 * temperature)
    assert not torch.allclose(got, other)  # the temperature is part of the definition


def test_saliency_hygiene(model):
    """Parameters' .grad untouched, train mode restored, works under inference_mode."""
    ids, attn, reasoning, answer = batch(make_rows(), "left")
    model.train()
    try:
        with torch.inference_mode():
            got = grail_saliency(model, ids, attn, reasoning, answer)
        assert model.training and all(p.grad is None for p in model.parameters())
    finally:
        model.eval()
    torch.testing.assert_close(got, grail_saliency(model, ids, attn, reasoning, answer))


def test_weights_match_naive():
    g = torch.Generator().manual_seed(0)
    saliency = torch.rand(3, 9, generator=g, dtype=torch.float64) ** 4  # spread over orders of magnitude
    mask = torch.rand(3, 9, generator=g) < 0.7
    mask[:, 0] = mask[:, 1] = True
    answer = torch.zeros(3, 9, dtype=torch.bool)
    answer[:, -1] = True
    mask[:, -1] = False
    for scale, w_min, w_max in [(0.5, 0.5, 5.0), (2.0, 0.1, 1.5)]:
        got = grail_weights(saliency, mask, answer, scale, w_min, w_max)
        for b in range(3):
            expected = naive_weights(saliency[b].tolist(), mask[b].tolist(), answer[b].tolist(), scale, w_min, w_max)
            assert got[b].tolist() == pytest.approx(expected, rel=1e-9)
    nan_row = saliency.clone()
    nan_row[0, 0] = float("nan")
    assert (grail_weights(nan_row, mask)[0] == 1).all()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(1e-2, 1e3), min_size=2, max_size=20), st.floats(0.1, 1e3))
def test_weights_are_scale_free_and_in_range(values, factor):
    """log then z-score: multiplying every saliency of a row by a constant changes nothing (up to the 1e-8
    inside the log, negligible against saliencies >= 1e-3)."""
    assume(max(values) > 2 * min(values))
    saliency = torch.tensor([values], dtype=torch.float64)
    mask = torch.ones_like(saliency, dtype=torch.bool)
    w = grail_weights(saliency, mask)
    assert ((w >= 0.5) & (w <= 5.0)).all()
    torch.testing.assert_close(grail_weights(saliency * factor, mask), w, atol=1e-4, rtol=0)
    order = torch.argsort(saliency[0])
    assert (w[0][order].diff() >= -1e-12).all()  # monotone in the saliency


def test_grail_inside_token_advantages():
    tok = bpe_tokenizer()
    model = tiny_qwen2(len(tok))
    prompt_ids, prompt_mask, completion_ids, completion_mask = make_batch(tok)
    advantages = torch.tensor([1.0, -0.5, 0.0, -2.0])  # row 2: advantage 0; row 3: no answer
    out = token_advantages(
        model,
        tok,
        prompt_ids,
        prompt_mask,
        completion_ids,
        completion_mask,
        advantages,
        CreditConfig(estimator="grail"),
    )
    reasoning, answer = out.segments.reasoning, out.segments.answer
    # Default apply_to for grail: non-positive advantages only. Row 0 (positive) keeps 1 on its reasoning.
    assert (out.weights[0][reasoning[0]] == 1).all() and (out.importance[0] == 0).all()
    assert out.weights[1][reasoning[1]].std() > 0 and (out.importance[1][reasoning[1]] > 0).all()
    # The answer tokens get w_max on every completion with an answer and an advantage (GRAIL's code).
    assert (out.weights[0][answer[0]] == 5.0).all() and (out.weights[1][answer[1]] == 5.0).all()
    assert (out.weights[2] == 1).all() and (out.weights[3] == 1).all()
    outside = ~reasoning & ~answer
    assert (out.weights[outside] == 1).all()
    torch.testing.assert_close(out.advantages, advantages[:, None] * out.weights * completion_mask)
    # The weights are GRAIL's of the saliencies of the batch's probes.
    ids = torch.cat([prompt_ids, completion_ids], 1)[1:2]
    no_prompt = torch.zeros_like(prompt_ids[1:2], dtype=torch.bool)
    saliency = grail_saliency(
        model,
        ids,
        torch.cat([prompt_mask, completion_mask], 1)[1:2],
        torch.cat([no_prompt, reasoning[1:2]], 1),
        torch.cat([no_prompt, answer[1:2]], 1),
    )
    saliency = saliency[:, prompt_ids.shape[1] :]
    torch.testing.assert_close(out.importance[1:2], saliency * reasoning[1:2])
    torch.testing.assert_close(out.weights[1:2], grail_weights(saliency, reasoning[1:2], answer[1:2]))
    every = token_advantages(
        model,
        tok,
        prompt_ids,
        prompt_mask,
        completion_ids,
        completion_mask,
        advantages,
        CreditConfig(estimator="grail", apply_to="all"),
    )
    assert every.weights[0][reasoning[0]].std() > 0
