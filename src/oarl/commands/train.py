"""``oarl train``: one OAR (or GRPO) training run into a run directory.

With no arguments it runs the embedded default job (``oarl.jobs.EMBEDDED``): a tiny transformer warm-started on
multi-step arithmetic (cached), then OAR-G reinforcement learning and a held-out evaluation, on a laptop CPU with no
network. Every ``TrainArgs`` (``oarl.jobs``) and OARConfig/GRPOConfig field is a ``--flag`` or a YAML key
(``--config file.yaml``), parsed the TRL way (``TrlParser``).

The run directory (``oarl.runs``) holds ``config.yaml``, ``metrics.jsonl``, ``plots/*.png``, TRL checkpoints,
``final_model/`` and ``summary.json``. ``oarl train --resume runs/<name>`` continues from the last checkpoint.

The path of a run: ``parse_args`` (flags, YAML and the job's defaults) -> ``run_train`` (checks, the run directory,
resume point) -> ``train_in`` (``oarl.jobs.load_model_and_data``, ``OARTrainer``, held-out evaluation before and
after, ``trainer.train()``, final_model, summary). Torch, transformers and TRL load only when a run starts.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from oarl.errors import (
    DiskFull,
    Interrupted,
    RaisingParserMixin,
    UsageError,
    did_you_mean,
    disk_full,
    removed_on_failure,
    stopped,
    unknown_flags_hint,
)

if TYPE_CHECKING:
    from oarl.jobs import TrainArgs

HELP = "train with OAR (default: the embedded tiny-model arithmetic job); --help lists all flags"
AUTO_DIR = "<auto>"  # output_dir placeholder: the run directory is named after the run


def run(argv: list[str]) -> int:
    """``oarl train [flags]``: the flags are TrainArgs + OARConfig (every GRPOConfig field), parsed the TRL way by
    ``parse_args`` (TRL's parser owns them: no ``add_args``)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run_train(*parse_args(argv))
    leave_together()
    return 0


def leave_together() -> None:
    """With several processes (``accelerate launch``): wait for each other, then close the process group. A process
    that returned first (the others still write the summary and plots) and tore down its process group under a live
    peer aborted at exit ("terminate called without an active exception"); with one process, or when nothing was
    run (``--help``: torch not even loaded), nothing to do."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def parse_args(argv: list[str] | None = None):
    """(TrainArgs, OARConfig) from flags and an optional ``--config`` YAML (flags win over YAML, YAML over the
    embedded defaults). ``--resume RUN`` re-reads ``RUN/config.yaml``. Raises UsageError (one line, with a "did
    you mean") for an unknown flag or YAML key, an invalid value or choice, and ``--max_steps`` 0 or below -1."""
    # lazy: TRL and transformers load when `oarl train` runs, not at the `oarl` command's start
    from transformers.hf_argparser import string_to_bool
    from trl import TrlParser

    from oarl.jobs import TrainArgs, check_job, default_dataset, trainer_defaults
    from oarl.trainer import OARConfig

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
            raise UsageError(
                f"--resume {known.resume}: no config.yaml there; give the run directory of an `oarl train` "
                "run (runs/<name>)"
            )
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
    dataset = known.dataset or from_yaml.get("dataset", default_dataset(model))

    use_cpu = from_yaml.get("use_cpu", False) if known.use_cpu is None else known.use_cpu
    try:
        use_cpu = string_to_bool(use_cpu) if isinstance(use_cpu, str) else bool(use_cpu)
    except argparse.ArgumentTypeError:
        use_cpu = False  # the parser below reports the bad value

    parser = Parser((TrainArgs, OARConfig), prog="oarl train", formatter_class=Formatter)
    defaults = {**trainer_defaults(model, dataset, use_cpu, AUTO_DIR), "dataset": dataset}
    parser.set_defaults(**defaults)
    try:
        train_args, config, unknown_keys, unknown_args = parser.parse_args_and_config(
            argv, return_remaining_strings=True, separate_remaining_strings=True
        )
    except ValueError as exc:
        given = any(a.split("=")[0] in ("--generation_batch_size", "--steps_per_generation") for a in argv) or {
            "generation_batch_size",
            "steps_per_generation",
        } & set(from_yaml)
        if "generation_batch_size" not in defaults or "generation_batch_size" not in str(exc) or given:
            raise
        raise UsageError(
            f"{str(exc).rstrip('.')}: this job samples the completions of several steps in one "
            f"generation call (generation_batch_size {defaults['generation_batch_size']}); with another "
            "--per_device_train_batch_size, give --generation_batch_size too, a multiple of it (times "
            "the number of processes)"
        ) from None
    if unknown_args:
        raise UsageError(
            f"unknown flag {unknown_args[0]}.{unknown_flags_hint(parser, unknown_args)} (see `oarl train --help`)"
        )
    if unknown_keys:
        key = unknown_keys[0][2:]
        fields = [*TrainArgs.__dataclass_fields__, *OARConfig.__dataclass_fields__]
        raise UsageError(
            f"unknown key {key!r} in {known.config}.{did_you_mean(key, fields)} (the keys are the "
            "flags of `oarl train --help`)"
        )
    check_job(train_args, config)
    return train_args, config


def _read_yaml(path: str):
    """The settings of a ``--config`` file (``yaml.safe_load``: plain values only); UsageError with the line for invalid
    YAML, a tag (``!!python/object``: a config never builds objects) or a file that is not UTF-8 text."""
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"--config {path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at byte {exc.start + 1})"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        if isinstance(exc, yaml.constructor.ConstructorError) and "tag" in problem:
            tag = problem.split("tag", 1)[1].strip(" '").replace("tag:yaml.org,2002:", "!!")
            raise UsageError(
                f"--config {path}: the YAML tag {tag}{where} is not read: a config holds plain values "
                "(numbers, text, true/false, lists)"
            ) from None
        raise UsageError(f"--config {path}: invalid YAML{where}: {problem}") from None


def run_train(train_args: TrainArgs, config) -> dict:
    """Train, evaluate, save. Returns the summary (also written to ``run_dir/summary.json``).

    Bad arguments (model path, dataset, template) raise before anything is written; a run that fails before
    its held-out evaluation or first checkpoint leaves no run directory behind. Ctrl-C raises
    ``oarl.errors.Interrupted`` with the command that continues the run."""
    # lazy: torch, transformers and TRL load when a run starts
    from oarl.jobs import check_heldout_backend, check_sources
    from oarl.runs import WallClock, disk_full_message, resume_point

    check_sources(train_args)
    check_heldout_backend(train_args, config)
    resume = train_args.resume
    if resume:
        run_dir = Path(resume)
    elif config.output_dir != AUTO_DIR:
        run_dir = Path(config.output_dir)
    else:
        run_dir = (
            Path(train_args.runs_dir)
            / f"{config.credit}-{Path(train_args.model).name}-{time.strftime('%Y%m%d-%H%M%S')}"
        )
    # With several processes (accelerate launch) every one runs this function; the main one alone checks, reads and
    # writes the run folder's own files, and the others wait for it: a check on each would race with the main one's
    # writes (a rank that saw another's config.yaml refused the run).
    main = config.process_index == 0
    if main and not resume and (run_dir / "config.yaml").exists():
        raise UsageError(f"{run_dir} already holds a run: pick another --output_dir, or --resume {run_dir}")
    if main:
        checkpoint, to_train = resume_point(run_dir, config) if resume else (None, True)
    if config.world_size > 1:
        config.distributed_state.wait_for_everyone()
    if not main:
        with contextlib.redirect_stdout(io.StringIO()):  # the main process has said it
            checkpoint, to_train = resume_point(run_dir, config) if resume else (None, True)
    if to_train is None:
        return json.loads((run_dir / "summary.json").read_text())
    worth_keeping = lambda: (run_dir / "heldout_before.json").exists() or any(run_dir.glob("checkpoint-*"))  # noqa: E731
    try:
        with removed_on_failure(run_dir, keep=worth_keeping) if main else contextlib.nullcontext():
            return train_in(train_args, config, run_dir, checkpoint, to_train)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (oarl.errors.Terminated)
        if not run_dir.is_dir():
            raise Interrupted(f"{stopped(exc)} before training began; nothing to resume") from exc
        WallClock.count_until_now(run_dir / "wall_time.json")
        raise Interrupted(f"{stopped(exc)}; continue with: oarl train --resume {shlex.quote(str(run_dir))}") from exc
    except Exception as exc:
        if (why := disk_full(exc, run_dir if run_dir.is_dir() else run_dir.parent)) is None:
            raise
        raise DiskFull(disk_full_message(why, run_dir)) from exc


def train_in(
    train_args: TrainArgs, config, run_dir: Path, checkpoint: Path | None = None, to_train: bool = True
) -> dict:
    """The run in ``run_dir``, from ``checkpoint`` if given; ``to_train=False``: only the end of a run whose
    checkpoint reached max_steps (the weights of the checkpoint, held-out evaluation, final_model, summary)."""
    # lazy: torch, transformers and TRL load when a run starts
    from transformers import PrinterCallback, TrainerState

    from oarl.evaluate import evaluate_model
    from oarl.generation import CPU_KV_CACHE_GIB
    from oarl.jobs import find_job, load_model_and_data
    from oarl.report.plots import make_plots
    from oarl.runs import (
        HELDOUT_BEFORE,
        HeldoutEval,
        MetricsWriter,
        Progress,
        WallClock,
        format_summary,
        heldout_curve,
        heldout_row,
        resolved_config,
        save_heldout_before,
        truncate_metrics,
    )
    from oarl.trainer import OARTrainer

    precision = (
        "bf16 mixed precision (--bf16 false: float32)"
        if config.bf16
        else "fp16 mixed precision"
        if config.fp16
        else "float32"
    )
    logging.getLogger(__name__).info("training on %s in %s", config.device, precision)  # oarl.devices' choice, or flags
    main = config.process_index == 0  # the only process that writes the run folder's own files (see run_train)
    clock = WallClock(run_dir / "wall_time.json", resumed=bool(train_args.resume))
    config.output_dir = str(run_dir)
    config.run_name = run_dir.name
    if main:
        clock.save()  # from now on a Ctrl-C is counted (WallClock.count_until_now)
        with open(run_dir / "config.yaml", "w") as f:
            job = find_job(train_args.model, train_args.dataset)
            keep = tuple(job.defaults()) if job else ()  # the job's settings, written even where they are defaults
            yaml.safe_dump(resolved_config(train_args, config, keep), f, sort_keys=False)

    loaded = load_model_and_data(train_args, config)
    model, tokenizer, heldout, chat = loaded.model, loaded.tokenizer, loaded.heldout, loaded.chat

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
            max_new_tokens = loaded.max_new_tokens.get(split, config.max_completion_length)
            backend = trainer.generation_backend(add_special_tokens=not chat) if trainer is not None else None
            heldout_backend = "vllm" if backend is not None else "hf"
            res = evaluate_model(
                m,
                tokenizer,
                rows,
                n=loaded.eval_samples,
                k_list=[1],
                prompt_template="{problem}",
                chat=chat,
                temperature=config.temperature,
                max_new_tokens=max_new_tokens,
                seed=config.seed,
                backend=backend,
                progress=True,
                progress_desc=f"held-out {split} ({when})",
                return_samples=True,
            )
            by_problem: dict = {}
            for sample in res["samples"]:
                by_problem.setdefault(sample["id"], []).append(float(sample["correct"]))
            out[split] = {
                "avg": res["avg@n"],
                "se": res["avg@n_se"],
                "n_problems": len(rows),
                "n_samples": loaded.eval_samples,
                "per_problem": [round(sum(c) / len(c), 4) for c in by_problem.values()],
            }
        m.train(was_training)
        return out

    start_step = 0 if checkpoint is None else int(checkpoint.name.split("-")[-1])
    if train_args.resume and main:  # finishing without training logs the "after" row of the last step again
        truncate_metrics(run_dir / "metrics.jsonl", start_step, heldout_at_last=to_train)

    if config.use_vllm and config.use_cpu:  # a fixed key/value cache for vLLM's CPU backend (see oarl.generation)
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(CPU_KV_CACHE_GIB))
    config.disable_tqdm = True
    trainer = OARTrainer(
        model=model,
        reward_funcs=loaded.reward_funcs,
        args=config,
        train_dataset=loaded.train,
        processing_class=tokenizer,
        callbacks=[
            MetricsWriter(run_dir, clock),
            Progress(start_step),
            HeldoutEval(run_dir, evaluate_heldout, train_args.eval_every),
        ],
    )
    before_file = run_dir / HELDOUT_BEFORE
    if not main:
        before = {}
    elif before_file.exists():
        before = json.loads(before_file.read_text())
    else:
        before = evaluate_heldout(model, "before")
        save_heldout_before(run_dir, before)

    trainer.remove_callback(PrinterCallback)  # our bar shows the live numbers; metrics.jsonl keeps them all
    if to_train:
        clock.start_training()
        trainer.train(resume_from_checkpoint=None if checkpoint is None else str(checkpoint))
        clock.stop_training()
    else:  # what Trainer.train loads before its first step (it would then train one more)
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
                f.write(json.dumps({"step": trainer.state.global_step, **heldout_row(after)}) + "\n")
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
