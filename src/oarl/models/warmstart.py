"""Supervised warm starts, cached on disk: the tiny model on (partly flawed) arithmetic demonstrations, and
SmolLM2-135M-Instruct on worked solutions of word problems.

    path = warm_start(DEFAULT_REGIME.warmstart_config())   # trains once, then returns the cached directory
    model, tokenizer = load_tiny(path)
    path = warm_start(SMOLLM2_REGIME.warmstart_config())   # {"base": "smollm2-135m", ...}
    model, tokenizer = load_model(path)

The cache key is a hash of the config (plus a format version), under ``$OARL_CACHE/warmstart/<hash>`` or
``~/.cache/oarl/warmstart/<hash>``; a finished directory holds ``warmstart.json`` (the config, the
training time and the final loss) next to the Hugging Face model files. Training writes to a temporary
sibling directory and renames it when done, so an interrupted run leaves no half-written cache entry.

Training is TRL's ``SFTTrainer`` on prompt-completion pairs (loss on the completion tokens only, EOS
appended by TRL), gradient checkpointing off, on the device ``oarl.devices`` picks: a GPU when there is one (bf16
mixed precision where it has bf16), else the CPU in float32; ``use_cpu=True`` forces the CPU. The model is saved
the same way wherever it trained: float32 weights, written from the CPU, that load on any device. The trainer
leaves the process's accelerate state as it found it (``oarl.devices.keep_process_state``), so that the RL trainer
that follows in the same process runs where its own arguments say. For SmolLM2 (``cfg["base"]``) the pairs are
conversational (the user message of ``oarl.data.word_problems.make_prompt``, the worked solution as the
assistant's reply), so that the chat template is what the model learns under, as RL and evaluation ask. Both
show a progress bar over their steps (with the loss), after a line saying that the warm start runs once and
where it is cached.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import PrinterCallback, TrainerCallback

from oarl.data.arithmetic import DEFAULT_REGIME, ArithmeticTask, as_dataset, demos
from oarl.data.calculator import tool_conversations
from oarl.data.word_problems import make_prompt, problems
from oarl.devices import ACTIVATION_CHECKPOINTING, default_device, keep_process_state, mixed_precision
from oarl.models.smollm2 import cache_dir, load_smollm2
from oarl.models.tiny import build_tiny, save_tiny, with_tool_calls

# Bump when the training code changes what a config produces. 2: the tokenizer is saved as a Qwen2Tokenizer
# (AutoTokenizer loads it with the ids it was trained with).
CACHE_VERSION = 2

logger = logging.getLogger(__name__)


def cache_root() -> Path:
    """``$OARL_CACHE`` or ``~/.cache/oarl``: the one cache root of oarl (``oarl.models.smollm2.cache_dir``)."""
    return cache_dir()


def config_hash(cfg: dict) -> str:
    blob = json.dumps({"version": CACHE_VERSION, **cfg}, sort_keys=True, default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_path(cfg: dict) -> Path:
    """Where the warm start of ``cfg`` lives (whether or not it exists yet)."""
    return cache_root() / "warmstart" / config_hash(cfg)


def is_cached(cfg: dict) -> bool:
    return (cache_path(cfg) / "warmstart.json").is_file()


def default_config() -> dict:
    return DEFAULT_REGIME.warmstart_config()


def warm_start(
    cfg: dict | None = None, *, force: bool = False, log_every: int = 50, progress: bool = True, use_cpu: bool = False
) -> str:
    """Path of the warm-started model directory for ``cfg`` (see ``Regime.warmstart_config``): trained
    on first use, loaded from the cache afterwards. ``cfg`` keys: ``task`` (ArithmeticTask fields),
    ``model`` (TinyConfig fields), ``steps``, ``batch_size``, ``learning_rate``, ``seed``; optional
    ``warmup_steps``, ``weight_decay``, ``num_threads``, ``tools`` ("calculator": the calculator task's tool-calling
    conversations, ``oarl.data.calculator``, in the tiny model's tool chat format, trained on the assistant's
    tokens only). ``progress``: a bar over the steps. ``use_cpu``: train on the CPU even where there is a GPU (the
    cache entry is the same either way)."""
    cfg = default_config() if cfg is None else cfg
    if cfg.get("tools") not in (None, "calculator"):
        raise ValueError(f"warm start: tools must be 'calculator' or absent, got {cfg['tools']!r}")
    out = cache_path(cfg)
    if is_cached(cfg) and not force:
        return str(out)
    logger.info(
        "warm start of %s: %d supervised steps on %s; this runs once, later runs load it from %s",
        cfg.get("base", "the tiny model"),
        int(cfg["steps"]),
        default_device(use_cpu).type,
        out,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    try:
        train = _train_smollm2 if cfg.get("base") == "smollm2-135m" else _train
        with keep_process_state():
            info = train(cfg, tmp, log_every=log_every, progress=progress, use_cpu=use_cpu)
        with open(tmp / "warmstart.json", "w") as f:
            json.dump({"config": cfg, "hash": out.name, **info}, f, indent=2, default=list)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return str(out)


def _sft_config(
    cfg: dict, out_dir: Path, log_every: int, *, warmup_steps: int, max_length: int, use_cpu: bool, **extra
):
    """The SFTConfig of a warm start (see ``sft_kwargs``); ``extra``: more SFTConfig arguments."""
    # lazy: TRL (3-5 s) loads when a warm start trains, not when oarl.models.loading (which imports this module) loads
    # a model or finds its warm start cached
    from trl import SFTConfig

    return SFTConfig(
        **sft_kwargs(cfg, out_dir, log_every, warmup_steps=warmup_steps, max_length=max_length, use_cpu=use_cpu),
        **extra,
    )


def sft_kwargs(
    cfg: dict, out_dir: Path, log_every: int, *, warmup_steps: int, max_length: int, use_cpu: bool = False
) -> dict:
    """SFTConfig's arguments for a warm start: cosine lr with warm-up, no checkpoints, no activation
    checkpointing, on the GPU (bf16 where it has bf16) or the CPU (float32) as ``oarl.devices.mixed_precision``
    decides."""
    seed = int(cfg.get("seed", 0))
    return dict(
        output_dir=str(out_dir / "_trainer"),
        max_steps=int(cfg["steps"]),
        per_device_train_batch_size=int(cfg["batch_size"]),
        learning_rate=float(cfg["learning_rate"]),
        lr_scheduler_type="cosine",
        warmup_steps=int(cfg.get("warmup_steps", warmup_steps)),
        weight_decay=float(cfg.get("weight_decay", 0.0)),
        max_length=max_length,
        packing=False,
        **mixed_precision(use_cpu),
        **{ACTIVATION_CHECKPOINTING: False},
        report_to="none",
        logging_steps=log_every,
        save_strategy="no",
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=True,  # _sft_trainer's bar instead
    )


def _sft_trainer(model, args, train, tokenizer, progress: bool):
    """TRL's SFTTrainer with one progress bar over the steps, the loss on it (instead of printed log lines)."""
    from trl import SFTTrainer  # lazy: as in _sft_config

    class Bar(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.bar = tqdm(
                total=state.max_steps, desc="warm start (once, then cached)", dynamic_ncols=True, disable=not progress
            )

        def on_step_end(self, args, state, control, **kwargs):
            self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.bar.set_postfix(loss=f"{logs['loss']:.3f}")

        def on_train_end(self, args, state, control, **kwargs):
            self.bar.close()

    trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer, callbacks=[Bar()])
    trainer.remove_callback(PrinterCallback)  # the bar shows the loss
    return trainer


def _portable(model):
    """The model as the cache keeps it wherever it trained: float32 weights on the CPU."""
    return model.to(device="cpu", dtype=torch.float32)


def _train(cfg: dict, out_dir: Path, log_every: int, progress: bool, use_cpu: bool = False) -> dict:
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg["num_threads"]))
    task_kw = dict(cfg.get("task", {}))
    for k in ("steps", "hard_steps"):
        if k in task_kw:
            task_kw[k] = tuple(task_kw[k])
    task = ArithmeticTask(**task_kw)
    seed = int(cfg.get("seed", 0))
    steps, batch = int(cfg["steps"]), int(cfg["batch_size"])

    model, tokenizer = build_tiny({**cfg.get("model", {}), "seed": seed})
    if cfg.get("tools") == "calculator":  # conversations with a tool call: loss on the assistant's tokens only
        with_tool_calls(tokenizer)
        rows = tool_conversations(steps * batch, seed=seed, task=task)
        train, extra = as_dataset([{"messages": r["messages"]} for r in rows]), {"assistant_only_loss": True}
    else:
        rows = demos(steps * batch, seed=seed, task=task)
        train, extra = as_dataset([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]), {}

    args = _sft_config(
        cfg, out_dir, log_every, warmup_steps=max(1, steps // 20), max_length=256, use_cpu=use_cpu, **extra
    )
    trainer = _sft_trainer(model, args, train, tokenizer, progress)
    t0 = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - t0
    save_tiny(_portable(trainer.model), tokenizer, out_dir)
    shutil.rmtree(out_dir / "_trainer", ignore_errors=True)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "train_seconds": seconds,
        "final_loss": losses[-1] if losses else result.training_loss,
        "loss_history": losses,
        "num_demos": len(rows),
        "flawed_fraction": sum(r["flawed"] for r in rows) / max(1, len(rows)),
    }


def _train_smollm2(cfg: dict, out_dir: Path, log_every: int, progress: bool, use_cpu: bool = False) -> dict:
    """SmolLM2-135M-Instruct fine-tuned on ``steps x batch_size`` worked solutions of word problems (``task``:
    :func:`oarl.data.word_problems.problems` keyword arguments), with a progress bar from the first step."""
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg["num_threads"]))
    task = {k: tuple(v) if k == "steps" else v for k, v in cfg.get("task", {}).items()}
    seed, steps, batch = int(cfg.get("seed", 0)), int(cfg["steps"]), int(cfg["batch_size"])
    model, tokenizer = load_smollm2()
    model.train()
    tokenizer.padding_side = "right"  # training pads on the right; load_model's left padding is for generation
    rows = problems("train", steps * batch, seed=seed + 1_000_003, **task)  # not the RL stream (seed + 0)
    train = Dataset.from_list(
        [
            {"prompt": make_prompt(r["question"]), "completion": [{"role": "assistant", "content": r["solution"]}]}
            for r in rows
        ]
    )
    args = _sft_config(cfg, out_dir, log_every, warmup_steps=max(1, steps // 10), max_length=512, use_cpu=use_cpu)
    trainer = _sft_trainer(model, args, train, tokenizer, progress)
    t0 = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - t0
    _portable(trainer.model).save_pretrained(out_dir)
    tokenizer.padding_side = "left"
    tokenizer.save_pretrained(out_dir)
    shutil.rmtree(out_dir / "_trainer", ignore_errors=True)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "train_seconds": seconds,
        "final_loss": losses[-1] if losses else result.training_loss,
        "loss_history": losses,
        "num_demos": len(rows),
    }
