"""token_advantages: the entry point, end to end on a BPE tokenizer and a tiny random Qwen2."""

import pytest
import torch
from test_credit_fixtures import pad_rows, tiny_qwen2

import oarl.credit.core as core
from oarl.credit import ESTIMATORS, CreditConfig, token_advantages

pytestmark = pytest.mark.usefixtures("one_thread")
STAT_KEYS = {
    "time_s",
    "skipped_frac",
    "no_answer_frac",
    "nonfinite_frac",
    "weight_std",
    "weight_max",
    "suppressed_frac",
    "boosted_frac",
}
PROMPTS = ["Q: What is 12 + 30?", "Q: 7 * 6?", "Q: apples?", "Q: What is 100 - 58? Let's think step by step."]
COMPLETIONS = [
    "First, 12 + 30 = 42. So the final answer is \\boxed{42}.",
    "We add the numbers: 7 * 6 = 42.\n#### 42",
    "She has 5 apples and buys 3 more. The answer is 8.",
    "Step 1: compute 100 - 58 = 42.\nStep 2: check it.",  # no answer
]


def make_batch(tok, idx=range(4)):
    prompts = [tok(PROMPTS[i], add_special_tokens=False)["input_ids"] for i in idx]
    completions = [tok(COMPLETIONS[i], add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for i in idx]
    prompt_ids, prompt_mask = pad_rows(prompts, tok.pad_token_id, "left")
    completion_ids, completion_mask = pad_rows(completions, tok.pad_token_id, "right")
    return prompt_ids, prompt_mask, completion_ids, completion_mask


class ForwardCounter:
    """Records the batch size of every forward call of the model."""

    def __init__(self, model):
        self.sizes = []
        self.handle = model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        x = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs.get("inputs_embeds")
        self.sizes.append(x.shape[0])


def test_none_estimator_never_touches_the_model(tok):
    batch = make_batch(tok)
    advantages = torch.tensor([1.0, -0.5, 0.0, 2.0])
    out = token_advantages(None, tok, *batch, advantages, CreditConfig(estimator="none"))
    mask = batch[3]
    assert torch.equal(out.weights, torch.ones_like(out.weights))
    assert torch.equal(out.advantages, advantages[:, None] * mask)
    assert set(out.stats) == STAT_KEYS and out.stats["no_answer_frac"] == 0.25


@pytest.mark.parametrize(
    "estimator", ["perturbation", "gradient", "entropy"]
)  # Bi-Level: grail, rollout in their files
def test_output_invariants(tok, model, estimator):
    batch = make_batch(tok)
    advantages = torch.tensor([1.0, -0.5, 0.0, 2.0])  # row 2: advantage 0; row 3: no answer
    out = token_advantages(
        model, tok, *batch, advantages, CreditConfig(estimator=estimator), generator=torch.Generator().manual_seed(0)
    )
    mask = batch[3].bool()
    reasoning = out.segments.reasoning
    assert set(out.stats) == STAT_KEYS
    assert out.stats["skipped_frac"] == 0.25 and out.stats["no_answer_frac"] == 0.25
    assert out.stats["nonfinite_frac"] == 0.0
    assert 0 < out.stats["weight_std"] and 1 < out.stats["weight_max"]
    assert 0 < out.stats["suppressed_frac"] < 1 and 0 < out.stats["boosted_frac"] < 1
    torch.testing.assert_close(out.advantages, advantages[:, None] * out.weights * mask)
    assert (out.advantages[~mask] == 0).all()
    assert (out.weights[~reasoning] == 1).all() and (out.importance[~reasoning] == 0).all()
    assert (out.weights[2:] == 1).all() and (out.importance[2:] == 0).all()
    for b in (0, 1):  # computed rows: reshaped, mass kept over the reasoning tokens
        assert out.weights[b][reasoning[b]].std() > 0
        torch.testing.assert_close(out.weights[b][reasoning[b]].sum(), reasoning[b].sum().float())


@pytest.mark.parametrize(("apply_to", "rows"), [("all", 2), ("positive", 1), ("negative", 1)])
def test_skipped_rows_are_not_sent_through_the_model(tok, model, apply_to, rows):
    batch = make_batch(tok)
    counter = ForwardCounter(model)
    try:
        out = token_advantages(
            model,
            tok,
            *batch,
            torch.tensor([1.0, -0.5, 0.0, 2.0]),
            CreditConfig(estimator="entropy", apply_to=apply_to),
        )
    finally:
        counter.handle.remove()
    assert counter.sizes == [rows]  # one forward, only rows with advantage != 0, allowed, with an answer
    assert out.stats["skipped_frac"] == {"all": 0.25, "positive": 0.5, "negative": 0.75}[apply_to]
    computed = out.importance.abs().sum(1) > 0
    assert (
        computed.tolist()
        == {
            "all": [True, True, False, False],
            "positive": [True, False, False, False],
            "negative": [False, True, False, False],
        }[apply_to]
    )


def test_all_rows_skipped(tok, model):
    out = token_advantages(model, tok, *make_batch(tok), torch.zeros(4), CreditConfig(estimator="perturbation"))
    assert (out.weights == 1).all() and (out.advantages == 0).all() and out.stats["skipped_frac"] == 1.0
    assert out.stats["weight_std"] == 0.0 and out.stats["boosted_frac"] == 0.0


@pytest.mark.parametrize("reuse_prefix", [False, True])
def test_padding_invariance_end_to_end(tok, model, reuse_prefix):
    config = CreditConfig(estimator="perturbation", chunk_size=5, reuse_prefix=reuse_prefix)
    advantages = torch.tensor([1.0, -1.0, 0.5])
    full = token_advantages(model, tok, *make_batch(tok, range(3)), advantages, config)
    for b in range(3):
        alone = token_advantages(model, tok, *make_batch(tok, [b]), advantages[b : b + 1], config)
        n = alone.weights.shape[1]
        torch.testing.assert_close(full.importance[b, :n], alone.importance[0], atol=1e-6, rtol=0)
        torch.testing.assert_close(full.weights[b, :n], alone.weights[0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("estimator", [e for e in ESTIMATORS if e != "rollout"])  # rollout: no model (own tests)
@pytest.mark.parametrize("under_no_grad", [False, True])
def test_train_mode_and_grads_untouched(tok, estimator, under_no_grad):
    model = tiny_qwen2(len(tok), seed=3)
    model.train()
    params = list(model.parameters())
    for p in params[1::2]:
        p.grad = torch.ones_like(p)
    before = [None if p.grad is None else p.grad.clone() for p in params]
    with torch.no_grad() if under_no_grad else torch.enable_grad():
        out = token_advantages(
            model, tok, *make_batch(tok), torch.tensor([1.0, -0.5, 0.0, 2.0]), CreditConfig(estimator=estimator)
        )
    assert model.training and not out.advantages.requires_grad
    for p, b in zip(params, before):
        assert (p.grad is None and b is None) or torch.equal(p.grad, b)


def test_default_replacement_is_the_pad_id(tok, model):
    batch, advantages = make_batch(tok, [0]), torch.tensor([1.0])
    default = token_advantages(model, tok, *batch, advantages, CreditConfig(estimator="perturbation"))
    explicit = token_advantages(
        model, tok, *batch, advantages, CreditConfig(estimator="perturbation", replace_with=tok.pad_token_id)
    )
    other = token_advantages(model, tok, *batch, advantages, CreditConfig(estimator="perturbation", replace_with=5))
    assert torch.equal(default.importance, explicit.importance)
    assert not torch.equal(default.importance, other.importance)


def test_gradient_seeded(tok, model):
    batch, advantages = make_batch(tok), torch.tensor([1.0, -0.5, 0.0, 2.0])
    runs = [
        token_advantages(
            model,
            tok,
            *batch,
            advantages,
            CreditConfig(estimator="gradient"),
            generator=torch.Generator().manual_seed(s),
        )
        for s in (1, 1, 2)
    ]
    assert torch.equal(runs[0].importance, runs[1].importance)
    assert not torch.equal(runs[0].importance, runs[2].importance)


def test_nonfinite_importance_row_falls_back_to_uniform(tok, model, monkeypatch):
    real = core.entropy_importance

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        out[0] = torch.where(out[0] > 0, torch.full_like(out[0], float("nan")), out[0])  # first computed row
        return out

    monkeypatch.setattr(core, "entropy_importance", poisoned)
    out = token_advantages(
        model, tok, *make_batch(tok), torch.tensor([1.0, -0.5, 0.0, 2.0]), CreditConfig(estimator="entropy")
    )
    assert out.stats["nonfinite_frac"] == 0.25
    assert (out.weights[0] == 1).all() and (out.weights[1][out.segments.reasoning[1]] != 1).any()
    assert torch.isfinite(out.advantages).all() and torch.isfinite(torch.tensor(list(out.stats.values()))).all()


def test_truncated_completion_without_closing_is_uniform(tok, model):
    batch = make_batch(tok, [1])
    completion_ids, completion_mask = batch[2][:, :-1], batch[3][:, :-1]  # "#### 42" without the EOS, cut
    out = token_advantages(
        model,
        tok,
        batch[0],
        batch[1],
        completion_ids,
        completion_mask,
        torch.tensor([1.0]),
        CreditConfig(estimator="entropy"),
        truncated=torch.tensor([True]),
    )
    assert not out.segments.has_answer[0] and (out.weights == 1).all() and out.stats["no_answer_frac"] == 1.0


def test_span_mode_gives_one_importance_per_step(tok, model):
    batch, advantages = make_batch(tok, [1, 3]), torch.tensor([1.0, 1.0])
    prompt_ids, prompt_mask, completion_ids, completion_mask = batch
    completion = tok("Step 1: 7 * 6 = 42.\nStep 2: check it.\n#### 42", add_special_tokens=False)["input_ids"]
    completion_ids, completion_mask = pad_rows([completion + [tok.eos_token_id]] * 2, tok.pad_token_id, "right")
    out = token_advantages(
        model,
        tok,
        prompt_ids,
        prompt_mask,
        completion_ids,
        completion_mask,
        advantages,
        CreditConfig(estimator="perturbation", span="line"),
    )
    steps = out.segments.steps
    assert steps is not None and int(steps.max()) == 1
    for b in range(2):
        for s in (0, 1):
            values = out.importance[b][steps[b] == s]
            assert values.numel() > 1 and (values == values[0]).all() and values[0] > 0
    gradient = token_advantages(
        model,
        tok,
        prompt_ids,
        prompt_mask,
        completion_ids,
        completion_mask,
        advantages,
        CreditConfig(estimator="gradient", span="line"),
    )
    assert gradient.segments.steps is None  # span only changes OAR-P


@pytest.mark.parametrize("estimator", ["perturbation", "entropy", "gradient"])
def test_batch_size_bounds_each_pass_and_keeps_results(tok, model, estimator):
    batch = make_batch(tok)
    advantages = torch.tensor([1.0, -0.5, 2.0, 1.0])  # rows 0-2 have answers and non-zero advantages
    full = token_advantages(model, tok, *batch, advantages, CreditConfig(estimator=estimator, chunk_size=4))
    counter = ForwardCounter(model)
    try:
        split = token_advantages(
            model, tok, *batch, advantages, CreditConfig(estimator=estimator, chunk_size=4, batch_size=1)
        )
    finally:
        counter.handle.remove()
    if estimator == "gradient":  # one clean and one noisy forward per pass, one row each
        assert counter.sizes == [1] * 6
    else:
        assert max(counter.sizes) <= (4 if estimator == "perturbation" else 1)
        torch.testing.assert_close(split.importance, full.importance, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(split.weights, full.weights, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="batch_size must be None or an integer >= 1"):
        CreditConfig(batch_size=0)
