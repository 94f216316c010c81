"""OARTrainer step time with generation by vLLM (TRL's colocated engine) against HF ``generate``, in one process.

    python benchmarks/bench_train_vllm.py --model tiny           [--steps 8 --rounds 2 --threads 2]
    python benchmarks/bench_train_vllm.py --model smollm2-135m   [--steps 2 --rounds 2]

Needs vLLM (the CPU build: `make install-vllm`, then run it with .venv-vllm/bin/python). Two trainers on the same
model, prompts, reward and settings, one with ``use_vllm=True`` (``vllm_mode="colocate"``, the engine in this
process, weights synced by vLLM's in-place reload on its CPU backend), one generating with HF ``generate``; both
with ``credit="gradient"`` (OAR-G). They take turns: each round runs ``--steps`` optimizer steps of one
(``trainer.train()``), then of the other; the first round of each is warm-up and discarded. Reported: the wall
time per optimizer step (generation, reward, credit, loss, backward, optimizer; TRL's ``step_time`` covers all but
the optimizer), its median over rounds, and the ratio HF / vLLM.

Settings: ``tiny`` is the embedded default job (``oarl train``'s RL settings: 8 prompts x 8 completions of up to
48 characters per generation, a generation every 4 optimizer steps); ``smollm2-135m`` (or any other model) gets
8 prompts x 4 completions of up to ``--max-completion-length`` tokens (default 128), a generation every step, on
the same plain-text arithmetic prompts (only the cost is measured here, not the learning).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time

import torch


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="'tiny', 'smollm2-135m' or a model directory")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per round (default: 8 tiny, 2 else)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per trainer, the first is warm-up (default: 3)")
    parser.add_argument("--max-completion-length", type=int, default=128, help="for models other than tiny")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    args = parser.parse_args(argv)

    from oarl import OARConfig, OARTrainer
    from oarl.data import arithmetic
    from oarl.data.arithmetic import DEFAULT_REGIME
    from oarl.devices import ACTIVATION_CHECKPOINTING
    from oarl.models.loading import load_model, model_directory

    torch.set_num_threads(args.threads)
    tiny = args.model == "tiny"
    steps = args.steps or (8 if tiny else 2)
    model, tokenizer = load_model(model_directory(args.model))
    rows = arithmetic.problems("train", 256, seed=0)
    dataset = arithmetic.as_dataset([{"prompt": r["prompt"], "answer": r["answer"]} for r in rows])
    settings = (
        DEFAULT_REGIME.grpo_kwargs()
        if tiny
        else dict(
            per_device_train_batch_size=32,
            num_generations=4,
            steps_per_generation=1,
            max_completion_length=args.max_completion_length,
            learning_rate=1e-6,
            temperature=1.0,
        )
    )
    workdir = tempfile.mkdtemp(prefix="bench_train_vllm_")
    common = {
        **settings,
        "max_steps": steps,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "seed": 0,
        "bf16": False,
        "use_cpu": True,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
        "credit": "gradient",
        ACTIVATION_CHECKPOINTING: False,
    }
    trainers = {}
    started = time.perf_counter()
    for name, extra in (
        ("vllm", dict(use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=0.2)),
        ("hf", {}),
    ):
        cfg = OARConfig(output_dir=os.path.join(workdir, name), **common, **extra)
        trainers[name] = OARTrainer(
            model=copy.deepcopy(model),
            reward_funcs=[arithmetic.reward],
            args=cfg,
            train_dataset=dataset,
            processing_class=tokenizer,
        )
        if name == "vllm":
            print(f"vLLM trainer (engine start included) ready in {time.perf_counter() - started:.1f} s", flush=True)
    print(
        f"{args.model}: {steps} steps per round, {args.rounds} rounds (first discarded), {args.threads} threads; "
        f"settings {settings}; load average {load_average()}",
        flush=True,
    )

    per_step = {name: [] for name in trainers}
    lengths = {name: [] for name in trainers}
    for round_ in range(args.rounds):
        for name, trainer in trainers.items():
            t0 = time.perf_counter()
            trainer.train()
            seconds = (time.perf_counter() - t0) / steps
            logs = [r for r in trainer.state.log_history if "completions/mean_length" in r]
            print(
                f"round {round_} {name}: {seconds:.2f} s/step, completion length "
                f"{statistics.fmean(r['completions/mean_length'] for r in logs):.1f} (load average {load_average()})",
                flush=True,
            )
            if round_ > 0:
                per_step[name].append(seconds)
                lengths[name] += [r["completions/mean_length"] for r in logs]

    med = {name: statistics.median(v) for name, v in per_step.items()}
    print(f"\n{'generation':<10} {'s/step (median)':>16} {'completion length':>18}")
    for name in trainers:
        print(f"{name:<10} {med[name]:>16.2f} {statistics.fmean(lengths[name]):>18.1f}")
    print(f"step time HF / vLLM: {med['hf'] / med['vllm']:.2f}x; load average {load_average()}")


if __name__ == "__main__":
    main()
