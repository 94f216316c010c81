"""``oarl train``: one OAR (or GRPO) training run into a run directory.

With no arguments it runs the embedded default: a tiny transformer warm-started on multi-step arithmetic
(cached), then OAR-G reinforcement learning and a held-out evaluation, on a laptop CPU with no network.
Every OARConfig/GRPOConfig field is a ``--flag`` or a YAML key (``--config file.yaml``), the TRL way.

The run directory ``runs/<name>/`` holds ``config.yaml`` (re-runnable with ``oarl train --config``),
``metrics.jsonl`` (one row per logged step), ``plots/*.png``, TRL checkpoints (``checkpoint-*``),
``final_model/`` and ``summary.json``. ``oarl train --resume runs/<name>`` continues from the last checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

EMBEDDED = ("tiny", "arithmetic")  # (model, dataset) of the embedded default job
SMOLLM2 = ("smollm2-135m", "word-problems")  # (model, dataset) of the SmolLM2 job: its default dataset and regime
AUTO_DIR = "<auto>"  # output_dir placeholder: the run directory is named after the run
# Per-run values, and fields that GRPOConfig derives from others (writing them too would conflict on reload;
# gradient_checkpointing is derived from activation_checkpointing since transformers 5.20, see ACTIVATION_CHECKPOINTING).
SKIPPED_IN_CONFIG = ("resume", "output_dir", "run_name", "logging_dir", "steps_per_generation", "gradient_checkpointing")


@dataclass
class TrainArgs:
    """What to train on, and where the run goes (the RL settings are OARConfig's)."""

    model: str = field(default="tiny", metadata={"help": "'tiny' (embedded, warm-started on arithmetic), "
                                                  "'smollm2-135m' (offline GGUF), a Hugging Face name or a directory."})
    dataset: str = field(default="arithmetic", metadata={"help": "'arithmetic' (embedded; the default of 'tiny'), "
                                                         "'word-problems' (offline; the default of 'smollm2-135m'), "
                                                         "'gsm-symbolic' (reasoning-gym, offline), 'gsm8k', 'math' "
                                                         "(hub) or a .jsonl file."})
    task: str = field(default="tree", metadata={"help": "Form of the embedded arithmetic task: 'tree' (pairs combined "
                                                "in the answer) or 'chain' (one written step per operation).",
                                                "choices": ["tree", "chain"]})
    problem_field: str = field(default="problem", metadata={"help": "Problem field of a JSONL dataset."})
    answer_field: str = field(default="answer", metadata={"help": "Gold-answer field of a JSONL dataset."})
    train_size: int | None = field(default=None, metadata={"help": "Number of training problems (default: "
                                                           "the embedded regime's, or the whole dataset)."})
    runs_dir: str = field(default="runs", metadata={"help": "Parent folder of run directories named "
                                                   "<credit>-<model>-<time> (unless --output_dir names the run directory)."})
    resume: str | None = field(default=None, metadata={"help": "A run directory to continue from its last checkpoint."})
    sft_steps: int | None = field(default=None, metadata={"help": "Supervised warm-start steps of the tiny model, "
                                                             "or of smollm2-135m on word problems (0: none) "
                                                             "(default: the regime's). Cached by config."})
    eval_size: int | None = field(default=None, metadata={"help": "Held-out problems per split (default: regime's; "
                                                          "0 disables held-out evaluation)."})
    eval_samples: int | None = field(default=None, metadata={"help": "Samples per held-out problem for avg@n."})
    eval_every: int = field(default=0, metadata={"help": "Also evaluate held-out accuracy every N steps (0: only "
                                                 "before and after training)."})


# ------------------------------------------------------------------------------------------------ config


def _cpu_defaults() -> dict:
    import torch

    if torch.cuda.is_available():
        return {}
    from .trainer import ACTIVATION_CHECKPOINTING

    return {"bf16": False, "fp16": False, ACTIVATION_CHECKPOINTING: False, "use_cpu": True}


def _regime(task: str = "tree"):
    from .data.arithmetic import REGIMES

    return REGIMES[task]


def _smollm2_defaults() -> dict:
    """The SmolLM2 job's settings (oarl.data.word_problems.SMOLLM2_REGIME; they replace GRPOConfig's defaults,
    not the user's flags)."""
    from .data.word_problems import SMOLLM2_REGIME as regime

    return {
        **regime.grpo_kwargs(),
        "credit": "gradient",
        # a credit pass holds no more rows than a training micro-batch; OAR-P perturbs whole sentences (token
        # by token it costs ~50 training steps per 256-token completion on this model: experiments/SMOLLM2.md)
        "credit_batch_size": regime.micro_batch_size,
        "credit_span": "sentence",
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": max(1, regime.rl_steps // 4),
        "save_total_limit": 1,
        "report_to": "none",
        "dataloader_num_workers": 0,
    }


def _embedded_defaults(regime) -> dict:
    """The embedded job's RL settings (they replace GRPOConfig's defaults, not the user's flags)."""
    return {
        **regime.grpo_kwargs(),
        "credit": "gradient",
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": max(1, regime.rl_steps // 4),
        "save_total_limit": 2,
        "report_to": "none",
        "dataloader_num_workers": 0,
    }


def parse_args(argv: list[str] | None = None):
    """(TrainArgs, OARConfig) from flags and an optional ``--config`` YAML (flags win over YAML, YAML over the
    embedded defaults). ``--resume RUN`` re-reads ``RUN/config.yaml``."""
    from trl import TrlParser

    from .trainer import OARConfig

    argv = list(argv or [])
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    pre.add_argument("--resume")
    pre.add_argument("--model")
    pre.add_argument("--dataset")
    known, _ = pre.parse_known_args(argv)
    if known.resume and not known.config:
        config = Path(known.resume) / "config.yaml"
        if not config.is_file():
            raise SystemExit(f"--resume {known.resume}: no config.yaml there; is it a run directory of `oarl train`?")
        argv = ["--config", str(config), *argv]
        known.config = str(config)
    from_yaml = yaml.safe_load(Path(known.config).read_text()) if known.config else {}
    model = known.model or from_yaml.get("model", "tiny")
    dataset = known.dataset or from_yaml.get("dataset", SMOLLM2[1] if model == SMOLLM2[0] else EMBEDDED[1])

    parser = TrlParser((TrainArgs, OARConfig), prog="oarl train")
    defaults = {"output_dir": AUTO_DIR, **_cpu_defaults(), "report_to": "none", "logging_steps": 1}
    if (model, dataset) == EMBEDDED:
        defaults.update(_embedded_defaults(_regime()))
    elif (model, dataset) == SMOLLM2:
        defaults.update(_smollm2_defaults(), dataset=dataset)
    parser.set_defaults(**defaults)
    train_args, config = parser.parse_args_and_config(argv)
    return train_args, config


def resolved_config(train_args: TrainArgs, config, keep: tuple[str, ...] = ()) -> dict:
    """The run's settings as a YAML-able dict: every TrainArgs field, the credit settings, and the OARConfig
    fields that differ from their dataclass defaults (so that the file re-loads with ``oarl train --config``
    into the same settings). ``keep``: fields to write even at their dataclass default (the job's own defaults)."""
    from .trainer import ACTIVATION_CHECKPOINTING

    skipped = set(SKIPPED_IN_CONFIG) - {ACTIVATION_CHECKPOINTING}
    out = {k: v for k, v in dataclasses.asdict(train_args).items() if k not in skipped}
    defaults = type(config).__dataclass_fields__
    for name, f in defaults.items():
        if not f.init or name.startswith("_") or name in skipped:
            continue
        value = getattr(config, name)
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
        if hasattr(value, "value"):  # enums (lr_scheduler_type, save_strategy, ...)
            value = value.value
        is_default = value == default or (hasattr(default, "value") and value == default.value)
        if is_default and not name.startswith("credit") and name not in keep:
            continue
        if isinstance(value, (str, int, float, bool, type(None))) or (
            isinstance(value, (list, dict)) and _yamlable(value)
        ):
            out[name] = value
    return out


def _yamlable(value) -> bool:
    try:
        yaml.safe_dump(value)
        return True
    except yaml.YAMLError:
        return False


# ------------------------------------------------------------------------------------------------ callbacks


def _callbacks(run_dir: Path, total_steps: int, start_step: int, heldout):
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    class MetricsWriter(TrainerCallback):
        """Appends each logged row (with its step) to metrics.jsonl."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                row = {"step": state.global_step, **{k: v for k, v in logs.items() if _jsonable(v)}}
                with open(run_dir / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")

    class Progress(TrainerCallback):
        """One bar with the live reward, accuracy and credit overhead."""

        def __init__(self):
            self.bar = None
            self.shown = {}  # the last value of each number: steps that reuse a generation batch log no reward
            self.credit_s = self.step_s = 0.0  # running totals for the credit overhead of the run so far

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.bar = tqdm(total=total_steps, initial=start_step, desc="oarl train", dynamic_ncols=True)

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.bar is None or not logs:
                return
            for key, label in (("reward", "reward"), ("rewards/accuracy/mean", "acc"), ("rewards/reward/mean", "acc")):
                if isinstance(logs.get(key), (int, float)):
                    self.shown[label] = f"{logs[key]:.3f}"
            self.credit_s += logs.get("credit/time_s") or 0.0
            self.step_s += logs.get("step_time") or 0.0
            if self.credit_s > 0 and self.step_s > 0:
                self.shown["credit"] = f"{self.credit_s / self.step_s:.0%}"
            self.bar.set_postfix(self.shown)

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()

    class HeldoutEval(TrainerCallback):
        def __init__(self, every):
            self.every = every

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if self.every and state.global_step % self.every == 0 and state.global_step < state.max_steps:
                numbers = heldout(model)
                if state.is_world_process_zero and numbers:
                    with open(run_dir / "metrics.jsonl", "a") as f:
                        f.write(json.dumps({"step": state.global_step, **_heldout_row(numbers)}) + "\n")

    return MetricsWriter, Progress, HeldoutEval


def _jsonable(v) -> bool:
    return isinstance(v, (str, int, bool, type(None))) or (isinstance(v, float) and math.isfinite(v))


def _heldout_row(numbers: dict) -> dict:
    return {f"heldout/{split}": r["avg"] for split, r in numbers.items()}


# ------------------------------------------------------------------------------------------------ the job


def _load_model_and_data(train_args: TrainArgs, config):
    """(model, tokenizer, train dataset, held-out splits as {name: rows}, prompt template for them, rewards)."""
    from . import rewards

    if (train_args.model, train_args.dataset) == EMBEDDED:
        from .data import arithmetic
        from .models.tiny import load_tiny
        from .models.warmstart import warm_start

        regime = _regime(train_args.task)
        ws = regime.warmstart_config()
        if train_args.sft_steps is not None:
            ws["steps"] = train_args.sft_steps
        model, tokenizer = load_tiny(warm_start(ws))
        n_train = train_args.train_size or regime.n_rl_prompts
        train = arithmetic.as_dataset(
            [{"prompt": r["prompt"], "answer": r["answer"]} for r in arithmetic.problems("train", n_train, seed=regime.seed,
                                                                                         task=regime.task)]
        )
        n_eval = regime.eval_problems if train_args.eval_size is None else train_args.eval_size
        heldout = {}
        if n_eval:
            heldout = {
                "test": arithmetic.problems("test", n_eval, seed=regime.seed, task=regime.task),
                "hard": arithmetic.problems("hard", min(n_eval, regime.hard_eval_problems), seed=regime.seed,
                                            task=regime.task),
            }
        heldout = {k: [{"problem": r["prompt"], "answer": r["answer"]} for r in v] for k, v in heldout.items()}
        return model, tokenizer, train, heldout, "{problem}", [arithmetic.reward]

    from .data import load_train_dataset
    from .models.loading import load_model

    if (train_args.model, train_args.dataset) == SMOLLM2:
        model, tokenizer = load_model(_smollm2_warm_start(train_args.sft_steps))
    else:
        model, tokenizer = load_model(train_args.model)
    conversational = getattr(tokenizer, "chat_template", None) is not None
    kw = dict(size=train_args.train_size, seed=config.seed, problem_field=train_args.problem_field,
              answer_field=train_args.answer_field, conversational=conversational)
    train = load_train_dataset(train_args.dataset, split="train", **kw)
    heldout = {}
    if train_args.dataset == "word-problems":
        from .data.word_problems import INSTRUCTION, SMOLLM2_REGIME, problems

        n_eval = SMOLLM2_REGIME.eval_problems if train_args.eval_size is None else train_args.eval_size
        rows = problems("test", n_eval, seed=SMOLLM2_REGIME.seed, **SMOLLM2_REGIME.task_kwargs())
        heldout = {"test": [{"problem": r["question"], "answer": r["answer"]} for r in rows]} if n_eval else {}
        # asked the way training asks: the question and the instruction in one user message
        return model, tokenizer, train, heldout, "{problem}\n" + INSTRUCTION, [rewards.accuracy]
    if train_args.dataset == "gsm-symbolic" and (train_args.eval_size or 0) > 0:
        test = load_train_dataset("gsm-symbolic", **{**kw, "split": "test", "size": train_args.eval_size,
                                                     "conversational": False})
        heldout = {"test": [{"problem": r["prompt"], "answer": r["answer"]} for r in test]}
    return model, tokenizer, train, heldout, None, [rewards.accuracy, rewards.format]


def _smollm2_warm_start(sft_steps: int | None) -> str:
    """The SmolLM2 job's model: the regime's supervised warm start on worked solutions (trained once, then
    cached), or the plain model with ``--sft_steps 0``."""
    import dataclasses

    from .data.word_problems import SMOLLM2_REGIME
    from .models.warmstart import is_cached, warm_start

    regime = SMOLLM2_REGIME if sft_steps is None else dataclasses.replace(SMOLLM2_REGIME, sft_steps=sft_steps)
    if regime.sft_steps == 0:
        return SMOLLM2[0]
    cfg = regime.warmstart_config()
    if not is_cached(cfg):
        print(f"warm start: {regime.sft_steps} supervised steps on worked solutions (once; cached afterwards)")
    return warm_start(cfg, log_every=max(1, regime.sft_steps // 10))


def run_train(train_args: TrainArgs, config) -> dict:
    """Train, evaluate, save. Returns the summary (also written to ``run_dir/summary.json``)."""
    from .evaluate import evaluate_model
    from .report.plots import make_plots
    from .trainer import OARTrainer

    t0 = time.perf_counter()
    resume = train_args.resume
    if resume:
        run_dir = Path(resume)
    elif config.output_dir != AUTO_DIR:
        run_dir = Path(config.output_dir)
    else:
        run_dir = Path(train_args.runs_dir) / f"{config.credit}-{Path(train_args.model).name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not resume:
        if (run_dir / "config.yaml").exists():
            raise SystemExit(f"{run_dir} already holds a run: pick another --output_dir, or --resume {run_dir}")
    run_dir.mkdir(parents=True, exist_ok=True)
    config.output_dir = str(run_dir)
    config.run_name = run_dir.name
    with open(run_dir / "config.yaml", "w") as f:
        job = (train_args.model, train_args.dataset)
        keep = tuple(_embedded_defaults(_regime()) if job == EMBEDDED else _smollm2_defaults() if job == SMOLLM2 else ())
        yaml.safe_dump(resolved_config(train_args, config, keep), f, sort_keys=False)

    model, tokenizer, train, heldout, template, reward_funcs = _load_model_and_data(train_args, config)
    embedded = (train_args.model, train_args.dataset) == EMBEDDED
    regime = _regime(train_args.task)
    if train_args.dataset == SMOLLM2[1]:
        from .data.word_problems import SMOLLM2_REGIME as regime
    n_samples = regime.eval_samples if train_args.eval_samples is None else train_args.eval_samples
    # Longer problems need longer completions than training allows.
    max_tokens = {"hard": regime.hard_max_new_tokens} if embedded else {}

    trainer = None  # held-out evaluation generates with the trainer's colocated vLLM engine when there is one
    heldout_backend = "hf"

    def evaluate_heldout(m) -> dict:
        nonlocal heldout_backend
        if not heldout:
            return {}
        was_training = m.training
        m.eval()
        out = {}
        for split, rows in heldout.items():
            max_new_tokens = max_tokens.get(split, config.max_completion_length)
            # The embedded task has its own plain template; other held-out problems are asked the way training
            # asks them: through the chat template when the tokenizer has one.
            chat = False if embedded else getattr(tokenizer, "chat_template", None) is not None
            backend = trainer.generation_backend(add_special_tokens=not chat) if trainer is not None else None
            heldout_backend = "vllm" if backend is not None else "hf"
            res = evaluate_model(m, tokenizer, rows, n=n_samples, k_list=[1], prompt_template=template, chat=chat,
                                 temperature=config.temperature, max_new_tokens=max_new_tokens, seed=config.seed,
                                 backend=backend, progress=True, progress_desc=f"held-out {split}")
            out[split] = {"avg": res["avg@n"], "se": res["avg@n_se"], "n_problems": len(rows), "n_samples": n_samples}
        m.train(was_training)
        return out

    start_step = 0
    checkpoint = None
    if resume:
        checkpoint = _last_complete_checkpoint(run_dir)
        if checkpoint is not None:
            start_step = int(checkpoint.name.split("-")[-1])
        _truncate_metrics(run_dir / "metrics.jsonl", start_step)

    if config.use_vllm and config.use_cpu:  # a fixed key/value cache for vLLM's CPU backend (see oarl.evaluate)
        from .evaluate import CPU_KV_CACHE_GIB

        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(CPU_KV_CACHE_GIB))
    MetricsWriter, Progress, HeldoutEval = _callbacks(run_dir, config.max_steps, start_step, evaluate_heldout)
    config.disable_tqdm = True
    trainer = OARTrainer(model=model, reward_funcs=reward_funcs, args=config, train_dataset=train,
                         processing_class=tokenizer,
                         callbacks=[MetricsWriter(), Progress(), HeldoutEval(train_args.eval_every)])
    before_file = run_dir / "heldout_before.json"
    if before_file.exists():
        before = json.loads(before_file.read_text())
    else:
        before = evaluate_heldout(model)
        before_file.write_text(json.dumps(before, indent=2))
        if before:
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"step": 0, **_heldout_row(before)}) + "\n")

    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our bar shows the live numbers; metrics.jsonl keeps them all
    t_train = time.perf_counter()
    trainer.train(resume_from_checkpoint=None if checkpoint is None else str(checkpoint))
    train_time = time.perf_counter() - t_train

    after = evaluate_heldout(trainer.model) if trainer.accelerator.is_main_process else {}
    summary = {}
    if trainer.accelerator.is_main_process:
        final = run_dir / "final_model"
        trainer.save_model(str(final))
        tokenizer.save_pretrained(str(final))
        if after:
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"step": trainer.state.global_step, **_heldout_row(after)}) + "\n")
        make_plots(run_dir)
        summary = {
            "run_dir": str(run_dir),
            "credit": config.credit,
            "steps": trainer.state.global_step,
            "wall_time_s": time.perf_counter() - t0,
            "train_time_s": train_time,
            "credit_overhead": trainer.credit_overhead,
            "heldout_before": before,
            "heldout_after": after,
            "heldout_backend": heldout_backend,
        }
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        print(format_summary(summary))
    return summary


def _last_complete_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint that was written to the end (TRL writes trainer_state.json last); a checkpoint that
    a killed run left half-written is removed, so that nothing picks it up later."""
    checkpoints = sorted(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    for path in checkpoints:
        if (path / "trainer_state.json").is_file():
            return path
        shutil.rmtree(path)
    return None


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Drop rows logged after the checkpoint we resume from: they will be logged again."""
    if not path.exists():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= last_step]
    path.write_text("".join(r + "\n" for r in rows))


def format_summary(summary: dict) -> str:
    lines = ["", f"{'split':<8} {'before':>16} {'after':>16}"]
    for split, after in summary["heldout_after"].items():
        b = summary["heldout_before"].get(split)
        fmt = lambda r: f"{r['avg']:.3f} ± {r['se']:.3f}" if r else "-"  # noqa: E731
        lines.append(f"{split:<8} {fmt(b):>16} {fmt(after):>16}")
    if summary["heldout_after"]:
        first = next(iter(summary["heldout_after"].values()))
        lines.append(f"(avg@{first['n_samples']} over {first['n_problems']} problems per split, ± one standard error)")
    overhead = summary["credit_overhead"]
    lines += [
        f"steps: {summary['steps']}   wall time: {summary['wall_time_s']:.0f} s   "
        f"credit ({summary['credit']}) overhead: {'-' if overhead is None else f'{overhead:.1%}'}",
        f"run directory: {summary['run_dir']}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    train_args, config = parse_args(argv)
    return run_train(train_args, config)
