"""The class, not the instance: every credit path makes its tensors on its inputs' device.

A tensor made without an explicit device lands on torch's default device. On a GPU machine that is the CPU while
the model and its inputs are on CUDA: the first such tensor to meet a CUDA one fails (``_Variants.divergence``
crashed OAR-P on an H200 that way, issue 21). Here the model and its inputs stay on the CPU and the default device
is set to ``meta`` (``torch.set_default_device("meta")``): a tensor made without a device is then a meta tensor,
which has no data, and the call fails at the first place that made one, on any machine. A correct path gives the
same result as without it, bit for bit (the same operations run on the same CPU tensors).

Covered: every estimator function (OAR-P in every outcome mode, token / span / hierarchical, with and without
prefix reuse; OAR-G with and without activation checkpointing and with several noise draws; entropy; GRAIL;
rollout), ``token_advantages`` with each estimator, segments, Bi-Level and GRAIL weights, `oarl explain`'s
``explain_batch`` and its sampler, and OARTrainer's whole credit step (bf16 autocast and checkpointing on, as on
a GPU) after TRL's generation, which is TRL's code and runs outside the meta device here.
"""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch
from datasets import Dataset
from test_credit_core import COMPLETIONS, PROMPTS, make_batch
from trl import GRPOTrainer

from oarl import OARConfig, OARTrainer
from oarl.credit import (
    OUTCOMES,
    CreditConfig,
    bilevel_weights,
    entropy_importance,
    gradient_importance,
    grail_saliency,
    grail_weights,
    perturbation_importance,
    rollout_importance,
    segment_completions,
    token_advantages,
)
from oarl.credit.bilevel import reaches_threshold
from oarl.credit.rollout import step_groups
from oarl.devices import ACTIVATION_CHECKPOINTING
from oarl.models.tiny import load_tiny
from oarl.report.explain import explain_batch
from oarl.report.sampling import generate_sampler

from conftest import addition_prompts, addition_reward

pytestmark = pytest.mark.usefixtures("one_thread")
ADVANTAGES = torch.tensor([1.0, -0.5, 0.0, 2.0])  # row 2 skipped (advantage 0); row 3 has no answer


@contextlib.contextmanager
def default_device(device):
    """torch's default device inside the block; the one before it afterwards."""
    before = torch.get_default_device()
    torch.set_default_device(device)
    try:
        yield
    finally:
        torch.set_default_device(None if before == torch.device("cpu") else before)


def assert_same(got, expected, path="result"):
    """Equal structure, CPU tensors equal bit for bit (NaN where NaN)."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(got, torch.Tensor) and got.device.type == "cpu", (path, got)
        torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True, msg=path)
    elif dataclasses.is_dataclass(expected):
        for f in dataclasses.fields(expected):
            assert_same(getattr(got, f.name), getattr(expected, f.name), f"{path}.{f.name}")
    elif isinstance(expected, dict):
        assert set(got) == set(expected), path
        for key in expected:
            if key not in ("time_s", "wall_time_s"):  # a clock
                assert_same(got[key], expected[key], f"{path}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert len(got) == len(expected), path
        for i, (g, e) in enumerate(zip(got, expected)):
            assert_same(g, e, f"{path}[{i}]")
    else:
        assert got == expected, path


def same_under_meta(call):
    """call() under the meta default device equals call() without it; returns the result."""
    expected = call()
    with default_device("meta"):
        got = call()
    assert_same(got, expected)
    return expected


@pytest.fixture(scope="module")
def probes(tok):
    """Prompt ⊕ completion probes [B, P + T] with reasoning / answer masks and line / sentence ids (-1 elsewhere)."""
    prompt_ids, prompt_mask, completion_ids, completion_mask = make_batch(tok)
    no_prompt = torch.zeros_like(prompt_mask, dtype=torch.bool)
    out = {
        "ids": torch.cat([prompt_ids, completion_ids], 1),
        "attn": torch.cat([prompt_mask, completion_mask], 1).bool(),
    }
    for span in ("line", "sentence"):
        seg = segment_completions(tok, completion_ids, completion_mask, span=span)
        out[span] = torch.cat([torch.full_like(prompt_ids, -1), seg.steps], 1)
    out["reasoning"] = torch.cat([no_prompt, seg.reasoning], 1)
    out["answer"] = torch.cat([no_prompt, seg.answer], 1)
    assert out["reasoning"].sum() > 20 and out["sentence"].amax() >= 1  # several steps in a row
    return out


# ----------------------------------------------------------------------------------------- estimator functions


@pytest.mark.parametrize("mode", OUTCOMES)
@pytest.mark.parametrize("steps", ["token", "line", "sentence", "sentence-refine"])
@pytest.mark.parametrize("reuse_prefix", [False, "auto"])
def test_perturbation(model, tok, probes, mode, steps, reuse_prefix):
    span = steps.split("-")[0]
    out = same_under_meta(
        lambda: perturbation_importance(
            model,
            probes["ids"],
            probes["attn"],
            probes["reasoning"],
            probes["answer"],
            mode=mode,
            chunk_size=3,
            pad_token_id=tok.pad_token_id,
            reuse_prefix=reuse_prefix,
            span_ids=probes.get(span),
            refine=0.4 if steps.endswith("refine") else None,
        )
    )
    assert out.abs().sum() > 0


@pytest.mark.parametrize("mode", OUTCOMES)
@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("noise_samples", [1, 3])
def test_gradient(model, probes, mode, checkpointing, noise_samples):
    out = same_under_meta(
        lambda: gradient_importance(
            model,
            probes["ids"],
            probes["attn"],
            probes["reasoning"],
            probes["answer"],
            mode=mode,
            generator=torch.Generator().manual_seed(0),
            noise_samples=noise_samples,
            activation_checkpointing=checkpointing,
        )
    )
    assert out.abs().sum() > 0


def test_entropy_and_grail(model, probes):
    args = (model, probes["ids"], probes["attn"], probes["reasoning"], probes["answer"])
    assert same_under_meta(lambda: entropy_importance(*args)).abs().sum() > 0
    assert same_under_meta(lambda: grail_saliency(*args, temperature=0.7)).abs().sum() > 0


def fixed_sampler(prefixes, k):
    """K continuations per prefix that depend on the prefix's length: the credit differs between steps."""
    return [[[5 + (len(p) // 3) % 2 + 2 * j] for j in range(k)] for p in prefixes]


def parity_scorer(rows, completions):
    return [float(c[-1] % 2) if c else None for c in completions]


def test_rollout_and_its_sampler(model, tok):
    prompt_ids, prompt_mask, completion_ids, completion_mask = make_batch(tok)
    segments = segment_completions(tok, completion_ids, completion_mask, span="sentence")
    steps = torch.where(segments.reasoning, segments.steps, -1)
    rows = segments.has_answer.nonzero().squeeze(1)
    batch = (prompt_ids, prompt_mask, completion_ids, completion_mask, steps, rows)
    magnitude, signed = same_under_meta(
        lambda: rollout_importance(
            *batch, fixed_sampler, parity_scorer, rollouts=3, max_steps=2, max_completion_length=40
        )
    )
    assert signed.abs().sum() > 0 and torch.equal(magnitude, signed.abs())
    # `oarl explain`'s sampler: generate() from the model, seeded per call
    model.generation_config.eos_token_id = tok.eos_token_id
    prefixes = [prompt_ids[0][prompt_mask[0].bool()].tolist(), prompt_ids[1][prompt_mask[1].bool()].tolist()]
    same_under_meta(lambda: generate_sampler(model, tok, max_new_tokens=6, seed=1)(prefixes, 2))


# ----------------------------------------------------------------------------------------- the entry point


CONFIGS = {
    "none": CreditConfig(estimator="none"),
    "perturbation": CreditConfig(estimator="perturbation", chunk_size=4),
    "perturbation-recompute-joint": CreditConfig(estimator="perturbation", reuse_prefix=False, outcome="answer_joint"),
    "perturbation-line": CreditConfig(estimator="perturbation", span="line"),
    "perturbation-sentence-refine": CreditConfig(estimator="perturbation", span="sentence", refine=True),
    "gradient": CreditConfig(estimator="gradient", batch_size=1),
    "gradient-checkpointing-3-draws": CreditConfig(
        estimator="gradient", activation_checkpointing=True, noise_samples=3
    ),
    "entropy": CreditConfig(estimator="entropy", apply_to="positive"),
    "grail": CreditConfig(estimator="grail", apply_to="all"),
    "rollout": CreditConfig(estimator="rollout", rollouts=2, max_steps=3),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_token_advantages(model, tok, name):
    batch = make_batch(tok)
    truncated = torch.tensor([False, False, True, False])
    rollout = dict(sampler=fixed_sampler, scorer=parity_scorer, max_completion_length=40)
    out = same_under_meta(
        lambda: token_advantages(
            model,
            tok,
            *batch,
            ADVANTAGES,
            CONFIGS[name],
            truncated=truncated,
            generator=torch.Generator().manual_seed(0),
            **(rollout if name == "rollout" else {}),
        )
    )
    assert (out.importance != 0).any() == (name != "none")


@pytest.mark.parametrize("span", ["token", "line", "sentence"])
def test_segments_and_weights(tok, model, span):
    _, _, completion_ids, completion_mask = make_batch(tok)
    truncated = torch.tensor([False, True, False, True])
    segments = same_under_meta(lambda: segment_completions(tok, completion_ids, completion_mask, truncated, span=span))
    assert segments.has_answer.tolist() == [True, False, True, False]  # row 1 was cut at its answer, row 3 has none
    importance = torch.rand(segments.reasoning.shape, generator=torch.Generator().manual_seed(0))
    same_under_meta(lambda: bilevel_weights(importance, segments.reasoning, 0.4, 2.0, 0.1))
    same_under_meta(lambda: reaches_threshold(importance, segments.reasoning, 0.4))
    same_under_meta(lambda: grail_weights(importance, segments.reasoning, segments.answer))
    if segments.steps is not None:
        same_under_meta(lambda: step_groups(segments.steps, 2))


def test_explain_batch(model, tok):
    """`oarl explain`'s credit pass: every estimator on the same completions, and the heat map."""
    completions = [c.removesuffix("<eos>") for c in COMPLETIONS[:3]]
    out = same_under_meta(
        lambda: explain_batch(
            model,
            tok,
            PROMPTS[:3],
            completions,
            ["perturbation", "gradient", "entropy", "grail", "rollout"],
            batch_size=2,
            sampler=fixed_sampler,
            scorer=parity_scorer,
            max_completion_length=40,
            rollouts=2,
        )
    )
    assert out["completions"][0]["importance"]["perturbation"]


# ----------------------------------------------------------------------------------------- the trainer's credit step


@contextlib.contextmanager
def generation_off_meta(monkeypatch):
    """TRL's generation (and the rollout sampler's generate calls inside it) runs off the meta device: it is TRL's
    code, not under test; everything oarl does around it stays under it."""

    def off_meta(method):
        def call(self, *args, **kwargs):
            with default_device(None):
                return method(self, *args, **kwargs)

        return call

    monkeypatch.setattr(
        GRPOTrainer, "_generate_and_score_completions", off_meta(GRPOTrainer._generate_and_score_completions)
    )
    monkeypatch.setattr(GRPOTrainer, "_generate_single_turn", off_meta(GRPOTrainer._generate_single_turn))
    yield


@pytest.fixture(scope="module")
def trainer(tiny_lm_dir, tmp_path_factory):
    """OARTrainer on the trained tiny LM with bf16 autocast and activation checkpointing, as GPU users run it."""
    model, tokenizer = load_tiny(tiny_lm_dir)
    args = OARConfig(
        output_dir=str(tmp_path_factory.mktemp("meta_trainer")),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=32,
        max_steps=1,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        bf16=True,
        use_cpu=True,
        beta=0.0,
        dataloader_num_workers=0,
        disable_tqdm=True,
        credit_rollouts=2,
        credit_max_steps=2,
        **{ACTIVATION_CHECKPOINTING: True},
    )
    trainer = OARTrainer(
        model=model,
        reward_funcs=[addition_reward],
        args=args,
        train_dataset=Dataset.from_list(addition_prompts(8)),
        processing_class=tokenizer,
    )
    trainer.model.train()
    return trainer


@pytest.mark.parametrize(
    "credit",
    [
        {"estimator": "perturbation"},  # prefix reuse: auto
        {"estimator": "perturbation", "span": "sentence", "refine": True, "reuse_prefix": False},
        {"estimator": "gradient", "noise_samples": 2},  # activation checkpointing: from the trainer's arguments
        {"estimator": "entropy"},
        {"estimator": "grail"},
        {"estimator": "rollout"},
    ],
    ids=lambda c: "-".join(str(v) for v in c.values()),
)
def test_trainer_credit_step(trainer, monkeypatch, credit):
    monkeypatch.setattr(trainer, "credit_config", dataclasses.replace(trainer.credit_config, **credit))
    inputs = [dict(row) for row in addition_prompts(2, seed=0) for _ in range(4)]

    def step():
        torch.manual_seed(0)  # the same completions each time
        output = trainer._generate_and_score_completions(inputs)
        return {k: output[k] for k in ("completion_ids", "advantages")}, trainer.last_credit.credit

    with generation_off_meta(monkeypatch):
        output, credit_output = same_under_meta(step)
    assert output["advantages"].shape == output["completion_ids"].shape  # (B, T): reshaped per token
    assert credit_output.stats["skipped_frac"] < 1
    if credit["estimator"] == "rollout":  # the continuations may all score alike: no importance needed
        assert credit_output.signed is not None
    else:
        assert (credit_output.importance != 0).any() and (credit_output.weights != 1).any()
