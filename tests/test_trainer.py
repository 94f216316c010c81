"""OARTrainer inside real TRL GRPO runs on a tiny local model (CPU, a few steps each)."""

from __future__ import annotations

import dataclasses
import math
import os

import pytest
import torch
from datasets import Dataset
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from oarl import OARConfig, OARTrainer
from oarl.credit import CreditConfig
from oarl.devices import ACTIVATION_CHECKPOINTING
from oarl.models.tiny import load_tiny

from conftest import addition_prompts, addition_reward

CREDIT_METRICS = [
    "credit/time_s",
    "credit/overhead",
    "credit/skipped_frac",
    "credit/no_answer_frac",
    "credit/weight_std",
    "credit/weight_max",
    "credit/suppressed_frac",
    "credit/boosted_frac",
]


def cpu_args(cls, out, **kw):
    base = dict(
        output_dir=str(out),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=32,
        max_steps=3,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        bf16=False,
        activation_checkpointing=False,
        use_cpu=True,
        beta=0.0,
        temperature=1.0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    base.update(kw)
    return cls(**base)


class Recorder(TrainerCallback):
    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


class RecordingOARTrainer(OARTrainer):
    """Keeps what the loss sees and every credit pass, to check them from the outside."""

    seen = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.credit_passes = []

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if self.model.training and self.last_credit is not None:
            self.credit_passes.append(self.last_credit)
        return output

    def _compute_loss(self, model, inputs):
        type(self).seen = (self.seen or []) + [
            (inputs["advantages"].detach().clone(), inputs["completion_mask"].clone())
        ]
        return super()._compute_loss(model, inputs)


def make_trainer(cls, lm_dir, out, reward_funcs=(addition_reward,), n_prompts=16, trainer_kwargs=None, **kw):
    model, tokenizer = load_tiny(lm_dir)
    dataset = Dataset.from_list(addition_prompts(n_prompts))
    args = cpu_args(OARConfig if issubclass(cls, OARTrainer) else GRPOConfig, out, **kw)
    rec = Recorder()
    trainer = cls(
        model=model,
        reward_funcs=list(reward_funcs),
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[rec],
        **(trainer_kwargs or {}),
    )
    return trainer, rec


def test_credit_none_reproduces_grpo(tiny_lm_dir, tmp_path):
    grpo, grpo_log = make_trainer(GRPOTrainer, tiny_lm_dir, tmp_path / "grpo", max_steps=2)
    grpo.train()
    oar, oar_log = make_trainer(OARTrainer, tiny_lm_dir, tmp_path / "oar", max_steps=2, credit="none")
    oar.train()
    assert oar.last_credit is None and oar.credit_overhead is None  # plain GRPO: no credit pass at all
    losses_grpo = [r["loss"] for r in grpo_log.logs if "loss" in r]
    losses_oar = [r["loss"] for r in oar_log.logs if "loss" in r]
    assert len(losses_grpo) == 2 and losses_grpo == pytest.approx(losses_oar, abs=1e-6)
    for (name, p), q in zip(grpo.model.named_parameters(), oar.model.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0, msg=name)
    # The run did learn something (else equality would be trivial).
    ref, _ = load_tiny(tiny_lm_dir)
    assert any(not torch.equal(p, q) for p, q in zip(ref.parameters(), oar.model.parameters()))


def test_arguments_as_grpo_trainer_takes_them(tiny_lm_dir, tmp_path, monkeypatch, caplog):
    """No args: a default OARConfig named after the model, as GRPOTrainer names its default GRPOConfig; a GRPOConfig:
    the same settings as an OARConfig with the default credit, and a one-line note; positional arguments too."""
    monkeypatch.chdir(tmp_path)
    model, tokenizer = load_tiny(tiny_lm_dir)
    dataset = Dataset.from_list(addition_prompts(8))
    kwargs = dict(model=model, reward_funcs=addition_reward, train_dataset=dataset, processing_class=tokenizer)
    # GRPOConfig's default asks for bf16, which transformers refuses on a machine without a bf16 GPU; OARConfig's
    # picks a precision the device runs (oarl.devices): float32 here.
    import transformers.training_args

    if not transformers.training_args.is_torch_bf16_gpu_available():
        with pytest.raises(ValueError, match="Your setup doesn't support bf16/gpu"):
            GRPOTrainer(**kwargs)
        assert not OARTrainer(**kwargs).args.bf16
        monkeypatch.setattr(transformers.training_args, "is_torch_bf16_gpu_available", lambda: True)
    grpo, oar = GRPOTrainer(**kwargs), OARTrainer(**kwargs)
    assert type(oar.args) is OARConfig and oar.credit_config == CreditConfig(
        batch_size=oar.args.per_device_train_batch_size, activation_checkpointing=True
    )
    assert oar.args.output_dir == grpo.args.output_dir.removesuffix("-GRPO") + "-OAR"
    assert os.path.basename(oar.args.output_dir) == f"{os.path.basename(tiny_lm_dir)}-OAR"
    monkeypatch.undo()

    args = cpu_args(GRPOConfig, tmp_path / "out", max_steps=1, generation_batch_size=16, loss_type="dr_grpo")
    with caplog.at_level("WARNING", logger="oarl.trainer"):
        trainer = OARTrainer(load_tiny(tiny_lm_dir)[0], [addition_reward], args, dataset, None, tokenizer)
    assert [r.getMessage() for r in caplog.records if r.name == "oarl.trainer"] == [
        "OARTrainer got a GRPOConfig: using it as an OARConfig with the default credit settings (credit='gradient'); "
        "pass an OARConfig to choose them (credit='none' is plain GRPO)."
    ]
    assert type(trainer.args) is OARConfig and trainer.args.credit == "gradient"
    for f in dataclasses.fields(GRPOConfig):  # every setting as given (and as GRPOConfig resolved it)
        assert getattr(trainer.args, f.name) == getattr(args, f.name), f.name
    assert (trainer.args.steps_per_generation, trainer.args.loss_type) == (2, "dr_grpo")
    trainer.train()
    assert trainer.last_credit is not None  # OAR-G ran
    with pytest.raises(TypeError, match="OARTrainer needs an OARConfig \\(or a GRPOConfig\\), got TrainingArguments"):
        from transformers import TrainingArguments

        OARTrainer(
            model=model,
            reward_funcs=addition_reward,
            train_dataset=dataset,
            processing_class=tokenizer,
            args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True),
        )


# What OARTrainer supports of GRPOConfig, each case a real run of 2 steps (the README's list, "With TRL"). TRL's loss
# takes (B, T) advantages whatever made them, so the estimators are spread over the cases, not crossed with them.
SUPPORTED = {
    "grpo": ("perturbation", dict(loss_type="grpo", scale_rewards="batch")),
    "dapo": ("gradient", dict(loss_type="dapo", epsilon_high=0.28, mask_truncated_completions=True)),
    "dr_grpo": ("entropy", dict(loss_type="dr_grpo", scale_rewards="none")),
    "bnpo-num_iterations": ("gradient", dict(loss_type="bnpo", num_iterations=2)),
    "cispo-steps_per_generation": ("perturbation", dict(loss_type="cispo", generation_batch_size=16)),
    "sapo-top_entropy_quantile": ("entropy", dict(loss_type="sapo", top_entropy_quantile=0.5)),
    "luspo-sequence": ("gradient", dict(loss_type="luspo", importance_sampling_level="sequence")),
    "vespo": ("gradient", dict(loss_type="vespo")),
    "gspo-kl-delta": (
        "gradient",
        dict(importance_sampling_level="sequence", beta=0.04, delta=1.5, off_policy_mask_threshold=0.5),
    ),
    "peft-lora": ("gradient", dict()),
}


@pytest.mark.parametrize("case", list(SUPPORTED))
def test_supported_grpo_options(tiny_lm_dir, tmp_path, case):
    """Each option trains on OAR's per-token advantages: every row the loss sees is a row of a credit pass (the same
    pass reused across num_iterations and steps_per_generation), and the completions with an answer and signal are
    reshaped with their mass kept."""
    credit, options = SUPPORTED[case]
    extra = {}
    if case == "peft-lora":
        from peft import LoraConfig

        extra["peft_config"] = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    RecordingOARTrainer.seen = None
    trainer, rec = make_trainer(
        RecordingOARTrainer,
        tiny_lm_dir,
        tmp_path,
        credit=credit,
        credit_chunk_size=7,
        max_steps=2,
        trainer_kwargs=extra,
        **options,
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.state.global_step == 2
    assert all(math.isfinite(r["loss"]) for r in rec.logs if "loss" in r)
    for key in CREDIT_METRICS:
        assert any(key in r and r[key] is not None and math.isfinite(r[key]) for r in rec.logs), key

    per_generation = trainer.args.steps_per_generation * trainer.args.num_iterations
    assert len(trainer.credit_passes) == math.ceil(2 / per_generation)
    assert len(RecordingOARTrainer.seen) == 2, "the loss runs once per step"
    computed = [p.credit.advantages for p in trainer.credit_passes]  # [N, T] each
    for advantages, mask in RecordingOARTrainer.seen:  # (B, T): rows of one credit pass, shuffled by TRL
        assert advantages.shape == mask.shape
        assert any(
            all((c == row).all(1).any() for row in advantages) for c in computed if c.shape[1] == advantages.shape[1]
        ), "the loss saw advantages that no credit pass computed"
    if case == "bnpo-num_iterations":  # both iterations train on the one generation batch's advantages
        first, second = (torch.sort(a.flatten()).values for a, _ in RecordingOARTrainer.seen)
        assert torch.equal(first, second)
    assert reshaped_completions(trainer.credit_passes) >= 2
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])]
    assert changed
    if case == "peft-lora":  # only the adapters train
        assert all("lora_" in n for n in changed)


def reshaped_completions(credit_passes) -> int:
    """Checks every credit pass against its own (B,) advantages and segments (also for vLLM's completions, in
    vllm_train.py); returns the number of completions reshaped (an answer and a non-zero advantage)."""
    reshaped = 0
    for credit_out, seq_adv, _, completion_mask in credit_passes:
        assert credit_out.advantages.shape == completion_mask.shape  # (B, T): per-token
        reasoning = credit_out.segments.reasoning
        outside = (completion_mask > 0) & ~reasoning
        torch.testing.assert_close(credit_out.advantages[outside], seq_adv[:, None].expand_as(outside)[outside])
        rows = credit_out.segments.has_answer & (seq_adv != 0)
        for b in rows.nonzero().flatten().tolist():
            values = credit_out.advantages[b][reasoning[b]]
            assert values.numel() > 1 and values.std() > 0, f"row {b} has constant advantages along T"
            # Mass kept: the reasoning tokens' advantages sum to L * A.
            assert values.sum().item() == pytest.approx(seq_adv[b].item() * values.numel(), rel=1e-4, abs=1e-4)
            reshaped += 1
    return reshaped


def test_grail_in_training(tiny_lm_dir, tmp_path):
    RecordingOARTrainer.seen = None
    trainer, rec = make_trainer(RecordingOARTrainer, tiny_lm_dir, tmp_path, credit="grail")
    trainer.train()
    assert trainer.state.global_step == 3 and RecordingOARTrainer.seen and len(trainer.credit_passes) == 3
    for key in CREDIT_METRICS:
        assert any(key in r and math.isfinite(r[key]) for r in rec.logs), key
    reweighted = 0
    for credit_out, seq_adv, _, completion_mask in trainer.credit_passes:
        reasoning, answer = credit_out.segments.reasoning, credit_out.segments.answer
        for b in (credit_out.segments.has_answer & (seq_adv != 0)).nonzero().flatten().tolist():
            # w_max on the answer of every completion with signal; reasoning reweighted on non-positive advantages
            expected = 5.0 * seq_adv[b].expand(int(answer[b].sum()))
            torch.testing.assert_close(credit_out.advantages[b][answer[b]], expected)
            values = credit_out.advantages[b][reasoning[b]]
            if seq_adv[b] > 0:
                assert (values == seq_adv[b]).all()
            elif values.numel() > 1:
                assert values.std() > 0
                reweighted += 1
        outside = (completion_mask > 0) & ~reasoning & ~answer
        torch.testing.assert_close(credit_out.advantages[outside], seq_adv[:, None].expand_as(outside)[outside])
    assert reweighted >= 2, f"only {reweighted} completions with a negative advantage and an answer in 3 steps"


def test_rollout_in_training(tiny_lm_dir, tmp_path):
    RecordingOARTrainer.seen = None
    # One reasoning sentence per completion in this task: token steps, merged into 4 groups, vary the credit.
    trainer, rec = make_trainer(
        RecordingOARTrainer,
        tiny_lm_dir,
        tmp_path,
        credit="rollout",
        credit_span="token",
        credit_max_steps=4,
        credit_rollouts=3,
    )
    generated = []
    real = trainer._generate_single_turn

    def counting(prompt_ids, *args, **kwargs):
        generated.append(len(prompt_ids))
        return real(prompt_ids, *args, **kwargs)

    trainer._generate_single_turn = counting
    trainer.train()
    assert trainer.state.global_step == 3 and RecordingOARTrainer.seen and len(trainer.credit_passes) == 3
    for key in CREDIT_METRICS:
        assert any(key in r and math.isfinite(r[key]) for r in rec.logs), key
    # Training batches of 8 completions, then the continuations: 3 per prefix, at most 8 sequences (2 prefixes) a call.
    assert generated[0] == 8 and len(generated) > 3 and set(generated[1:]) <= {3, 6, 8}
    reshaped = 0
    for credit_out, seq_adv, _, completion_mask in trainer.credit_passes:
        reasoning, signed = credit_out.segments.reasoning, credit_out.signed
        assert signed is not None and torch.equal(credit_out.importance, signed.abs())
        for b in (credit_out.segments.has_answer & (seq_adv != 0) & reasoning.any(1)).nonzero().flatten().tolist():
            values = credit_out.advantages[b][reasoning[b]]
            assert values.sum().item() == pytest.approx(seq_adv[b].item() * values.numel(), rel=1e-4, abs=1e-4)
            assert set(signed[b][reasoning[b]].mul(3).round().tolist()) <= {-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0}
            reshaped += values.std() > 0
        outside = (completion_mask > 0) & ~reasoning
        torch.testing.assert_close(credit_out.advantages[outside], seq_adv[:, None].expand_as(outside)[outside])
    assert reshaped >= 2, f"only {reshaped} completions whose rollout credit varies along the reasoning in 3 steps"


def _none_sometimes(completions, answer, **kwargs):
    rewards = addition_reward(completions, answer)
    return [None if i % 3 == 0 else r for i, r in enumerate(rewards)]


def test_bad_inputs_do_not_stop_training(tiny_lm_dir, tmp_path):
    # Rewards that are sometimes None, and a completion budget so short that every completion is truncated
    # before its answer: nothing to reshape, training goes on and the metrics say so.
    trainer, rec = make_trainer(
        OARTrainer,
        tiny_lm_dir,
        tmp_path / "trunc",
        reward_funcs=(_none_sometimes,),
        max_completion_length=6,
        credit="gradient",
    )
    trainer.train()
    assert trainer.state.global_step == 3
    no_answer = [r["credit/no_answer_frac"] for r in rec.logs if "credit/no_answer_frac" in r]
    assert no_answer and all(v == 1.0 for v in no_answer)

    # An all-correct reward: every group has zero variance, so every completion is skipped.
    trainer, rec = make_trainer(
        OARTrainer,
        tiny_lm_dir,
        tmp_path / "allright",
        reward_funcs=(lambda completions, **kw: [1.0] * len(completions),),
        credit="perturbation",
    )
    trainer.train()
    skipped = [r["credit/skipped_frac"] for r in rec.logs if "credit/skipped_frac" in r]
    assert skipped and all(v == 1.0 for v in skipped)


def test_config_validation_and_parsing(tmp_path):
    with pytest.raises(ValueError, match=r"^credit_threshold must be in the open interval \(0, 1\)"):
        cpu_args(OARConfig, tmp_path, credit_threshold=1.5)
    with pytest.raises(ValueError, match="^credit must be one of"):
        cpu_args(OARConfig, tmp_path, credit="magic")
    with pytest.raises(ValueError, match="^credit_chunk_size must be an integer >= 1"):
        cpu_args(OARConfig, tmp_path, credit_chunk_size=0)
    with pytest.raises(ValueError, match="^credit_beta"):
        cpu_args(OARConfig, tmp_path, credit_beta=-1.0)
    with pytest.raises(ValueError, match="^credit_noise_samples must be an integer >= 1"):
        cpu_args(OARConfig, tmp_path, credit_noise_samples=0)
    assert cpu_args(OARConfig, tmp_path, credit_noise_samples=4).credit_config().noise_samples == 4
    with pytest.raises(ValueError, match="^credit_rollouts must be an integer >= 1"):
        cpu_args(OARConfig, tmp_path, credit="rollout", credit_rollouts=0)
    with pytest.raises(ValueError, match="^credit_grail_max must be a finite number >= 1"):
        cpu_args(OARConfig, tmp_path, credit="grail", credit_grail_max=0.5)
    grail = cpu_args(OARConfig, tmp_path, credit="grail", temperature=0.7).credit_config()
    assert (grail.temperature, grail.resolved_apply_to(), grail.grail_max) == (0.7, "negative", 5.0)
    with pytest.raises(ValueError, match="^credit_floor"):
        cpu_args(OARConfig, tmp_path, credit_floor=2.0)
    with pytest.raises(ValueError, match="^credit_outcome must be one of"):
        cpu_args(OARConfig, tmp_path, credit_outcome="median")
    from trl import TrlParser

    (cfg,) = TrlParser((OARConfig,)).parse_args_into_dataclasses(
        [
            "--output_dir",
            str(tmp_path),
            "--credit",
            "perturbation",
            "--credit_beta",
            "1.0",
            "--use_cpu",
            "true",
            "--bf16",
            "false",
            "--credit_outcome",
            "answer_joint",
        ]
    )
    # the pass size and OAR-G's checkpointing follow the training step (GRPOConfig checkpoints by default)
    assert cfg.credit_config() == CreditConfig(
        estimator="perturbation",
        beta=1.0,
        outcome="answer_joint",
        batch_size=cfg.per_device_train_batch_size,
        activation_checkpointing=True,
    )
    (cfg,) = TrlParser((OARConfig,)).parse_args_into_dataclasses(
        [
            "--output_dir",
            str(tmp_path),
            "--use_cpu",
            "true",
            "--bf16",
            "false",
            "--credit_batch_size",
            "3",
            f"--{ACTIVATION_CHECKPOINTING}",
            "false",
            "--credit_span",
            "line",
            "--credit_refine",
            "true",
            "--credit",
            "perturbation",
        ]
    )
    assert cfg.credit_config() == CreditConfig(estimator="perturbation", batch_size=3, span="line", refine=True)
    with pytest.raises(ValueError, match="^credit_refine needs reasoning steps"):
        cpu_args(OARConfig, tmp_path, credit="perturbation", credit_refine=True)
    with pytest.raises(ValueError, match="^credit_refine needs reasoning steps"):
        cpu_args(OARConfig, tmp_path, credit="gradient", credit_span="line", credit_refine=True)
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text(
        f"output_dir: {tmp_path}\ncredit: entropy\ncredit_threshold: 0.25\nuse_cpu: true\nbf16: false\n"
    )
    (cfg,) = TrlParser((OARConfig,)).parse_args_and_config(["--config", str(yaml_file)])
    assert cfg.credit == "entropy" and cfg.credit_threshold == 0.25


def test_overhead_counts_steps_that_reuse_a_generation_batch(tiny_lm_dir, tmp_path):
    # Two optimizer steps per generation batch: the credit pass runs on steps 1 and 3 only.
    trainer, rec = make_trainer(
        OARTrainer, tiny_lm_dir, tmp_path, credit="entropy", max_steps=4, generation_batch_size=16
    )
    trainer.train()
    rows = [r for r in rec.logs if "loss" in r]
    assert [("credit/time_s" in r) for r in rows] == [True, False, True, False]
    assert [r["credit/overhead"] > 0 for r in rows] == [True, False, True, False]
    credit = sum(r["credit/time_s"] for r in rows if "credit/time_s" in r)
    steps = sum(r["step_time"] for r in rows)
    assert trainer.credit_overhead == pytest.approx(credit / steps, rel=1e-6)


class PassRecorder:
    """Records, for every forward of the first block's MLP, the mode the model runs in."""

    def __init__(self, model):
        self.block = model.model.layers[0]
        self.calls = []
        self.handle = self.block.mlp.register_forward_hook(self.hook)

    def hook(self, module, args, output):
        self.calls.append(
            {
                "training": module.training,
                "grad": torch.is_grad_enabled(),
                "autocast": torch.is_autocast_enabled("cpu"),
                "dtype": output.dtype,
                "checkpointed": "forward" in self.block.__dict__,
            }
        )


@pytest.mark.parametrize("credit", ["gradient", "perturbation"])
def test_bf16_autocast_and_activation_checkpointing(tiny_lm_dir, tmp_path, credit):
    """bf16=True on CPU (autocast) with activation checkpointing, as GPU users run: the credit pass runs under the
    same autocast, OAR-G's backward is checkpointed, and the weights are finite and reshaped."""
    trainer, rec = make_trainer(
        RecordingOARTrainer, tiny_lm_dir, tmp_path, credit=credit, bf16=True, **{ACTIVATION_CHECKPOINTING: True}
    )
    assert trainer.credit_config.activation_checkpointing
    assert trainer.credit_config.batch_size == trainer.args.per_device_train_batch_size
    recorder = PassRecorder(trainer.model)
    try:
        trainer.train()
    finally:
        recorder.handle.remove()
    credit_calls = [c for c in recorder.calls if not c["training"]]  # the credit pass runs in eval mode
    assert credit_calls and all(c["autocast"] and c["dtype"] == torch.bfloat16 for c in credit_calls)
    if credit == "gradient":  # the noisy forward (with grad) is checkpointed: recomputed once in the backward
        noisy = [c for c in credit_calls if c["grad"]]
        assert noisy and all(c["checkpointed"] for c in noisy)
    assert all(math.isfinite(r["loss"]) for r in rec.logs if "loss" in r)
    reshaped = 0
    for out, seq_adv, _, _ in trainer.credit_passes:
        assert out.stats["nonfinite_frac"] == 0.0 and torch.isfinite(out.advantages).all()
        assert not out.importance.requires_grad and not out.advantages.requires_grad
        for b in (out.segments.has_answer & (seq_adv != 0)).nonzero().flatten().tolist():
            weights = out.weights[b][out.segments.reasoning[b]]
            assert weights.std() > 0  # reshaped, not the uniform fallback
            assert weights.sum().item() == pytest.approx(weights.numel(), rel=1e-4)
            reshaped += 1
    assert reshaped >= 4, f"only {reshaped} completions with an answer and a non-zero advantage in 3 steps"
