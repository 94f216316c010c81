"""Every numeric setting of every command, checked before any model loads: one function per command.

    check_eval(cfg)                 ``oarl eval`` (an ``oarl.commands.eval.EvalConfig``)
    check_explain(args)             ``oarl explain`` (its parsed flags; the credit settings are CreditConfig's)
    check_train(train_args)         ``oarl train`` / ``oarl compare``: oarl's own settings (``oarl.jobs.TrainArgs``)
    check_grpo(config)              every GRPOConfig field a run uses, as given (before GRPOConfig's own checks,
                                    which divide by some of them): ``OARConfig.__post_init__`` calls it

Each raises ``oarl.errors.UsageError`` naming the flag, the value and what it must be: a value that means nothing
(``--temperature nan``, ``--top-p 2``, ``--learning_rate nan``, ``--num_generations 0``) is refused at once, not
after a model was loaded and samples were generated, nor accepted to give silent garbage. Any float setting must be
a finite number; the ranges below are those of the quantity (a probability in [0, 1], a count >= 1, a rate >= 0).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

from .errors import UsageError


def require(ok: bool, flag: str, value: Any, what: str) -> None:
    """UsageError ``"{flag} {value}: must be {what}"`` unless ``ok``."""
    if not ok:
        raise UsageError(f"{flag} {value}: must be {what}")


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_count(value: Any, least: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


SEED_RANGE = "an integer in [0, 2**32)"  # what NumPy's seeding (transformers' set_seed) accepts


def is_seed(value: Any) -> bool:
    return is_count(value, 0) and value < 2**32


# ------------------------------------------------------------------------------------------------ eval


def check_eval(cfg) -> None:
    """The settings of ``oarl eval`` (``EvalConfig``), by their flags."""
    require(is_count(cfg.n), "--n", cfg.n, "the number of samples per problem, >= 1")
    for k in cfg.k:
        require(is_count(k), "--k", k, "a list of integers >= 1 (pass@k; values above --n are dropped)")
    require(
        is_number(cfg.temperature) and cfg.temperature >= 0,
        "--temperature",
        cfg.temperature,
        "a number >= 0 (0: greedy)",
    )
    require(is_number(cfg.top_p) and 0 < cfg.top_p <= 1, "--top-p", cfg.top_p, "a probability in (0, 1] (1: off)")
    require(is_count(cfg.max_new_tokens), "--max-new-tokens", cfg.max_new_tokens, "an integer >= 1")
    require(is_count(cfg.batch_size), "--batch-size", cfg.batch_size, "an integer >= 1")
    require(cfg.limit is None or is_count(cfg.limit), "--limit", cfg.limit, "an integer >= 1 (problems per benchmark)")
    require(is_seed(cfg.seed), "--seed", cfg.seed, SEED_RANGE)
    require(
        is_number(cfg.verify_timeout_s) and cfg.verify_timeout_s > 0,
        "--verify-timeout",
        cfg.verify_timeout_s,
        "a number of seconds > 0",
    )
    for stop in cfg.stop:
        require(bool(stop), "--stop", repr(stop), "a non-empty string (an empty one would cut every completion)")
    require(cfg.backend in ("auto", "hf", "vllm"), "--backend", cfg.backend, "auto, hf or vllm")
    require(cfg.chat_template in ("auto", "on", "off"), "--chat-template", cfg.chat_template, "auto, on or off")
    check_dtype("--dtype", cfg.dtype)
    check_device("--device", cfg.device)


def check_dtype(flag: str, dtype: str | None) -> None:
    if dtype is None or dtype == "auto":
        return
    import torch  # lazy: the checks run at a command's start, before it needs torch (start-up time)

    require(
        isinstance(getattr(torch, str(dtype), None), torch.dtype),
        flag,
        dtype,
        "'auto' or a torch dtype such as float32, bfloat16, float16",
    )


def check_device(flag: str, device: str | None) -> None:
    if device is None:
        return
    import torch  # lazy: the checks run at a command's start, before it needs torch (start-up time)

    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        raise UsageError(f"{flag} {device}: not a device (cpu, cuda, cuda:1, mps, ...)") from None
    require(kind != "cuda" or torch.cuda.is_available(), flag, device, "a device this machine has: it has no CUDA GPU")


# ------------------------------------------------------------------------------------------------ explain


def check_explain(args) -> None:
    """The settings of ``oarl explain`` that are not CreditConfig's (``CreditConfig`` checks those)."""
    require(args.n is None or is_count(args.n), "--n", args.n, "an integer >= 1")
    require(
        is_number(args.temperature) and args.temperature >= 0,
        "--temperature",
        args.temperature,
        "a number >= 0 (0: greedy)",
    )
    require(is_count(args.max_new_tokens), "--max-new-tokens", args.max_new_tokens, "an integer >= 1")
    require(is_seed(args.seed), "--seed", args.seed, SEED_RANGE)
    require(
        is_number(args.advantage) and args.advantage != 0,
        "--advantage",
        args.advantage,
        "a finite nonzero number (a zero advantage skips the credit computation)",
    )
    require(is_count(args.batch_size), "--batch-size", args.batch_size, "an integer >= 1")
    require(args.png is None or is_count(args.png), "--png", args.png, "an integer N >= 1")
    check_device("--device", args.device)


# ------------------------------------------------------------------------------------------------ train


def check_train(train_args) -> None:
    """oarl's own settings of ``oarl train`` (``TrainArgs``)."""
    require(
        train_args.train_size is None or is_count(train_args.train_size),
        "--train_size",
        train_args.train_size,
        "the number of training problems, >= 1 (leave it out for the default)",
    )
    require(
        train_args.sft_steps is None or is_count(train_args.sft_steps, 0),
        "--sft_steps",
        train_args.sft_steps,
        "an integer >= 0 (0: no warm start)",
    )
    require(
        train_args.eval_size is None or is_count(train_args.eval_size, 0),
        "--eval_size",
        train_args.eval_size,
        "an integer >= 0 (0: no held-out evaluation)",
    )
    require(
        is_number(train_args.eval_fraction) and 0 < train_args.eval_fraction < 1,
        "--eval_fraction",
        train_args.eval_fraction,
        "a fraction in (0, 1)",
    )
    require(
        train_args.eval_samples is None or is_count(train_args.eval_samples),
        "--eval_samples",
        train_args.eval_samples,
        "an integer >= 1",
    )
    require(
        is_count(train_args.eval_every, 0),
        "--eval_every",
        train_args.eval_every,
        "an integer >= 0 (0: only before and after training)",
    )


# GRPOConfig (and TrainingArguments) fields a run reads, with what they must be; None is always allowed where the
# field's default is None. Floats must also be finite (every float field, listed here or not).
COUNTS = {  # integers >= the value
    "per_device_train_batch_size": 1,
    "per_device_eval_batch_size": 1,
    "gradient_accumulation_steps": 1,
    "num_generations": 2,
    "num_generations_eval": 1,
    "generation_batch_size": 1,
    "steps_per_generation": 1,
    "num_iterations": 1,
    "max_completion_length": 1,
    "dataloader_num_workers": 0,
    "save_total_limit": 0,
    "top_k": 0,
    "vllm_tensor_parallel_size": 1,
    "num_completions_to_print": 0,
    "max_tool_calling_iterations": 1,
}
RANGES = {  # (low, high, low included, high included, what)
    "learning_rate": (0, math.inf, True, False, "a number >= 0"),
    "weight_decay": (0, math.inf, True, False, "a number >= 0"),
    "warmup_steps": (0, math.inf, True, False, "a number >= 0 (steps, or a fraction of them below 1)"),
    "adam_beta1": (0, 1, True, False, "in [0, 1)"),
    "adam_beta2": (0, 1, True, False, "in [0, 1)"),
    "adam_epsilon": (0, math.inf, True, False, "a number >= 0"),
    "max_grad_norm": (0, math.inf, True, False, "a number >= 0 (0: no clipping)"),
    "num_train_epochs": (0, math.inf, False, False, "a number > 0"),
    "label_smoothing_factor": (0, 1, True, False, "in [0, 1)"),
    "logging_steps": (0, math.inf, False, False, "a number > 0 (steps, or a fraction of them below 1)"),
    "save_steps": (0, math.inf, False, False, "a number > 0 (steps, or a fraction of them below 1)"),
    "eval_steps": (0, math.inf, False, False, "a number > 0"),
    "temperature": (0, math.inf, False, False, "a number > 0 (sampling temperature)"),
    "top_p": (0, 1, False, True, "a probability in (0, 1]"),
    "min_p": (0, 1, True, True, "a probability in [0, 1]"),
    "repetition_penalty": (0, math.inf, False, False, "a number > 0 (1: none)"),
    "beta": (0, math.inf, True, False, "a number >= 0 (0: no KL term)"),
    "epsilon": (0, math.inf, True, False, "a number >= 0"),
    "epsilon_high": (0, math.inf, True, False, "a number >= 0"),
    "delta": (0, math.inf, False, False, "a number > 0"),
    "vllm_gpu_memory_utilization": (0, 1, False, True, "a fraction in (0, 1]"),
    "top_entropy_quantile": (0, 1, True, True, "a fraction in [0, 1]"),
}


def _number_kind(f: dataclasses.Field) -> type | None:
    """int or float for a field declared ``int``, ``float`` or either ``| None``; None for any other."""
    text = re.sub(r"<class '(\w+)'>", r"\1", str(f.type)).replace("typing.", "")
    text = re.sub(r"^Optional\[(\w+)\]$", r"\1 | None", text).removesuffix(" | None")
    return {"int": int, "float": float}.get(text)


def check_grpo(config) -> None:
    """Every GRPOConfig (TrainingArguments) number of ``config`` as given: floats finite, then COUNTS and RANGES,
    and the seeds. Called before GRPOConfig's own ``__post_init__``, which divides by some of them."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name, None)
        kind = _number_kind(f)
        if kind is not None and value is not None:  # a YAML value is not converted: [1, 2] or "fast" would stay
            numeric = isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
            require(numeric, f"--{f.name}", repr(value), "an integer" if kind is int else "a number")
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if isinstance(v, float):
                require(math.isfinite(v), f"--{f.name}", value, "a finite number")
    for name, least in COUNTS.items():
        value = getattr(config, name, None)
        require(value is None or is_count(value, least), f"--{name}", value, f"an integer >= {least}")
    for name, (low, high, with_low, with_high, what) in RANGES.items():
        value = getattr(config, name, None)
        if value is None or not is_number(value):
            continue
        above = value > low or with_low and value == low
        below = value < high or with_high and value == high
        require(above and below, f"--{name}", value, what)
    for name in ("seed", "data_seed"):
        value = getattr(config, name, None)
        require(value is None or is_seed(value), f"--{name}", value, SEED_RANGE)
