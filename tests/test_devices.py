"""GPU by default: one decision (oarl.devices) for every path, and a warm start that leaves the process's device
to the RL trainer that follows it.

The decision logic is checked with torch.cuda.is_available() reported True: only the settings each path builds, never
a run (there is no GPU here). The run that broke on a GPU (a warm start on one device, then the RL trainer in the same
process) runs for real on the CPU, with the warm start's device choice different from the trainer's.
"""

from __future__ import annotations

import json

import pytest
import torch
from accelerate.state import PartialState
from safetensors import safe_open

from oarl import OARConfig, OARTrainer
from oarl.data import arithmetic
from oarl.devices import ACTIVATION_CHECKPOINTING, cpu_has_bf16, default_device, gpu_available, mixed_precision
from oarl.jobs import device_defaults
from oarl.models import warmstart
from oarl.models.tiny import load_tiny

SMALL_WARM_START = {
    "task": {},
    "model": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64},
    "steps": 3,
    "batch_size": 4,
    "learning_rate": 1e-3,
    "seed": 0,
}


@pytest.fixture(params=[(True, True), (True, False), (False, False)], ids=["gpu-bf16", "gpu-no-bf16", "no-gpu"])
def reported(request, monkeypatch):
    """torch reports a GPU (with or without bf16) or none: (gpu, bf16)."""
    gpu, bf16 = request.param
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    return gpu, bf16


def test_the_decision(reported):
    gpu, bf16 = reported
    assert gpu_available() is gpu and not gpu_available(use_cpu=True)
    assert default_device() == torch.device("cuda" if gpu else "cpu")
    assert default_device(use_cpu=True) == torch.device("cpu")
    expected = (
        {"use_cpu": False, "bf16": bf16, "fp16": False} if gpu else {"use_cpu": True, "bf16": False, "fp16": False}
    )
    assert mixed_precision() == expected
    assert mixed_precision(use_cpu=True) == {"use_cpu": True, "bf16": False, "fp16": False}
    assert mixed_precision(use_cpu=True, cpu_bf16=True)["bf16"]  # the SmolLM2 job on a CPU with bf16


def test_what_each_path_builds(reported, tmp_path):
    gpu, bf16 = reported
    # oarl train (RL): the GPU keeps GRPOConfig's activation checkpointing; the CPU turns it off
    rl = device_defaults()
    assert rl == (
        {"use_cpu": False, "bf16": bf16, "fp16": False}
        if gpu
        else {"use_cpu": True, "bf16": False, "fp16": False, ACTIVATION_CHECKPOINTING: False}
    )
    assert device_defaults(use_cpu=True)["use_cpu"] and not device_defaults(use_cpu=True)["bf16"]
    # both warm starts (the tiny model's and SmolLM2's share sft_kwargs): no activation checkpointing anywhere
    sft = warmstart.sft_kwargs(SMALL_WARM_START, tmp_path, 10, warmup_steps=1, max_length=64)
    assert (sft["use_cpu"], sft["bf16"], sft["fp16"], sft[ACTIVATION_CHECKPOINTING]) == (
        not gpu,
        gpu and bf16,
        False,
        False,
    )
    forced = warmstart.sft_kwargs(SMALL_WARM_START, tmp_path, 10, warmup_steps=1, max_length=64, use_cpu=True)
    assert forced["use_cpu"] and not forced["bf16"]
    # oarl eval's HF backend (auto: vLLM only with a GPU) and oarl explain take default_device(); OARConfig's bf16
    from oarl.generation import use_vllm, vllm_installed

    assert use_vllm("auto") is (gpu and vllm_installed())


def test_train_defaults_on_this_machine():
    """`oarl train` with no device flag: the CPU here (no GPU), float32; --use_cpu true keeps the CPU settings."""
    from oarl.commands.train import parse_args

    _, config = parse_args(["--max_steps", "2"])
    expected = mixed_precision()
    assert (config.use_cpu, config.bf16) == (expected["use_cpu"], expected["bf16"])
    _, config = parse_args(["--use_cpu", "true"])
    assert config.use_cpu and not config.bf16 and not getattr(config, ACTIVATION_CHECKPOINTING)
    _, config = parse_args(["--use_cpu"])  # a bare flag means true, as in HfArgumentParser
    assert config.use_cpu


def test_oarconfig_picks_a_precision_the_device_runs(tmp_path):
    """TRL's bf16 default, on a machine without a GPU (or with an older one), is float32 instead of an error."""
    config = OARConfig(output_dir=str(tmp_path), report_to="none")
    assert config.bf16 == mixed_precision()["bf16"]
    assert OARConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True).bf16  # use_cpu: TRL's own default
    assert not OARConfig(output_dir=str(tmp_path), report_to="none", bf16=False).bf16


def test_cpu_has_bf16_is_a_bool():
    assert isinstance(cpu_has_bf16(), bool)


@pytest.mark.parametrize("rl_on_cpu", [False, True], ids=["warm-start-forced-cpu", "warm-start-default"])
def test_warm_start_then_rl_trainer_in_one_process(tmp_path, monkeypatch, rl_on_cpu):
    """`oarl train` parses the RL config, then warm-starts, then trains, in one process. A warm start on another
    device (forced to the CPU, here; on a GPU machine, the CPU warm start of issue 21) must leave the process's
    accelerate state to the RL config: before the fix, the RL trainer's accelerator kept the warm start's device."""
    monkeypatch.setenv("OARL_CACHE", str(tmp_path / "cache"))
    config = OARConfig(
        output_dir=str(tmp_path / "run"),
        use_cpu=rl_on_cpu,
        bf16=False,
        **{ACTIVATION_CHECKPOINTING: False},
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=12,
        max_steps=1,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        beta=0.0,
        dataloader_num_workers=0,
        disable_tqdm=True,
        credit="gradient",
    )
    assert PartialState()._cpu is rl_on_cpu
    path = warmstart.warm_start(SMALL_WARM_START, use_cpu=not rl_on_cpu, progress=False)
    assert PartialState()._cpu is rl_on_cpu  # the RL config's process state, not the warm start's

    # the cached warm start: float32 weights, read from disk onto any device
    with safe_open(f"{path}/model.safetensors", framework="pt", device="cpu") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}
    assert json.load(open(f"{path}/warmstart.json"))["config"] == SMALL_WARM_START

    model, tokenizer = load_tiny(path)
    rows = arithmetic.problems("train", 4, seed=0)
    trainer = OARTrainer(
        model=model,
        reward_funcs=[arithmetic.reward],
        args=config,
        processing_class=tokenizer,
        train_dataset=arithmetic.as_dataset([{"prompt": r["prompt"], "answer": r["answer"]} for r in rows]),
    )
    assert trainer.accelerator.state._cpu is rl_on_cpu
    assert trainer.accelerator.device == config.device == next(trainer.model.parameters()).device
    trainer.train()
    assert trainer.state.global_step == 1


def test_portable_weights():
    from oarl.models.tiny import build_tiny

    model = build_tiny({"hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32})[0]
    model = warmstart._portable(model.to(torch.bfloat16))
    assert {(p.dtype, p.device.type) for p in model.parameters()} == {(torch.float32, "cpu")}
