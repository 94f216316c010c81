"""Estimators on a tiny random Qwen2 (float64): batched = naive loop, padding invariance, OAR-G hygiene."""

import pytest
import torch
from test_credit_fixtures import pad_rows, tiny_gpt2, tiny_qwen2

from oarl.credit import OUTCOMES, entropy_importance, gradient_importance, perturbation_importance

pytestmark = pytest.mark.usefixtures("one_thread")
VOCAB = 97
PAD = 0
NOISE_STD = 1e-3


def make_rows(seed: int = 0):
    """Three probes of different lengths: (ids, reasoning flags, answer flags), with tokens after the answer."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for prompt, reasoning, conclusion, answer, rest in [(3, 6, 2, 1, 2), (5, 9, 1, 3, 0), (2, 4, 2, 2, 1)]:
        n = prompt + reasoning + conclusion + answer + rest
        ids = torch.randint(2, VOCAB, (n,), generator=g).tolist()
        flags = [0] * prompt + [1] * reasoning + [0] * conclusion + [2] * answer + [0] * rest
        rows.append((ids, [f == 1 for f in flags], [f == 2 for f in flags]))
    return rows


def batch(rows, side):
    ids, attn = pad_rows([r[0] for r in rows], PAD, side)
    reasoning, _ = pad_rows([[int(x) for x in r[1]] for r in rows], 0, side)
    answer, _ = pad_rows([[int(x) for x in r[2]] for r in rows], 0, side)
    return ids, attn, reasoning.bool(), answer.bool()


def unpad(values, attn):
    return [values[b][attn[b].bool()] for b in range(values.shape[0])]


@pytest.fixture(scope="module")
def model():
    return tiny_qwen2(VOCAB)


# -- naive references: one sequence, full logits, written independently of the library ----------------


def naive_outcome(model, ids, answer, mode):
    logits = model(input_ids=torch.tensor([ids])).logits[0].double()  # [L, V]
    cols = torch.tensor(answer).nonzero().squeeze(1)
    predicting = cols - 1  # positions that predict the answer tokens
    if mode == "last":
        return torch.log_softmax(logits[predicting[0]], -1)
    if mode == "answer_mean":
        return torch.log_softmax(logits[predicting].mean(0), -1)
    logp = torch.log_softmax(logits[predicting], -1)
    return logp[torch.arange(len(cols)), torch.tensor(ids)[cols]].mean()


def naive_divergence(p, q, mode):
    if mode == "answer_joint":
        return max(float(p - q), 0.0)
    return float((p.exp() * (p - q)).sum())


@torch.no_grad()
def naive_perturbation(model, row, mode, replace):
    ids, reasoning, answer = row
    clean = naive_outcome(model, ids, answer, mode)
    out = torch.zeros(len(ids), dtype=torch.float64)
    for t in range(len(ids)):
        if reasoning[t]:
            variant = list(ids)
            variant[t] = replace
            out[t] = naive_divergence(clean, naive_outcome(model, variant, answer, mode), mode)
    return out


@pytest.mark.parametrize("mode", OUTCOMES)
@pytest.mark.parametrize("chunk_size", [1, 3, 64])
@pytest.mark.parametrize("reuse_prefix", [False, True])
def test_perturbation_matches_naive_loop(model, mode, chunk_size, reuse_prefix):
    rows = make_rows()
    ids, attn, reasoning, answer = batch(rows, "left")
    got = perturbation_importance(
        model,
        ids,
        attn,
        reasoning,
        answer,
        mode=mode,
        chunk_size=chunk_size,
        pad_token_id=PAD,
        reuse_prefix=reuse_prefix,
    )
    assert got.shape == ids.shape
    for b, row_got in enumerate(unpad(got, attn)):
        expected = naive_perturbation(model, rows[b], mode, PAD).float()
        assert (row_got - expected).abs().max() <= 1e-5, (mode, chunk_size, b)
        assert (row_got[~torch.tensor(rows[b][1])] == 0).all()
    assert (got > 0).sum() >= 2  # not trivially zero (answer_joint deltas clamp at 0 for many tokens)


def test_perturbation_replace_with(model):
    rows = make_rows()[:1]
    ids, attn, reasoning, answer = batch(rows, "right")
    got = perturbation_importance(
        model, ids, attn, reasoning, answer, mode="answer_mean", replace_with=5, pad_token_id=PAD
    )
    expected = naive_perturbation(model, rows[0], "answer_mean", 5).float()
    assert (got[0] - expected).abs().max() <= 1e-5


@pytest.fixture(scope="module")
def gpt2():
    return tiny_gpt2(VOCAB)


@pytest.mark.parametrize("estimator", ["perturbation", "perturbation-reuse", "entropy"])
@pytest.mark.parametrize("kind", ["qwen2", "gpt2"])  # rotary (relative) and absolute position embeddings
def test_padding_invariance(model, gpt2, estimator, kind):
    model = gpt2 if kind == "gpt2" else model
    rows = make_rows(seed=1)
    fn = {
        "perturbation": lambda *a: perturbation_importance(model, *a, mode="last", chunk_size=4, pad_token_id=PAD),
        "perturbation-reuse": lambda *a: perturbation_importance(
            model, *a, mode="answer_mean", chunk_size=4, pad_token_id=PAD, reuse_prefix=True
        ),
        "entropy": lambda *a: entropy_importance(model, *a),
    }[estimator]
    single = [fn(*batch([r], "left"))[0] for r in rows]  # unpadded, one row at a time
    assert all(s.abs().sum() > 0 for s in single)
    for side in ("left", "right"):
        ids, attn, reasoning, answer = batch(rows, side)
        for b, row_got in enumerate(unpad(fn(ids, attn, reasoning, answer), attn)):
            assert (row_got - single[b]).abs().max() <= 1e-9, (side, b)


def test_entropy_matches_naive(model):
    rows = make_rows()
    ids, attn, reasoning, answer = batch(rows, "right")
    got = unpad(entropy_importance(model, ids, attn, reasoning, answer), attn)
    for b, (row_ids, row_reasoning, _) in enumerate(rows):
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([row_ids])).logits[0], -1)
        entropy = -(logp.exp() * logp).sum(-1)  # entropy at position t predicts token t + 1
        expected = torch.zeros(len(row_ids), dtype=torch.float64)
        expected[1:] = entropy[:-1]
        expected = expected * torch.tensor(row_reasoning)
        assert (got[b] - expected).abs().max() <= 1e-6


def naive_gradient(model, row, mode, seed=None, noise=None):
    """One unpadded row, noise drawn exactly as the library does: an [M, D] block, row-major."""
    ids, reasoning, answer = row
    embed = model.get_input_embeddings()
    with torch.no_grad():
        e = embed(torch.tensor([ids]))[0]  # [L, D]
        clean = naive_outcome(model, ids, answer, mode)
    cols = torch.tensor(reasoning).nonzero().squeeze(1)
    if noise is None:
        noise = torch.randn((len(cols), e.shape[1]), generator=torch.Generator().manual_seed(seed)).double() * NOISE_STD
    x = e.clone()
    x[cols] += noise
    x.requires_grad_(True)
    logits = model(inputs_embeds=x[None]).logits[0]
    acols = torch.tensor(answer).nonzero().squeeze(1)
    if mode == "last":
        noisy = torch.log_softmax(logits[acols[0] - 1], -1)
    elif mode == "answer_mean":
        noisy = torch.log_softmax(logits[acols - 1].mean(0), -1)
    else:
        noisy = torch.log_softmax(logits[acols - 1], -1)[torch.arange(len(acols)), torch.tensor(ids)[acols]].mean()
    objective = clean - noisy if mode == "answer_joint" else (clean.exp() * (clean - noisy)).sum()
    (g,) = torch.autograd.grad(objective, x)
    return ((g * e).sum(-1).abs() * torch.tensor(reasoning)).float()


@pytest.mark.parametrize("mode", OUTCOMES)
def test_gradient_matches_naive_for_one_row(model, mode):
    row = make_rows()[1]
    ids, attn, reasoning, answer = batch([row], "left")
    got = gradient_importance(
        model, ids, attn, reasoning, answer, mode=mode, noise_std=NOISE_STD, generator=torch.Generator().manual_seed(3)
    )
    expected = naive_gradient(model, row, mode, seed=3)
    assert expected.abs().max() > 0
    torch.testing.assert_close(got[0], expected, rtol=1e-6, atol=1e-12)


def test_gradient_noise_samples_average_consecutive_draws(model):
    """K draws of one row = the mean of K naive importances, draw k taking the k-th [M, D] block of the stream;
    rows of a batch keep their own draws, so a row's result does not depend on its neighbours' lengths."""
    rows = make_rows(seed=4)
    k, d = 3, model.config.hidden_size
    m = sum(rows[0][1])
    stream = torch.randn((k * m, d), generator=torch.Generator().manual_seed(5)).double() * NOISE_STD
    expected = torch.stack([naive_gradient(model, rows[0], "answer_mean", noise=block) for block in stream.split(m)])
    got = gradient_importance(
        model, *batch(rows, "left"), noise_std=NOISE_STD, noise_samples=k, generator=torch.Generator().manual_seed(5)
    )
    ids, attn, *_ = batch(rows, "left")
    torch.testing.assert_close(unpad(got, attn)[0], expected.mean(0), rtol=1e-6, atol=1e-12)
    assert not torch.allclose(expected[0], expected[1])  # the draws differ: the mean is not one draw
    right = gradient_importance(
        model, *batch(rows, "right"), noise_std=NOISE_STD, noise_samples=k, generator=torch.Generator().manual_seed(5)
    )
    for a, b in zip(unpad(got, attn), unpad(right, batch(rows, "right")[1])):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-15)


def test_gradient_noise_samples_shrink_the_spread(model):
    """The spread of one token's importance over seeds shrinks like 1/sqrt(K) (half-normal draws)."""
    ids, attn, reasoning, answer = batch(make_rows(seed=6)[:1], "left")

    def spread(k):
        draws = torch.stack(
            [
                gradient_importance(
                    model, ids, attn, reasoning, answer, noise_samples=k, generator=torch.Generator().manual_seed(s)
                )[0]
                for s in range(40)
            ]
        )
        cols = reasoning[0]
        return (draws[:, cols].std(0) / draws[:, cols].mean(0)).mean()

    one, sixteen = spread(1), spread(16)
    assert 0.5 < one < 1.0  # a half-normal's std / mean is 0.76
    assert 0.15 < sixteen / one < 0.35  # 1 / sqrt(16) = 0.25


@pytest.mark.parametrize("kind", ["qwen2", "gpt2"])
def test_gradient_padding_and_seed(model, gpt2, kind):
    model = gpt2 if kind == "gpt2" else model
    rows = make_rows(seed=2)
    outs = {}
    for side in ("left", "right"):
        ids, attn, reasoning, answer = batch(rows, side)
        outs[side] = unpad(
            gradient_importance(model, ids, attn, reasoning, answer, generator=torch.Generator().manual_seed(7)), attn
        )
    for left, right in zip(outs["left"], outs["right"]):
        torch.testing.assert_close(left, right, rtol=1e-7, atol=1e-15)
    # the first row's noise is the first block of the stream: same as that row alone
    alone = gradient_importance(model, *batch(rows[:1], "left"), generator=torch.Generator().manual_seed(7))[0]
    torch.testing.assert_close(outs["left"][0], alone, rtol=1e-7, atol=1e-15)
    # seeded: reproducible; another seed: different
    ids, attn, reasoning, answer = batch(rows, "left")
    again = gradient_importance(model, ids, attn, reasoning, answer, generator=torch.Generator().manual_seed(7))
    other = gradient_importance(model, ids, attn, reasoning, answer, generator=torch.Generator().manual_seed(8))
    assert torch.equal(unpad(again, attn)[1], outs["left"][1])
    assert not torch.equal(again, other)


@pytest.mark.parametrize("under_no_grad", [False, True])
def test_gradient_leaves_grads_and_mode_untouched(under_no_grad):
    model = tiny_qwen2(VOCAB, seed=1)
    model.config.attention_dropout = 0.5  # dropout would make the result random if it stayed on
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.5
    params = list(model.parameters())
    for p in params[::2]:
        p.grad = torch.randn_like(p)  # some parameters hold a gradient, the others None
    before = [None if p.grad is None else p.grad.clone() for p in params]
    model.train()
    ids, attn, reasoning, answer = batch(make_rows(), "left")
    results = []
    for _ in range(2):
        ctx = torch.no_grad() if under_no_grad else torch.enable_grad()
        with ctx:
            results.append(
                gradient_importance(model, ids, attn, reasoning, answer, generator=torch.Generator().manual_seed(0))
            )
    assert model.training
    assert all(p.requires_grad for p in params)
    for p, b in zip(params, before):
        assert (p.grad is None and b is None) or torch.equal(p.grad, b)
    assert torch.equal(results[0], results[1])  # dropout was off
    assert results[0].abs().sum() > 0 and not results[0].requires_grad


def test_rows_without_answer_or_reasoning_give_zero(model):
    rows = make_rows()
    ids, attn, reasoning, answer = batch(rows, "right")
    answer[1] = False
    reasoning[2] = False
    for got in (
        perturbation_importance(model, ids, attn, reasoning, answer, pad_token_id=PAD),
        gradient_importance(model, ids, attn, reasoning, answer),
        entropy_importance(model, ids, attn, reasoning, answer),
    ):
        assert got[1:].abs().sum() == 0 and got[0].abs().sum() > 0


def test_bad_settings_raise(model):
    ids, attn, reasoning, answer = batch(make_rows(), "left")
    with pytest.raises(ValueError, match="mode"):
        perturbation_importance(model, ids, attn, reasoning, answer, mode="first", pad_token_id=PAD)
    with pytest.raises(ValueError, match="chunk_size"):
        perturbation_importance(model, ids, attn, reasoning, answer, chunk_size=0, pad_token_id=PAD)
    with pytest.raises(ValueError, match="noise_std"):
        gradient_importance(model, ids, attn, reasoning, answer, noise_std=0.0)
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="noise_samples"):
            gradient_importance(model, ids, attn, reasoning, answer, noise_samples=bad)
    with pytest.raises(ValueError, match="mode"):
        gradient_importance(model, ids, attn, reasoning, answer, mode="sum")


@pytest.mark.parametrize("mode", OUTCOMES)
def test_prefix_reuse_equals_full_recompute_on_gpt2(gpt2, mode):
    ids, attn, reasoning, answer = batch(make_rows(seed=3), "right")
    full = perturbation_importance(gpt2, ids, attn, reasoning, answer, mode=mode, chunk_size=4, pad_token_id=PAD)
    reused = perturbation_importance(
        gpt2, ids, attn, reasoning, answer, mode=mode, chunk_size=4, pad_token_id=PAD, reuse_prefix=True
    )
    assert full.abs().sum() > 0 and (full - reused).abs().max() <= 1e-9


@torch.no_grad()
def naive_span_perturbation(model, row, steps, mode, replace):
    ids, reasoning, answer = row
    clean = naive_outcome(model, ids, answer, mode)
    out = torch.zeros(len(ids), dtype=torch.float64)
    for step in sorted({s for s, r in zip(steps, reasoning) if r}):
        members = [t for t in range(len(ids)) if reasoning[t] and steps[t] == step]
        variant = [replace if t in members else x for t, x in enumerate(ids)]
        out[members] = naive_divergence(clean, naive_outcome(model, variant, answer, mode), mode)
    return out


@pytest.mark.parametrize("mode", OUTCOMES)
@pytest.mark.parametrize(("chunk_size", "reuse_prefix"), [(1, False), (2, True), (64, False)])
def test_span_perturbation_matches_naive_loop(model, mode, chunk_size, reuse_prefix):
    rows = make_rows()
    steps = [[t // 3 for t in range(len(r[0]))] for r in rows]  # steps of 3 consecutive tokens
    ids, attn, reasoning, answer = batch(rows, "right")
    span_ids, _ = pad_rows(steps, -1, "right")
    got = perturbation_importance(
        model,
        ids,
        attn,
        reasoning,
        answer,
        mode=mode,
        chunk_size=chunk_size,
        pad_token_id=PAD,
        reuse_prefix=reuse_prefix,
        span_ids=span_ids,
    )
    for b, row_got in enumerate(unpad(got, attn)):
        expected = naive_span_perturbation(model, rows[b], steps[b], mode, PAD).float()
        assert (row_got - expected).abs().max() <= 1e-5, (mode, b)


def test_span_of_single_tokens_is_token_mode(model):
    ids, attn, reasoning, answer = batch(make_rows(), "left")
    columns = torch.arange(ids.shape[1]).expand_as(ids) * 7  # any distinct id per token
    a = perturbation_importance(model, ids, attn, reasoning, answer, pad_token_id=PAD)
    b = perturbation_importance(model, ids, attn, reasoning, answer, pad_token_id=PAD, span_ids=columns)
    assert torch.equal(a, b)


def test_gradient_under_inference_mode(model):
    ids, attn, reasoning, answer = batch(make_rows(), "left")
    expected = gradient_importance(model, ids, attn, reasoning, answer, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        ids, attn, reasoning, answer = (t.clone() for t in (ids, attn, reasoning, answer))
        got = gradient_importance(model, ids, attn, reasoning, answer, generator=torch.Generator().manual_seed(4))
    assert torch.equal(got, expected) and expected.abs().sum() > 0


def first_block_norm(model):
    """The first module that the first block runs (its recomputation always starts there)."""
    return model.model.layers[0].input_layernorm if hasattr(model, "model") else model.transformer.h[0].ln_1


@pytest.mark.parametrize("kind", ["qwen2", "gpt2"])
def test_gradient_activation_checkpointing_recomputes_and_keeps_the_result(model, gpt2, kind):
    """Checkpointed blocks run their forward twice in the noisy pass (forward, then again in the backward) and
    give the same importances; the blocks' forwards are restored afterwards."""
    model = gpt2 if kind == "gpt2" else model
    ids, attn, reasoning, answer = batch(make_rows(), "left")
    norm = first_block_norm(model)
    calls = []
    handle = norm.register_forward_hook(lambda *a: calls.append(1))
    try:
        results = {}
        for on in (False, True):
            calls.clear()
            results[on] = gradient_importance(
                model,
                ids,
                attn,
                reasoning,
                answer,
                activation_checkpointing=on,
                generator=torch.Generator().manual_seed(2),
            )
            results[on, "calls"] = len(calls)
    finally:
        handle.remove()
    assert results[False, "calls"] == 2 and results[True, "calls"] == 3  # clean + noisy (+ recompute)
    torch.testing.assert_close(results[True], results[False], rtol=1e-9, atol=1e-15)
    assert results[True].abs().sum() > 0
    blocks = model.model.layers if kind == "qwen2" else model.transformer.h
    assert all("forward" not in block.__dict__ for block in blocks)


def test_gradient_with_transformers_checkpointing_in_train_mode():
    """A model in train mode with transformers' own gradient checkpointing and dropout: the pass is
    deterministic (dropout off) and equals the plain eval-mode result."""
    model = tiny_qwen2(VOCAB, seed=1)
    ids, attn, reasoning, answer = batch(make_rows(), "left")
    expected = gradient_importance(model, ids, attn, reasoning, answer, generator=torch.Generator().manual_seed(0))
    model.config.attention_dropout = 0.5
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.5
    model.activation_checkpointing_enable()
    model.train()
    for on in (False, True):
        got = gradient_importance(
            model, ids, attn, reasoning, answer, activation_checkpointing=on, generator=torch.Generator().manual_seed(0)
        )
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-15)
        assert not got.requires_grad  # its input-embedding hook (enable_input_require_grads) leaves no graph
    assert model.training and model.is_activation_checkpointing


def test_activation_checkpointing_needs_blocks():
    from oarl.credit.probe import activation_checkpointing

    with pytest.raises(ValueError, match="no nn.ModuleList of blocks"):
        with activation_checkpointing(torch.nn.Linear(2, 2)):
            pass
    with activation_checkpointing(torch.nn.Linear(2, 2), enabled=False):
        pass


def naive_hierarchical(model, row, steps, mode, replace, q):
    """Steps first; the steps whose normalised importance (log1p, min-max over the row's reasoning tokens)
    reaches the q-quantile of the tokens' values are replaced token by token (all of them if all are equal)."""
    step_values = naive_span_perturbation(model, row, steps, mode, replace)
    token_values = naive_perturbation(model, row, mode, replace)
    reasoning = torch.tensor(row[1])
    logged = torch.log1p(step_values[reasoning])
    spread = logged.max() - logged.min()
    norm = (logged - logged.min()) / spread if spread > 0 else torch.zeros_like(logged)
    tau = torch.quantile(norm, q)
    out = step_values.clone()
    chosen = torch.zeros_like(reasoning)
    chosen[reasoning] = norm >= tau
    out[chosen] = token_values[chosen]
    return out, chosen


@pytest.mark.parametrize("mode", OUTCOMES)
@pytest.mark.parametrize("reuse_prefix", [False, True])
def test_hierarchical_perturbation_matches_naive(model, mode, reuse_prefix):
    rows = make_rows(seed=5)
    steps = [[t // 2 for t in range(len(r[0]))] for r in rows]  # steps of 2 consecutive tokens
    ids, attn, reasoning, answer = batch(rows, "right")
    span_ids, _ = pad_rows(steps, -1, "right")
    got = perturbation_importance(
        model,
        ids,
        attn,
        reasoning,
        answer,
        mode=mode,
        chunk_size=3,
        pad_token_id=PAD,
        reuse_prefix=reuse_prefix,
        span_ids=span_ids,
        refine=0.5,
    )
    refined = 0
    for b, row_got in enumerate(unpad(got, attn)):
        expected, chosen = naive_hierarchical(model, rows[b], steps[b], mode, PAD, 0.5)
        assert (row_got - expected.float()).abs().max() <= 1e-5, (mode, b)
        refined += int(chosen.sum())
        assert 0 < chosen.sum() < sum(rows[b][1]) or mode == "answer_joint"  # some steps refined, not all
        # (answer_joint: a row whose clamped step deltas are all 0 is uniform, and every step is refined)
    assert refined > 0


def test_hierarchical_with_every_step_refined_is_token_level(model):
    ids, attn, reasoning, answer = batch(make_rows(), "left")
    steps = torch.arange(ids.shape[1]).expand_as(ids) // 3
    token = perturbation_importance(model, ids, attn, reasoning, answer, pad_token_id=PAD)
    # a quantile below the smallest gap: every step's normalised importance reaches it
    refined = perturbation_importance(
        model, ids, attn, reasoning, answer, pad_token_id=PAD, span_ids=steps, refine=1e-9
    )
    torch.testing.assert_close(refined, token, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="refine must be None or a quantile in"):
        perturbation_importance(model, ids, attn, reasoning, answer, pad_token_id=PAD, refine=0.4)
    with pytest.raises(ValueError, match="refine must be None or a quantile in"):
        perturbation_importance(model, ids, attn, reasoning, answer, pad_token_id=PAD, span_ids=steps, refine=1.0)
