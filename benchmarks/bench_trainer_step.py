"""Wall time of an OARTrainer step per credit estimator, in a real TRL GRPO run, against credit="none".

    python benchmarks/bench_trainer_step.py [--steps 8 --warmup 4 --repeats 3 --threads 2 --model tiny
                                             --perturbation-chunk-size 32 --steps-per-generation 4 --json out.json]

bench_estimators.py times the estimators alone on a synthetic batch; this one times what a user pays: the
whole training step (generation, reward, credit, loss, backward, optimizer) of OARTrainer on the embedded job.

Setup, identical for every estimator: the model from ``oarl.models.loading.load_model(--model)`` (default the
embedded warm-started tiny model), loaded once and deep-copied for each run; the embedded arithmetic train
prompts and reward (``oarl.data.arithmetic``); the embedded regime's RL settings
(``DEFAULT_REGIME.grpo_kwargs()``, max_steps overridden), same seed, on CPU in float32. A non-embedded model
gets the same plain-text arithmetic prompts: only the cost is measured here, not the learning.

Generation cycles. With steps_per_generation = S > 1 (the embedded regime uses S = 4), TRL generates (and
OARTrainer computes the credit of) S optimizer steps' worth of completions at the first step of a cycle and
reuses them for the next S - 1 steps, which only do the loss forward/backward. Per-step times are then
bimodal, so the unit of measurement is the cycle: ``step`` is the cycle's wall time divided by S (the
amortized cost of one optimizer step), ``gen step`` the time of the cycle's generating step alone, ``credit``
the one credit pass of the cycle. --steps and --warmup must be multiples of S. --steps-per-generation 1 gives
one generation per optimizer step.

Measured, per step, from TRL's own logs (a TrainerCallback, logging_steps=1): ``step_time`` (the wall time of
``training_step``: generation + scoring + credit + forward/backward; the optimizer step is outside it) and
``credit/time_s`` (the time spent in ``oarl.credit.token_advantages``). The first ``--warmup`` steps of every
run are discarded.

Timings on a shared CPU are noisy (other users' load changes within minutes), so the estimators are
interleaved step by step: the runs of one round live in one process, each in its own thread, and take turns
(none step 1, gradient step 1, perturbation step 1, entropy step 1, none step 2, ...). Only the thread holding
the turn runs, so a run never competes with another one for the CPU, and each run keeps its own random state
across the hand-overs, so it samples exactly what it would sample alone. With ``--repeats`` > 1, further rounds
of fresh runs follow with the order rotated. The table gives medians over all measured cycles; cycles of the
same index see the same prompts in every run. Besides TRL's wall-clock ``step_time``, the process CPU time of
every step (``on_step_begin`` to ``on_step_end``, which also covers the optimizer step) is recorded: it is far
less sensitive to other processes than wall time. The load average is recorded at every step.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
import warnings

import torch

ESTIMATORS = ("none", "gradient", "perturbation", "entropy")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="measured optimizer steps per run, a multiple of steps_per_generation (default: 2 cycles)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="steps discarded at the start of every run, a multiple of steps_per_generation (default: 1 cycle)",
    )
    parser.add_argument(
        "--steps-per-generation",
        type=int,
        default=None,
        help="optimizer steps per generation batch (default: the embedded regime's)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="rounds over all estimators (order rotated each round); medians over all rounds",
    )
    parser.add_argument(
        "--model",
        default="tiny",
        help="'tiny' (embedded, default), a model directory or a name that oarl.models.loading.load_model accepts",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument(
        "--perturbation-chunk-size",
        type=int,
        default=None,
        help="credit_chunk_size (OAR-P variants per forward); default: OARConfig's",
    )
    parser.add_argument(
        "--estimators",
        default=",".join(ESTIMATORS),
        help="comma-separated subset of " + ",".join(ESTIMATORS) + " ('none' is always run)",
    )
    parser.add_argument("--json", default=None, help="write every per-step number and the summary here")
    args = parser.parse_args(argv)
    estimators = [e.strip() for e in args.estimators.split(",") if e.strip()]
    unknown = sorted(set(estimators) - set(ESTIMATORS))
    if unknown:
        parser.error(f"unknown estimator(s) {unknown}; choose from {ESTIMATORS}")
    args.estimators = ["none"] + [e for e in ESTIMATORS if e in estimators and e != "none"]
    if args.repeats < 1 or args.threads < 1 or (args.steps_per_generation or 1) < 1:
        parser.error("--repeats, --threads and --steps-per-generation must be >= 1")
    return args


def quiet():
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    logging.getLogger("trl").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def rng_state():
    import numpy as np

    return torch.get_rng_state(), random.getstate(), np.random.get_state()


def set_rng_state(state) -> None:
    import numpy as np

    torch.set_rng_state(state[0])
    random.setstate(state[1])
    np.random.set_state(state[2])


class Turns:
    """Round-robin among runs in threads: only the holder runs; the turn passes at step boundaries."""

    def __init__(self, names):
        self.order = list(names)
        self.holder = self.order[0]
        self.cond = threading.Condition()

    def wait(self, name) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.holder == name)

    def pass_on(self, name, leave: bool = False) -> None:
        with self.cond:
            i = self.order.index(name)
            following = self.order[(i + 1) % len(self.order)]
            if leave:
                self.order.remove(name)
            self.holder = None if following == name and leave else following
            self.cond.notify_all()


def make_callback(name: str, turns: Turns, rng):
    from transformers import TrainerCallback

    class TakeTurnsAndRecord(TrainerCallback):
        """Hands the turn over before every step but the first; records TRL's step logs, CPU time and load."""

        def __init__(self):
            self.rng = rng  # this run's random state while another run holds the turn
            self.first = True
            self.cpu, self.load, self.logs = [], [], []
            self._cpu0 = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            if not self.first:
                self.rng = rng_state()
                turns.pass_on(name)
                turns.wait(name)
                set_rng_state(self.rng)
            self.first = False
            self.load.append(os.getloadavg()[0])
            self._cpu0 = time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            self.cpu.append(time.process_time() - self._cpu0)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "step_time" in logs:
                self.logs.append({"step": state.global_step, **logs})

    return TakeTurnsAndRecord()


def resolve_cycle(args) -> None:
    """steps_per_generation (S) from the regime unless given; --steps / --warmup default to 2 / 1 cycles."""
    from oarl.data import arithmetic

    regime = arithmetic.DEFAULT_REGIME
    grpo = regime.grpo_kwargs()
    regime_s = max(
        1, grpo.get("generation_batch_size", grpo["per_device_train_batch_size"]) // grpo["per_device_train_batch_size"]
    )
    cycle = args.steps_per_generation = args.steps_per_generation or regime_s
    args.steps = 2 * cycle if args.steps is None else args.steps
    args.warmup = cycle if args.warmup is None else args.warmup
    if args.steps < cycle or args.steps % cycle or args.warmup < 0 or args.warmup % cycle:
        raise SystemExit(
            f"--steps (>= 1 cycle) and --warmup must be multiples of steps_per_generation = {cycle}, "
            f"got {args.steps} and {args.warmup}"
        )


def grpo_settings(args) -> dict:
    from oarl.data import arithmetic

    grpo = arithmetic.DEFAULT_REGIME.grpo_kwargs()
    grpo["max_steps"] = args.warmup + args.steps
    grpo["generation_batch_size"] = args.steps_per_generation * grpo["per_device_train_batch_size"]
    return grpo


def build(credit, base_model, base_tokenizer, dataset, args, workdir, turns):
    """An OARTrainer for warmup + steps steps on a fresh copy of the model, and its callback."""
    from transformers import PrinterCallback

    from oarl import OARConfig, OARTrainer
    from oarl.data import arithmetic

    grpo = grpo_settings(args)
    extra = {} if args.perturbation_chunk_size is None else {"credit_chunk_size": args.perturbation_chunk_size}
    config = OARConfig(
        output_dir=os.path.join(workdir, credit),
        credit=credit,
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
        bf16=False,
        activation_checkpointing=False,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        **extra,
        **grpo,
    )
    trainer = OARTrainer(
        model=copy.deepcopy(base_model),
        reward_funcs=[arithmetic.reward],
        args=config,
        train_dataset=dataset,
        processing_class=copy.deepcopy(base_tokenizer),
    )
    trainer.remove_callback(PrinterCallback)
    # The random state right after construction (which seeds): what a run started now alone would continue from.
    callback = make_callback(credit, turns, rng_state())
    trainer.add_callback(callback)
    return trainer, callback


def run_round(order, base_model, base_tokenizer, dataset, args, workdir) -> list[dict]:
    """One run per estimator, interleaved step by step (see the module docstring); per-step numbers."""
    turns = Turns(order)
    built = {credit: build(credit, base_model, base_tokenizer, dataset, args, workdir, turns) for credit in order}
    errors = {}

    def work(credit):
        trainer, callback = built[credit]
        torch.set_num_threads(args.threads)  # OpenMP's thread count is per thread
        turns.wait(credit)
        set_rng_state(callback.rng)
        try:
            trainer.train()
            if torch.get_num_threads() != args.threads:
                raise RuntimeError(f"something changed torch's thread count to {torch.get_num_threads()}")
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors[credit] = e
        finally:
            turns.pass_on(credit, leave=True)

    threads = [threading.Thread(target=work, args=(credit,), name=f"bench-{credit}") for credit in order]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        credit, error = next(iter(errors.items()))
        raise RuntimeError(f"the {credit!r} run failed: {error!r}") from error

    runs = []
    for credit in order:
        trainer, callback = built[credit]
        rows = callback.logs
        if len(rows) != args.warmup + args.steps or len(callback.cpu) != len(rows):
            raise RuntimeError(f"{credit}: expected {args.warmup + args.steps} step logs, got {len(rows)}")
        if trainer.args.steps_per_generation != args.steps_per_generation:
            raise RuntimeError(
                f"TRL runs {trainer.args.steps_per_generation} steps per generation, "
                f"expected {args.steps_per_generation}"
            )
        # one credit pass per generation cycle (credit="none" leaves TRL untouched and logs no credit metrics)
        generated = [i for i, r in enumerate(rows) if r.get("credit/time_s") is not None]
        if credit != "none" and generated != list(range(0, len(rows), args.steps_per_generation)):
            raise RuntimeError(f"{credit}: credit passes at steps {generated}, expected one at every cycle start")

        def column(key):
            return [r.get(key) for r in rows]

        runs.append(
            {
                "credit": credit,
                "step_time": column("step_time"),
                "cpu_time": callback.cpu,
                "credit_time": column("credit/time_s"),
                "skipped_frac": column("credit/skipped_frac"),
                "no_answer_frac": column("credit/no_answer_frac"),
                "completion_length": column("completions/mean_length"),
                "reward": column("reward"),
                "load1": callback.load,
                "warmup": args.warmup,
                "steps_per_generation": args.steps_per_generation,
                "chunk_size": trainer.args.credit_chunk_size,
            }
        )
    return runs


def cycles(run: dict, key: str, how: str) -> list[float]:
    """One number per measured generation cycle: the cycle's steps summed / S ('mean'), or its first step."""
    size = run["steps_per_generation"]
    values = run[key][run["warmup"] :]
    chunks = [values[i : i + size] for i in range(0, len(values), size)]
    return [sum(c) / size if how == "mean" else c[0] for c in chunks]


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def summarize(runs: list[dict], estimators: list[str]) -> dict:
    summary = {}
    none_runs = {r["round"]: r for r in runs if r["credit"] == "none"}
    for credit in estimators:
        mine = [r for r in runs if r["credit"] == credit]
        steps = [v for r in mine for v in cycles(r, "step_time", "mean")]

        def first(key):
            return median([v for r in mine for v in cycles(r, key, "first")])

        # Paired: cycle k of round r against cycle k of round r of none (same prompts, run back to back), then
        # the median of those ratios: less exposed to slow drifts of the machine's load.
        paired = [
            a / b
            for r in mine
            for a, b in zip(cycles(r, "step_time", "mean"), cycles(none_runs[r["round"]], "step_time", "mean"))
        ]
        summary[credit] = {
            "step_time_median": median(steps),
            "step_time_min": min(steps),
            "step_time_max": max(steps),
            "step_time_round_medians": [median(cycles(r, "step_time", "mean")) for r in mine],
            "paired_step_ratio_median": median(paired),
            "generation_step_time_median": first("step_time"),
            "cpu_time_median": median([v for r in mine for v in cycles(r, "cpu_time", "mean")]),
            "credit_time_median": first("credit_time"),
            "skipped_frac_median": first("skipped_frac"),
            "completion_length_median": first("completion_length"),
            "n_cycles": len(steps),
        }
    none = summary["none"]
    for s in summary.values():
        s["step_ratio_to_none"] = s["step_time_median"] / none["step_time_median"]
        s["cpu_ratio_to_none"] = s["cpu_time_median"] / none["cpu_time_median"]
        s["credit_time_over_none_step"] = s["credit_time_median"] / none["step_time_median"]
    return summary


def print_table(summary: dict, args, meta: dict) -> None:
    cycle = args.steps_per_generation
    print()
    print(
        f"OARTrainer step time, model {meta['model']} ({meta['params'] / 1e6:.2f}M params), "
        f"{meta['completions_per_step']} completions per optimizer step (<= {meta['max_completion_length']} "
        f"tokens), {cycle} step(s) per generation, {args.threads} torch thread(s), "
        f"credit_chunk_size {meta['chunk_size']}"
    )
    print(
        f"medians over {args.repeats} round(s) x {args.steps // cycle} measured generation cycle(s) of {cycle} "
        f"step(s) per estimator, estimators interleaved step by step, {args.warmup} warm-up step(s) per run "
        "discarded; shared CPU: noisy"
    )
    header = (
        f"{'credit':13s} {'step [s]':>9s} {'min-max [s]':>13s} {'x none':>7s} {'paired':>7s} "
        f"{'gen step [s]':>13s} {'cpu [s]':>8s} {'x none':>7s} {'credit [s]':>11s} {'credit/none step':>17s} "
        f"{'skipped':>8s} {'len':>5s}  per-round [s]"
    )
    print(header)
    print("-" * len(header))
    for credit, s in summary.items():
        rounds = " ".join(f"{v:.2f}" for v in s["step_time_round_medians"])
        spread = f"{s['step_time_min']:.2f}-{s['step_time_max']:.2f}"
        print(
            f"{credit:13s} {s['step_time_median']:9.3f} {spread:>13s} {s['step_ratio_to_none']:7.2f} "
            f"{s['paired_step_ratio_median']:7.2f} {s['generation_step_time_median']:13.3f} "
            f"{s['cpu_time_median']:8.2f} {s['cpu_ratio_to_none']:7.2f} {s['credit_time_median']:11.3f} "
            f"{s['credit_time_over_none_step']:17.2f} {s['skipped_frac_median']:8.2f} "
            f"{s['completion_length_median']:5.1f}  {rounds}"
        )
    print()
    print("step: TRL's step_time (wall clock of generation + reward + credit + loss forward/backward), summed over a")
    print(f"generation cycle and divided by its {cycle} step(s): the amortized cost of one optimizer step;")
    print("x none: ratio of medians to credit='none'; paired: median over (round, cycle) of the ratio to none's")
    print("cycle of the same index in the same round (same prompts, run back to back); gen step: the cycle's")
    print("generating step alone (generation, reward, credit, its loss); cpu: process CPU time per optimizer step")
    print("(also covers the optimizer), less sensitive to other users' load; credit: credit/time_s of the cycle's")
    print(f"one credit pass ({cycle * meta['completions_per_step']} completions, wall clock); credit/none step: that")
    print("pass in units of one plain (credit='none') optimizer step; skipped: share of completions with a zero")
    print("advantage (no importance computed); len: mean completion length (tokens).")
    loads = meta["load1"]
    print(
        f"load average (1 min) at the steps: min {min(loads):.2f}, median {median(loads):.2f}, "
        f"max {max(loads):.2f} on {os.cpu_count()} CPU(s); at start (1/5/15 min): {meta['uptime_start']}"
    )


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet()
    resolve_cycle(args)
    from oarl.data import arithmetic
    from oarl.models.loading import load_model

    uptime_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    model, tokenizer = load_model(args.model)
    regime = arithmetic.DEFAULT_REGIME
    n_rows = regime.rl_prompts_per_step * (args.warmup + args.steps) * 4
    rows = arithmetic.problems("train", n_rows, seed=regime.seed)
    dataset = arithmetic.as_dataset([{"prompt": r["prompt"], "answer": r["answer"]} for r in rows])

    runs = []
    with tempfile.TemporaryDirectory(prefix="bench_trainer_step-") as workdir:
        for round_ in range(args.repeats):
            shift = round_ % len(args.estimators)
            order = args.estimators[shift:] + args.estimators[:shift]
            for run in run_round(order, model, tokenizer, dataset, args, workdir):
                run["round"] = round_
                runs.append(run)
                print(
                    f"round {round_ + 1}/{args.repeats} {run['credit']:12s} step "
                    + " ".join(f"{v:.2f}" for v in run["step_time"])
                    + "  cpu "
                    + " ".join(f"{v:.2f}" for v in run["cpu_time"])
                    + "  credit "
                    + " ".join(f"{v:.3f}" for v in run["credit_time"] if v is not None),
                    flush=True,
                )

    summary = summarize(runs, args.estimators)
    grpo = grpo_settings(args)
    meta = {
        "model": args.model,
        "params": sum(p.numel() for p in model.parameters()),
        "completions_per_step": grpo["per_device_train_batch_size"],
        "max_completion_length": grpo["max_completion_length"],
        "chunk_size": runs[0]["chunk_size"],
        "load1": [x for r in runs for x in r["load1"]],
        "uptime_start": uptime_start,
    }
    print_table(summary, args, meta)
    if args.json:
        out = {
            "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "args": vars(args),
            "meta": {
                **meta,
                "cpu_count": os.cpu_count(),
                "platform": platform.platform(),
                "torch": torch.__version__,
                "threads": args.threads,
            },
            "summary": summary,
            "runs": runs,
        }
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
