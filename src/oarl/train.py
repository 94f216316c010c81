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
import contextlib
import dataclasses
import io
import json
import logging
import math
import os
import shlex
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

EMBEDDED = ("tiny", "arithmetic")  # (model, dataset) of the embedded default job
SMOLLM2 = ("smollm2-135m", "word-problems")  # (model, dataset) of the SmolLM2 job: its default dataset and regime
DEFAULT_EVAL_SIZE = 64  # held-out problems of the test split of gsm-symbolic and hub datasets
HELDOUT_BEFORE = "heldout_before.json"  # the held-out numbers before training (a resumed run reuses them)
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
    problem_field: str | None = field(default=None, metadata={"help": "Problem field of a JSONL dataset (default: "
                                                              "detected as `oarl eval` does, a context field such as "
                                                              "Body kept before the question)."})
    answer_field: str | None = field(default=None, metadata={"help": "Gold-answer field of a JSONL dataset (default: "
                                                             "detected; a list is a set of acceptable answers)."})
    prompt_template: str | None = field(default=None, metadata={"help": "The prompt (user message for chat models) "
                                                                "made of the row's fields, e.g. '{Body} {Question}'; "
                                                                "{problem} is the detected problem. Used for training "
                                                                "and held-out problems alike; no instruction is added."})
    train_size: int | None = field(default=None, metadata={"help": "Number of training problems (default: "
                                                           "the embedded regime's, or the whole dataset)."})
    runs_dir: str = field(default="runs", metadata={"help": "Parent folder of run directories named "
                                                   "<credit>-<model>-<time> (unless --output_dir names the run directory)."})
    resume: str | None = field(default=None, metadata={"help": "A run directory to continue from its last checkpoint."})
    sft_steps: int | None = field(default=None, metadata={"help": "Supervised warm-start steps of the tiny model, "
                                                             "or of smollm2-135m on word problems (0: none) "
                                                             "(default: the regime's, 600 for tiny, 300 with "
                                                             "--task chain, 50 for smollm2-135m). Cached by config."})
    eval_size: int | None = field(default=None, metadata={"help": "Held-out problems per split (default: 256 "
                                                          "for the embedded job (128 hard ones) and the SmolLM2 "
                                                          "job; gsm-symbolic "
                                                          f"and hub datasets: {DEFAULT_EVAL_SIZE} of their test split; "
                                                          "a .jsonl file: --eval_fraction of it). 0 disables held-out "
                                                          "evaluation."})
    eval_fraction: float = field(default=0.1, metadata={"help": "Fraction of a .jsonl training file held out for "
                                                        "evaluation when --eval_size is not given (disjoint from "
                                                        "training; the same rows for every seed)."})
    eval_dataset: str | None = field(default=None, metadata={"help": "A .jsonl file (or dataset name) of held-out "
                                                             "problems, instead of a part of the training file."})
    eval_samples: int | None = field(default=None, metadata={"help": "Samples per held-out problem for avg@n "
                                                              "(default: 2 on --dataset word-problems, else 4)."})
    eval_every: int = field(default=0, metadata={"help": "Also evaluate held-out accuracy every N steps (0: only "
                                                 "before and after training)."})


# ------------------------------------------------------------------------------------------------ config


def _device_defaults(use_cpu: bool = False, cpu_bf16: bool = False) -> dict:
    """Device and precision (``oarl.devices``): the GPU when there is one, in bf16 where it has bf16 (GRPOConfig's
    activation checkpointing stays on); else the CPU in float32 (bf16 autocast with cpu_bf16), no checkpointing."""
    from .devices import mixed_precision
    from .trainer import ACTIVATION_CHECKPOINTING

    settings = mixed_precision(use_cpu, cpu_bf16)
    return {**settings, ACTIVATION_CHECKPOINTING: False} if settings["use_cpu"] else settings


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
    embedded defaults). ``--resume RUN`` re-reads ``RUN/config.yaml``. Raises UsageError (one line, with a "did
    you mean") for an unknown flag or YAML key, an invalid value or choice, and ``--max_steps`` 0 or below -1."""
    from transformers.hf_argparser import string_to_bool
    from trl import TrlParser

    from .devices import cpu_has_bf16
    from .errors import RaisingParserMixin, UsageError, did_you_mean, unknown_flags_hint
    from .trainer import OARConfig

    class Parser(RaisingParserMixin, TrlParser):
        pass

    class Formatter(argparse.ArgumentDefaultsHelpFormatter):  # HfArgumentParser's, less a "(default: None)"
        def _get_help_string(self, action):  # after a help that gives the default in words
            if action.default is None and "default:" in (action.help or "").lower():
                return action.help
            return super()._get_help_string(action)

    class PreParser(RaisingParserMixin, argparse.ArgumentParser):
        pass

    argv = list(argv or [])
    pre = PreParser(prog="oarl train", add_help=False)
    for flag in ("--config", "--resume", "--model", "--dataset"):
        pre.add_argument(flag)
    pre.add_argument("--use_cpu", nargs="?", const="true")  # the device decides the precision defaults
    known, _ = pre.parse_known_args(argv)
    if known.resume and not known.config:
        config = Path(known.resume) / "config.yaml"
        if not config.is_file():
            raise UsageError(f"--resume {known.resume}: no config.yaml there; give the run directory of an `oarl train` "
                             "run (runs/<name>)")
        argv = ["--config", str(config), *argv]
        known.config = str(config)
    from_yaml = {}
    if known.config:
        if not Path(known.config).is_file():
            raise UsageError(f"--config {known.config}: no such file")
        from_yaml = _read_yaml(known.config)
        if not isinstance(from_yaml, dict):
            raise UsageError(f"--config {known.config}: expected a YAML mapping of settings (key: value lines)")
    model = known.model or from_yaml.get("model", "tiny")
    dataset = known.dataset or from_yaml.get("dataset", SMOLLM2[1] if model == SMOLLM2[0] else EMBEDDED[1])

    use_cpu = from_yaml.get("use_cpu", False) if known.use_cpu is None else known.use_cpu
    try:
        use_cpu = string_to_bool(use_cpu) if isinstance(use_cpu, str) else bool(use_cpu)
    except argparse.ArgumentTypeError:
        use_cpu = False  # the parser below reports the bad value
    # bf16 autocast on a CPU with bf16 instructions (avx512_bf16, AMX) for the SmolLM2 job: 1.8x faster steps on the
    # one that measured the regime, the same losses to 1e-4 (experiments/SMOLLM2.md §3f); elsewhere it is emulated
    cpu_bf16 = (model, dataset) == SMOLLM2 and cpu_has_bf16()

    parser = Parser((TrainArgs, OARConfig), prog="oarl train", formatter_class=Formatter)
    defaults = {"output_dir": AUTO_DIR, **_device_defaults(use_cpu, cpu_bf16), "report_to": "none", "logging_steps": 1}
    if (model, dataset) == EMBEDDED:
        defaults.update(_embedded_defaults(_regime()))
    elif (model, dataset) == SMOLLM2:
        defaults.update(_smollm2_defaults(), dataset=dataset)
    parser.set_defaults(**defaults)
    train_args, config, unknown_keys, unknown_args = parser.parse_args_and_config(
        argv, return_remaining_strings=True, separate_remaining_strings=True)
    if unknown_args:
        raise UsageError(f"unknown flag {unknown_args[0]}.{unknown_flags_hint(parser, unknown_args)} "
                         "(see `oarl train --help`)")
    if unknown_keys:
        key = unknown_keys[0][2:]
        fields = [*TrainArgs.__dataclass_fields__, *OARConfig.__dataclass_fields__]
        raise UsageError(f"unknown key {key!r} in {known.config}.{did_you_mean(key, fields)} (the keys are the "
                         "flags of `oarl train --help`)")
    _check(train_args, config)
    return train_args, config


def _read_yaml(path: str):
    """The settings of a ``--config`` file (``yaml.safe_load``: plain values only); UsageError with the line for invalid
    YAML, a tag (``!!python/object``: a config never builds objects) or a file that is not UTF-8 text."""
    from .errors import UsageError

    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise UsageError(f"--config {path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at byte "
                         f"{exc.start + 1})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        if isinstance(exc, yaml.constructor.ConstructorError) and "tag" in problem:
            tag = problem.split("tag", 1)[1].strip(" '").replace("tag:yaml.org,2002:", "!!")
            raise UsageError(f"--config {path}: the YAML tag {tag}{where} is not read: a config holds plain values "
                             "(numbers, text, true/false, lists)") from None
        raise UsageError(f"--config {path}: invalid YAML{where}: {problem}") from None


def _check(train_args: TrainArgs, config) -> None:
    """Values the dataclasses accept but a run cannot use (the GRPOConfig numbers: OARConfig's own check)."""
    from .checks import check_train
    from .errors import UsageError

    check_train(train_args)
    if config.max_steps == 0:
        raise UsageError("--max_steps 0 would still train one step: give the number of steps (>= 1), or -1 to train "
                         "num_train_epochs; to evaluate a model without training, use `oarl eval --model ...`")
    if config.max_steps < -1:
        raise UsageError(f"--max_steps {config.max_steps} would train num_train_epochs: give the number of steps "
                         "(>= 1), or -1 to train num_train_epochs")
    embedded = [f"--{f}" for f in ("prompt_template", "eval_dataset") if getattr(train_args, f)]
    if (train_args.model, train_args.dataset) == EMBEDDED and embedded:
        raise UsageError(f"{' and '.join(embedded)} apply to --dataset FILE or a named dataset; the embedded job (tiny "
                         "model, arithmetic) asks its own prompts and holds out its own test and hard splits")


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


def _callbacks(run_dir: Path, start_step: int, heldout, clock):
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    class MetricsWriter(TrainerCallback):
        """Appends each logged row (with its step) to metrics.jsonl; keeps the run's wall time up to date."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                row = {"step": state.global_step, **{k: v for k, v in logs.items() if _jsonable(v)}}
                with open(run_dir / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
                clock.save()

    class Progress(TrainerCallback):
        """One bar with the live reward, accuracy and credit overhead; its total is the Trainer's step count (from
        max_steps, or epochs x batches per epoch)."""

        def __init__(self):
            self.bar = None
            self.shown = {}  # the last value of each number: steps that reuse a generation batch log no reward
            self.credit_s = self.step_s = 0.0  # running totals for the credit overhead of the run so far

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.bar = tqdm(total=state.max_steps, initial=start_step, desc="oarl train", dynamic_ncols=True)

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
                numbers = heldout(model, f"step {state.global_step}")
                if state.is_world_process_zero and numbers:
                    with open(run_dir / "metrics.jsonl", "a") as f:
                        f.write(json.dumps({"step": state.global_step, **_heldout_row(numbers)}) + "\n")

    return MetricsWriter, Progress, HeldoutEval


def _jsonable(v) -> bool:
    return isinstance(v, (str, int, bool, type(None))) or (isinstance(v, float) and math.isfinite(v))


def save_heldout_before(run_dir: Path, before: dict) -> None:
    """The held-out numbers before training ({split: {avg, se, ...}}) into ``HELDOUT_BEFORE``, which a resumed
    run reuses, and as the step-0 row of metrics.jsonl."""
    (run_dir / HELDOUT_BEFORE).write_text(json.dumps(before, indent=2))
    if before:
        with open(run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": 0, **_heldout_row(before)}) + "\n")


def _heldout_row(numbers: dict) -> dict:
    return {f"heldout/{split}": r["avg"] for split, r in numbers.items()}


# ------------------------------------------------------------------------------------------------ the job


def _load_model_and_data(train_args: TrainArgs, config):
    """(model, tokenizer, train dataset, held-out splits as {name: rows} whose ``problem`` is the whole prompt,
    whether to ask them through the chat template (None: when the tokenizer has one), rewards)."""
    from . import rewards

    if (train_args.model, train_args.dataset) == EMBEDDED:
        from .data import arithmetic
        from .models.tiny import load_tiny
        from .models.warmstart import warm_start

        regime = _regime(train_args.task)
        ws = regime.warmstart_config()
        if train_args.sft_steps is not None:
            ws["steps"] = train_args.sft_steps
        model, tokenizer = load_tiny(warm_start(ws, use_cpu=config.use_cpu))
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
        return model, tokenizer, train, heldout, False, [arithmetic.reward]

    from .models.loading import load_model

    if (train_args.model, train_args.dataset) == SMOLLM2:
        model, tokenizer = load_model(_smollm2_warm_start(train_args.sft_steps, config.use_cpu))
    else:
        model, tokenizer = load_model(train_args.model)
    train, heldout = _dataset_and_heldout(train_args, config, getattr(tokenizer, "chat_template", None) is not None)
    # Held-out rows carry the whole message that training sends (instruction or template included), asked through
    # the chat template when the tokenizer has one, as in training.
    reward_funcs = [rewards.accuracy] if train_args.dataset == SMOLLM2[1] else [rewards.accuracy, rewards.format]
    return model, tokenizer, train, heldout, None, reward_funcs


def _smollm2_warm_start(sft_steps: int | None, use_cpu: bool = False) -> str:
    """The SmolLM2 job's model: the regime's supervised warm start on worked solutions (trained once, then
    cached; ``warm_start`` says so and shows a bar), or the plain model with ``--sft_steps 0``."""
    import dataclasses

    from .data.word_problems import SMOLLM2_REGIME
    from .models.warmstart import warm_start

    regime = SMOLLM2_REGIME if sft_steps is None else dataclasses.replace(SMOLLM2_REGIME, sft_steps=sft_steps)
    if regime.sft_steps == 0:
        return SMOLLM2[0]
    return warm_start(regime.warmstart_config(), log_every=max(1, regime.sft_steps // 10), use_cpu=use_cpu)


def _dataset_and_heldout(train_args: TrainArgs, config, conversational: bool):
    """(train dataset, {"test": held-out rows}) of a dataset other than the embedded one. Held out: the test split
    of word-problems (the SmolLM2 regime's problems, the same for every training seed), gsm-symbolic and hub
    datasets; for a .jsonl file, a disjoint part of it (--eval_size problems, else --eval_fraction) or the
    --eval_dataset file."""
    from .data import DATASET_CHOICES, load_train_dataset
    from .data.word_problems import SMOLLM2_REGIME

    own_file = train_args.dataset not in DATASET_CHOICES and train_args.eval_dataset is None
    word_problems = train_args.dataset == SMOLLM2[1] and train_args.eval_dataset is None
    n_eval = train_args.eval_size
    if n_eval is None and not own_file and train_args.eval_dataset is None:
        n_eval = SMOLLM2_REGIME.eval_problems if word_problems else DEFAULT_EVAL_SIZE
    holdout = None
    if own_file and n_eval != 0:
        holdout = n_eval if n_eval is not None else train_args.eval_fraction
    kw = dict(seed=config.seed, problem_field=train_args.problem_field, answer_field=train_args.answer_field,
              prompt_template=train_args.prompt_template, holdout=holdout)
    train = load_train_dataset(train_args.dataset, split="train", size=train_args.train_size,
                               conversational=conversational, **kw)
    if n_eval == 0:
        return train, {}
    if word_problems:
        kw["seed"] = SMOLLM2_REGIME.seed
    test = load_train_dataset(train_args.eval_dataset or train_args.dataset, split="test",
                              size=None if holdout else n_eval, conversational=False, **kw)
    return train, {"test": [{"problem": p, "answer": a} for p, a in zip(test["prompt"], test["answer"])]}


def run_train(train_args: TrainArgs, config) -> dict:
    """Train, evaluate, save. Returns the summary (also written to ``run_dir/summary.json``).

    Bad arguments (model path, dataset, template) raise before anything is written; a run that fails before
    its held-out evaluation or first checkpoint leaves no run directory behind. Ctrl-C raises
    ``oarl.errors.Interrupted`` with the command that continues the run."""
    from .errors import DiskFull, Interrupted, UsageError, disk_full, removed_on_failure, stopped

    _check_sources(train_args)
    _check_heldout_backend(train_args, config)
    resume = train_args.resume
    if resume:
        run_dir = Path(resume)
    elif config.output_dir != AUTO_DIR:
        run_dir = Path(config.output_dir)
    else:
        run_dir = Path(train_args.runs_dir) / f"{config.credit}-{Path(train_args.model).name}-{time.strftime('%Y%m%d-%H%M%S')}"
    # With several processes (accelerate launch) every one runs this function; the main one alone checks, reads and
    # writes the run folder's own files, and the others wait for it: a check on each would race with the main one's
    # writes (a rank that saw another's config.yaml refused the run).
    main = config.process_index == 0
    if main and not resume and (run_dir / "config.yaml").exists():
        raise UsageError(f"{run_dir} already holds a run: pick another --output_dir, or --resume {run_dir}")
    if main:
        checkpoint, to_train = _resume_point(run_dir, config) if resume else (None, True)
    if config.world_size > 1:
        config.distributed_state.wait_for_everyone()
    if not main:
        with contextlib.redirect_stdout(io.StringIO()):  # the main process has said it
            checkpoint, to_train = _resume_point(run_dir, config) if resume else (None, True)
    if to_train is None:
        return json.loads((run_dir / "summary.json").read_text())
    worth_keeping = lambda: (run_dir / HELDOUT_BEFORE).exists() or any(run_dir.glob("checkpoint-*"))  # noqa: E731
    try:
        with removed_on_failure(run_dir, keep=worth_keeping) if main else contextlib.nullcontext():
            return _train(train_args, config, run_dir, checkpoint, to_train)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (oarl.errors.Terminated)
        if not run_dir.is_dir():
            raise Interrupted(f"{stopped(exc)} before training began; nothing to resume") from exc
        WallClock.count_until_now(run_dir / "wall_time.json")
        raise Interrupted(f"{stopped(exc)}; continue with: oarl train --resume {shlex.quote(str(run_dir))}") from exc
    except Exception as exc:
        if (why := disk_full(exc, run_dir if run_dir.is_dir() else run_dir.parent)) is None:
            raise
        raise DiskFull(_disk_full_message(why, run_dir)) from exc


def _disk_full_message(why: str, run_dir: Path) -> str:
    """One line for a run that stopped on a full disk: where, what a checkpoint takes, how to continue. A checkpoint
    left half-written is removed first (it is never resumed from, and its space is needed)."""
    checkpoint = _last_complete_checkpoint(run_dir) if run_dir.is_dir() else None
    size = "" if checkpoint is None else (
        f"; a checkpoint of this run takes {sum(f.stat().st_size for f in checkpoint.iterdir()) / 2**20:.0f} MiB "
        "(--save_total_limit N keeps the last N)")
    then = (f"continue with: oarl train --resume {shlex.quote(str(run_dir))}" if run_dir.is_dir()
            else "run the same command again")
    return f"{why} while writing {run_dir}: free space on its disk{size}, then {then}"


def _check_heldout_backend(train_args: TrainArgs, config) -> None:
    """Raises UsageError, before any model is loaded or folder written, for held-out evaluation (anything but
    ``--eval_size 0``) with several processes under DeepSpeed ZeRO-3 or FSDP. The evaluation generates on the main
    process alone, with the model outside the engine: under ZeRO-3 its parameters there are empty partitions, under
    FSDP its forwards wait for all-gathers that the other processes never join. The backend is read from what
    ``accelerate launch`` exports and from the training arguments (``--deepspeed``, ``--fsdp``), as the Trainer's
    accelerator will read it (on a machine without GPUs accelerate runs DDP instead of FSDP; refused all the same)."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    from .errors import UsageError

    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    fsdp = bool(config.fsdp) or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true")
    if train_args.eval_size != 0 and several and (is_deepspeed_zero3_enabled() or fsdp):
        raise UsageError("held-out evaluation does not run under DeepSpeed ZeRO-3 or FSDP with several processes: "
                         "set --eval_size 0, and evaluate the run's final_model afterwards with `oarl eval`")


def _resume_point(run_dir: Path, config) -> tuple[Path | None, bool | None]:
    """Where ``--resume RUN`` continues: (the last complete checkpoint or None, whether steps remain to train;
    None: the run is complete, nothing to do). Prints one line: the run is complete (and how to train further),
    or from which step to which step it continues. The target is ``config.max_steps`` (the run's own, unless a
    new ``--max_steps`` is given); with -1 (epochs) and the run's num_train_epochs, the one TRL recorded in the
    checkpoint. Raises UsageError for a new max_steps the run has already reached, and for a finished run that
    saved no checkpoint to continue from."""
    from .errors import UsageError

    checkpoint = _last_complete_checkpoint(run_dir)
    state = json.loads((checkpoint / "trainer_state.json").read_text()) if checkpoint else {}
    done = state.get("global_step", 0)
    summary = run_dir / "summary.json"
    finished = json.loads(summary.read_text())["steps"] if summary.is_file() else None
    saved = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    epochs = type(config).__dataclass_fields__["num_train_epochs"].default
    same_target = config.max_steps == saved.get("max_steps", -1) and (
        config.max_steps > 0 or config.num_train_epochs == saved.get("num_train_epochs", epochs))
    target = config.max_steps if config.max_steps > 0 else (state.get("max_steps") or finished) if same_target else None
    reached = max(done, finished or 0)
    quoted = shlex.quote(str(run_dir))
    if target is not None and reached >= target:
        if not same_target:
            raise UsageError(f"--max_steps {config.max_steps}: {run_dir} has already trained {reached} steps; give "
                             f"more to train further (oarl train --resume {quoted} --max_steps {reached + 1} or more)")
        if finished is not None and finished >= target:  # else a summary of an earlier, shorter target
            print(f"{run_dir} is complete ({finished} steps; nothing trained or overwritten); to train further: "
                  f"oarl train --resume {quoted} --max_steps N with N > {finished} (in an `oarl compare` folder: "
                  "the same compare command with --max_steps N, for every run)")
            return checkpoint, None
        print(f"resuming {run_dir}: {checkpoint.name} reached step {target}; finishing without training (held-out "
              "evaluation, final_model, summary.json)")
        return checkpoint, False
    if finished is not None and checkpoint is None:
        raise UsageError(f"{run_dir} finished without saving a checkpoint (save_strategy no): nothing to continue "
                         "from; start a new run with more steps")
    start = f"{checkpoint.name} (step {done})" if checkpoint else "step 0 (no checkpoint was saved)"
    goal = f"to step {target}" if target is not None else f"for num_train_epochs {config.num_train_epochs:g}"
    print(f"resuming {run_dir} from {start} {goal}")
    return checkpoint, True


def _check_sources(train_args: TrainArgs) -> None:
    """The model name and the data, checked in a moment, before a run directory or a warm start."""
    from .data import DATASET_CHOICES, load_train_dataset
    from .models.loading import check_model_name

    check_model_name(train_args.model)
    for name in filter(None, (train_args.dataset, train_args.eval_dataset)):
        if name not in DATASET_CHOICES or train_args.prompt_template:  # reads a file once; reports its fields
            load_train_dataset(name, size=1, conversational=False, problem_field=train_args.problem_field,
                               answer_field=train_args.answer_field, prompt_template=train_args.prompt_template)


def _train(train_args: TrainArgs, config, run_dir: Path, checkpoint: Path | None = None, to_train: bool = True) -> dict:
    """The run in ``run_dir``, from ``checkpoint`` if given; ``to_train=False``: only the end of a run whose
    checkpoint reached max_steps (the weights of the checkpoint, held-out evaluation, final_model, summary)."""
    from .evaluate import evaluate_model
    from .report.plots import make_plots
    from .trainer import OARTrainer

    precision = "bf16 mixed precision (--bf16 false: float32)" if config.bf16 else "fp16 mixed precision" if config.fp16 \
        else "float32"
    logging.getLogger(__name__).info("training on %s in %s", config.device, precision)  # oarl.devices' choice, or flags
    main = config.process_index == 0  # the only process that writes the run folder's own files (see run_train)
    clock = WallClock(run_dir / "wall_time.json", resumed=bool(train_args.resume))
    config.output_dir = str(run_dir)
    config.run_name = run_dir.name
    if main:
        clock.save()  # from now on a Ctrl-C is counted (WallClock.count_until_now)
        with open(run_dir / "config.yaml", "w") as f:
            job = (train_args.model, train_args.dataset)
            keep = tuple(_embedded_defaults(_regime()) if job == EMBEDDED else _smollm2_defaults() if job == SMOLLM2
                         else ())
            yaml.safe_dump(resolved_config(train_args, config, keep), f, sort_keys=False)

    model, tokenizer, train, heldout, chat, reward_funcs = _load_model_and_data(train_args, config)
    embedded = (train_args.model, train_args.dataset) == EMBEDDED
    regime = _regime(train_args.task)
    if train_args.dataset == SMOLLM2[1]:
        from .data.word_problems import SMOLLM2_REGIME as regime
    n_samples = regime.eval_samples if train_args.eval_samples is None else train_args.eval_samples
    # Longer problems need longer completions than training allows.
    max_tokens = {"hard": regime.hard_max_new_tokens} if embedded else {}

    trainer = None  # held-out evaluation generates with the trainer's colocated vLLM engine when there is one
    heldout_backend = "hf"
    if chat is None:  # asked the way training asks: through the chat template when the tokenizer has one
        chat = getattr(tokenizer, "chat_template", None) is not None

    def evaluate_heldout(m, when: str) -> dict:
        nonlocal heldout_backend
        if not heldout:
            return {}
        was_training = m.training
        m.eval()
        out = {}
        for split, rows in heldout.items():
            max_new_tokens = max_tokens.get(split, config.max_completion_length)
            backend = trainer.generation_backend(add_special_tokens=not chat) if trainer is not None else None
            heldout_backend = "vllm" if backend is not None else "hf"
            res = evaluate_model(m, tokenizer, rows, n=n_samples, k_list=[1], prompt_template="{problem}", chat=chat,
                                 temperature=config.temperature, max_new_tokens=max_new_tokens, seed=config.seed,
                                 backend=backend, progress=True, progress_desc=f"held-out {split} ({when})",
                                 return_samples=True)
            by_problem: dict = {}
            for sample in res["samples"]:
                by_problem.setdefault(sample["id"], []).append(float(sample["correct"]))
            out[split] = {"avg": res["avg@n"], "se": res["avg@n_se"], "n_problems": len(rows), "n_samples": n_samples,
                          "per_problem": [round(sum(c) / len(c), 4) for c in by_problem.values()]}
        m.train(was_training)
        return out

    start_step = 0 if checkpoint is None else int(checkpoint.name.split("-")[-1])
    if train_args.resume and main:  # finishing without training logs the "after" row of the last step again
        _truncate_metrics(run_dir / "metrics.jsonl", start_step, heldout_at_last=to_train)

    if config.use_vllm and config.use_cpu:  # a fixed key/value cache for vLLM's CPU backend (see oarl.evaluate)
        from .evaluate import CPU_KV_CACHE_GIB

        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(CPU_KV_CACHE_GIB))
    MetricsWriter, Progress, HeldoutEval = _callbacks(run_dir, start_step, evaluate_heldout, clock)
    config.disable_tqdm = True
    trainer = OARTrainer(model=model, reward_funcs=reward_funcs, args=config, train_dataset=train,
                         processing_class=tokenizer,
                         callbacks=[MetricsWriter(), Progress(), HeldoutEval(train_args.eval_every)])
    before_file = run_dir / HELDOUT_BEFORE
    if not main:
        before = {}
    elif before_file.exists():
        before = json.loads(before_file.read_text())
    else:
        before = evaluate_heldout(model, "before")
        save_heldout_before(run_dir, before)

    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our bar shows the live numbers; metrics.jsonl keeps them all
    if to_train:
        clock.start_training()
        trainer.train(resume_from_checkpoint=None if checkpoint is None else str(checkpoint))
        clock.stop_training()
    else:  # what Trainer.train loads before its first step (it would then train one more)
        from transformers import TrainerState

        trainer._load_from_checkpoint(str(checkpoint))
        trainer.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))

    after = evaluate_heldout(trainer.model, "after") if trainer.accelerator.is_main_process else {}
    summary = {}
    final = run_dir / "final_model"
    trainer.save_model(str(final))  # on every process: ZeRO-3 and FSDP gather the weights; the main process writes
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(str(final))
        if after:
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"step": trainer.state.global_step, **_heldout_row(after)}) + "\n")
        make_plots(run_dir)
        clock.save()
        summary = {
            "run_dir": str(run_dir),
            "credit": config.credit,
            "steps": trainer.state.global_step,
            "wall_time_s": clock.seconds(),  # every session of the run, if it was resumed
            "sessions": clock.sessions,
            "train_time_s": sum(clock.train_seconds),  # trainer.train() of every session, as wall_time_s
            "credit_overhead": trainer.credit_overhead,
            "heldout_before": before,
            "heldout_after": after,
            "heldout_curve": heldout_curve(run_dir),
            "heldout_backend": heldout_backend,
        }
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        print(format_summary(summary))
    return summary


class WallClock:
    """Wall time of a run over all its sessions, and the training time (``trainer.train``) of each session, kept in
    ``path`` and updated as the run goes (``save``): a resumed run adds its time to that of the sessions before it;
    a killed session counts up to its last update."""

    def __init__(self, path: Path, resumed: bool):
        self.path, self.started = path, time.perf_counter()
        previous = json.loads(path.read_text()) if resumed and path.is_file() else {}
        self.before, self.sessions = previous.get("seconds", 0.0), previous.get("sessions", 0) + 1
        self.train_before = previous.get("train_seconds", [])  # one number per earlier session
        self.train_started, self.trained = None, 0.0

    def seconds(self) -> float:
        return self.before + time.perf_counter() - self.started

    @property
    def train_seconds(self) -> list[float]:
        """Seconds in ``trainer.train`` of each session, this one last."""
        running = 0.0 if self.train_started is None else time.perf_counter() - self.train_started
        return [*self.train_before, self.trained + running]

    def start_training(self) -> None:
        self.train_started = time.perf_counter()

    def stop_training(self) -> None:
        self.trained += time.perf_counter() - self.train_started
        self.train_started = None

    def save(self) -> None:
        _replace_json(self.path, {"seconds": self.seconds(), "sessions": self.sessions,
                                  "train_seconds": self.train_seconds, "saved_at": time.time(),
                                  "training": self.train_started is not None})

    @staticmethod
    def count_until_now(path: Path) -> None:
        """After Ctrl-C: add the time since the last ``save`` (the interrupted session's last moments, up to a
        step plus any evaluation) to the file, so that a resumed run's wall and training times include it."""
        if not path.is_file():
            return
        saved = json.loads(path.read_text())
        elapsed = max(time.time() - saved.pop("saved_at", time.time()), 0.0)
        saved["seconds"] += elapsed
        if saved.pop("training", False) and saved["train_seconds"]:
            saved["train_seconds"][-1] += elapsed
        _replace_json(path, {**saved, "saved_at": time.time(), "training": False})


def _replace_json(path: Path, data: dict) -> None:
    """Write ``data`` to ``path`` whole or not at all (a temporary file, then a rename): a Ctrl-C, SIGTERM or SIGKILL
    while it is written leaves the previous version, never an empty or cut file."""
    part = path.with_name(path.name + ".part")
    part.write_text(json.dumps(data))
    os.replace(part, path)


def _last_complete_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint that was written to the end (TRL writes trainer_state.json last, so a complete one has
    that file, whole); a checkpoint that a killed run left half-written is removed, so that nothing picks it up
    later."""
    checkpoints = sorted(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    for path in checkpoints:
        try:
            json.loads((path / "trainer_state.json").read_text())
            return path
        except (OSError, ValueError):  # missing, or cut while being written (a Ctrl-C at that instant)
            shutil.rmtree(path)
    return None


def _truncate_metrics(path: Path, last_step: int, heldout_at_last: bool = True) -> None:
    """Drop rows logged after the checkpoint we resume from: they will be logged again; with
    ``heldout_at_last=False`` also the held-out rows of ``last_step`` (a finished run's "after" row)."""
    if not path.exists():
        return
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    kept = [r for r in rows if r["step"] < last_step or r["step"] == last_step and (
        heldout_at_last or not any(k.startswith("heldout/") for k in r))]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))


def heldout_curve(run_dir: Path) -> dict[str, list[list]]:
    """{split: [[step, held-out avg], ...]} of a run, step 0 (before RL) to the last, from its metrics.jsonl: every
    held-out evaluation (``--eval_every``), as ``oarl compare`` needs for the steps to reach an accuracy."""
    curve: dict[str, dict[int, float]] = {}
    path = run_dir / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else ():
        row = json.loads(line) if line.strip() else {}
        for key, value in row.items():
            if key.startswith("heldout/"):
                curve.setdefault(key.removeprefix("heldout/"), {})[row["step"]] = value
    return {split: [[step, avg] for step, avg in sorted(points.items())] for split, points in curve.items()}


def heldout_gain(before: dict, after: dict) -> tuple[float, float]:
    """(after - before, its standard error) of one held-out split ({avg, se, per_problem} each). On the same
    problems the SE is the paired one, stdev over problems of the per-problem accuracy differences / sqrt(n):
    a problem's difficulty is in both numbers and cancels, so a real gain is not hidden under the spread of
    problem difficulty. Without per-problem numbers (runs written before they were kept), sqrt(se_before² + se_after²)."""
    gain = after["avg"] - before["avg"]
    b, a = before.get("per_problem"), after.get("per_problem")
    if not b or not a or len(a) != len(b) or len(a) < 2:
        return gain, math.hypot(before["se"], after["se"])
    return gain, statistics.stdev(y - x for x, y in zip(b, a, strict=True)) / math.sqrt(len(a))


def format_summary(summary: dict) -> str:
    lines = ["", f"{'split':<8} {'before':>16} {'after':>16} {'gain (paired SE)':>18}"]
    for split, after in summary["heldout_after"].items():
        b = summary["heldout_before"].get(split)
        fmt = lambda r: f"{r['avg']:.3f} ± {r['se']:.3f}" if r else "-"  # noqa: E731
        gain = "{:+.3f} ± {:.3f}".format(*heldout_gain(b, after)) if b else "-"
        lines.append(f"{split:<8} {fmt(b):>16} {fmt(after):>16} {gain:>18}")
    if summary["heldout_after"]:
        counts = {split: r["n_problems"] for split, r in summary["heldout_after"].items()}
        over = (f"{next(iter(counts.values()))} problems per split" if len(set(counts.values())) == 1
                else ", ".join(f"{n} {split}" for split, n in counts.items()) + " problems")
        n_samples = next(iter(summary["heldout_after"].values()))["n_samples"]
        lines.append(f"(avg@{n_samples} over {over}, ± one standard error)")
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
