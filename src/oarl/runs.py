"""The run directory of ``oarl train`` and what reads it: its files, resume, wall time, the held-out curve and gain.

A run directory ``runs/<name>/`` holds ``config.yaml`` (``resolved_config``: re-runnable with ``oarl train
--config``), ``metrics.jsonl`` (one row per logged step, written by ``MetricsWriter``; held-out rows from
``HeldoutEval`` and the run), ``heldout_before.json``, ``wall_time.json`` (``WallClock``), ``plots/*.png``, TRL
checkpoints (``checkpoint-*``, each with oarl's ``oarl_state*.pt``), ``final_model/`` and ``summary.json``
(``format_summary`` prints it). ``resume_point`` says where ``oarl train --resume RUN`` continues;
``heldout_curve`` and ``heldout_gain`` are what ``oarl compare`` reads of a run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import shutil
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from tqdm.auto import tqdm
from transformers import TrainerCallback

from oarl.devices import ACTIVATION_CHECKPOINTING
from oarl.errors import UsageError

if TYPE_CHECKING:
    from oarl.jobs import TrainArgs

HELDOUT_BEFORE = "heldout_before.json"  # the held-out numbers before training (a resumed run reuses them)
# Per-run values, and fields that GRPOConfig derives from others (writing them too would conflict on reload;
# gradient_checkpointing is derived from activation_checkpointing since transformers 5.20, see
# oarl.devices.ACTIVATION_CHECKPOINTING).
SKIPPED_IN_CONFIG = (
    "resume",
    "output_dir",
    "run_name",
    "logging_dir",
    "steps_per_generation",
    "gradient_checkpointing",
)


def resolve_model_path(model: str) -> str:
    """An `oarl train` run directory means its final model (``<run>/final_model``)."""
    path = Path(model).expanduser()
    if (path / "final_model").is_dir() and not (path / "config.json").is_file():
        return str(path / "final_model")
    return model


def resolved_config(train_args: TrainArgs, config, keep: tuple[str, ...] = ()) -> dict:
    """The run's settings as a YAML-able dict: every TrainArgs field, the credit settings, and the OARConfig
    fields that differ from their dataclass defaults (so that the file re-loads with ``oarl train --config``
    into the same settings). ``keep``: fields to write even at their dataclass default (the job's own defaults)."""
    skipped = set(SKIPPED_IN_CONFIG) - {ACTIVATION_CHECKPOINTING}
    out = {k: v for k, v in dataclasses.asdict(train_args).items() if k not in skipped}
    defaults = type(config).__dataclass_fields__
    for name, f in defaults.items():
        if not f.init or name.startswith("_") or name in skipped:
            continue
        value = getattr(config, name)
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else (f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
        )
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


# ------------------------------------------------------------------------------------------------ files


def save_heldout_before(run_dir: Path, before: dict) -> None:
    """The held-out numbers before training ({split: {avg, se, ...}}) into ``HELDOUT_BEFORE``, which a resumed
    run reuses, and as the step-0 row of metrics.jsonl."""
    (run_dir / HELDOUT_BEFORE).write_text(json.dumps(before, indent=2))
    if before:
        with open(run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": 0, **heldout_row(before)}) + "\n")


def heldout_row(numbers: dict) -> dict:
    return {f"heldout/{split}": r["avg"] for split, r in numbers.items()}


def jsonable(v) -> bool:
    return isinstance(v, (str, int, bool, type(None))) or (isinstance(v, float) and math.isfinite(v))


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
        _replace_json(
            self.path,
            {
                "seconds": self.seconds(),
                "sessions": self.sessions,
                "train_seconds": self.train_seconds,
                "saved_at": time.time(),
                "training": self.train_started is not None,
            },
        )

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


def last_complete_checkpoint(run_dir: Path) -> Path | None:
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


def truncate_metrics(path: Path, last_step: int, heldout_at_last: bool = True) -> None:
    """Drop rows logged after the checkpoint we resume from: they will be logged again; with
    ``heldout_at_last=False`` also the held-out rows of ``last_step`` (a finished run's "after" row)."""
    if not path.exists():
        return
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    kept = [
        r
        for r in rows
        if r["step"] < last_step
        or r["step"] == last_step
        and (heldout_at_last or not any(k.startswith("heldout/") for k in r))
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))


# ------------------------------------------------------------------------------------------------ resume


def resume_point(run_dir: Path, config) -> tuple[Path | None, bool | None]:
    """Where ``--resume RUN`` continues: (the last complete checkpoint or None, whether steps remain to train;
    None: the run is complete, nothing to do). Prints one line: the run is complete (and how to train further),
    or from which step to which step it continues. The target is ``config.max_steps`` (the run's own, unless a
    new ``--max_steps`` is given); with -1 (epochs) and the run's num_train_epochs, the one TRL recorded in the
    checkpoint. Raises UsageError for a new max_steps the run has already reached, and for a finished run that
    saved no checkpoint to continue from."""
    checkpoint = last_complete_checkpoint(run_dir)
    state = json.loads((checkpoint / "trainer_state.json").read_text()) if checkpoint else {}
    done = state.get("global_step", 0)
    summary = run_dir / "summary.json"
    finished = json.loads(summary.read_text())["steps"] if summary.is_file() else None
    saved = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    epochs = type(config).__dataclass_fields__["num_train_epochs"].default
    same_target = config.max_steps == saved.get("max_steps", -1) and (
        config.max_steps > 0 or config.num_train_epochs == saved.get("num_train_epochs", epochs)
    )
    target = config.max_steps if config.max_steps > 0 else (state.get("max_steps") or finished) if same_target else None
    reached = max(done, finished or 0)
    quoted = shlex.quote(str(run_dir))
    if target is not None and reached >= target:
        if not same_target:
            raise UsageError(
                f"--max_steps {config.max_steps}: {run_dir} has already trained {reached} steps; give "
                f"more to train further (oarl train --resume {quoted} --max_steps {reached + 1} or more)"
            )
        if finished is not None and finished >= target:  # else a summary of an earlier, shorter target
            print(
                f"{run_dir} is complete ({finished} steps; nothing trained or overwritten); to train further: "
                f"oarl train --resume {quoted} --max_steps N with N > {finished} (in an `oarl compare` folder: "
                "the same compare command with --max_steps N, for every run)"
            )
            return checkpoint, None
        print(
            f"resuming {run_dir}: {checkpoint.name} reached step {target}; finishing without training (held-out "
            "evaluation, final_model, summary.json)"
        )
        return checkpoint, False
    if finished is not None and checkpoint is None:
        raise UsageError(
            f"{run_dir} finished without saving a checkpoint (save_strategy no): nothing to continue "
            "from; start a new run with more steps"
        )
    start = f"{checkpoint.name} (step {done})" if checkpoint else "step 0 (no checkpoint was saved)"
    goal = f"to step {target}" if target is not None else f"for num_train_epochs {config.num_train_epochs:g}"
    print(f"resuming {run_dir} from {start} {goal}")
    return checkpoint, True


def disk_full_message(why: str, run_dir: Path) -> str:
    """One line for a run that stopped on a full disk: where, what a checkpoint takes, how to continue. A checkpoint
    left half-written is removed first (it is never resumed from, and its space is needed)."""
    checkpoint = last_complete_checkpoint(run_dir) if run_dir.is_dir() else None
    size = (
        ""
        if checkpoint is None
        else (
            f"; a checkpoint of this run takes {sum(f.stat().st_size for f in checkpoint.iterdir()) / 2**20:.0f} MiB "
            "(--save_total_limit N keeps the last N)"
        )
    )
    then = (
        f"continue with: oarl train --resume {shlex.quote(str(run_dir))}"
        if run_dir.is_dir()
        else "run the same command again"
    )
    return f"{why} while writing {run_dir}: free space on its disk{size}, then {then}"


# -------------------------------------------------------------------------------------------- callbacks


class MetricsWriter(TrainerCallback):
    """Appends each logged row (with its step) to ``run_dir/metrics.jsonl``; keeps the run's wall time up to date."""

    def __init__(self, run_dir: Path, clock: WallClock):
        self.run_dir, self.clock = run_dir, clock

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            row = {"step": state.global_step, **{k: v for k, v in logs.items() if jsonable(v)}}
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            self.clock.save()


class Progress(TrainerCallback):
    """One bar with the live reward, accuracy and credit overhead; its total is the Trainer's step count (from
    max_steps, or epochs x batches per epoch)."""

    def __init__(self, start_step: int = 0):
        self.start_step = start_step
        self.bar = None
        self.shown = {}  # the last value of each number: steps that reuse a generation batch log no reward
        self.credit_s = self.step_s = 0.0  # running totals for the credit overhead of the run so far

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.bar = tqdm(total=state.max_steps, initial=self.start_step, desc="oarl train", dynamic_ncols=True)

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
    """Held-out evaluation every ``every`` steps (not after the last: the run's own "after" evaluation is that one):
    ``heldout(model, label) -> {split: {avg, ...}}``, its row appended to ``run_dir/metrics.jsonl``."""

    def __init__(self, run_dir: Path, heldout, every: int):
        self.run_dir, self.heldout, self.every = run_dir, heldout, every

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.every and state.global_step % self.every == 0 and state.global_step < state.max_steps:
            numbers = self.heldout(model, f"step {state.global_step}")
            if state.is_world_process_zero and numbers:
                with open(self.run_dir / "metrics.jsonl", "a") as f:
                    f.write(json.dumps({"step": state.global_step, **heldout_row(numbers)}) + "\n")


# -------------------------------------------------------------------------------------------- what a run says


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
        over = (
            f"{next(iter(counts.values()))} problems per split"
            if len(set(counts.values())) == 1
            else ", ".join(f"{n} {split}" for split, n in counts.items()) + " problems"
        )
        n_samples = next(iter(summary["heldout_after"].values()))["n_samples"]
        lines.append(f"(avg@{n_samples} over {over}, ± one standard error)")
    overhead = summary["credit_overhead"]
    lines += [
        f"steps: {summary['steps']}   wall time: {summary['wall_time_s']:.0f} s   "
        f"credit ({summary['credit']}) overhead: {'-' if overhead is None else f'{overhead:.1%}'}",
        f"run directory: {summary['run_dir']}",
    ]
    return "\n".join(lines)
