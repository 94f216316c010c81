"""The GPU check: every path of oarl on one CUDA GPU, end to end, within a 6-minute budget, with a markdown report.

    python benchmarks/gpu_check.py [--output gpu_check.md] [--time-limit 330]
    python benchmarks/gpu_check.py --smoke      # the same code on tiny shapes on the CPU (tests/test_gpu_check.py)

On the project's GPU machine (no network; ../shared/gpu/README.md): ``bash .gpu/run.sh python3 benchmarks/gpu_check.py``
writes the report to ``$OUT/gpu_check.md`` (and ``gpu_check.json``) when ``$OUT`` is set.

(a) ``oarl train`` with no arguments (the default job: the tiny model's warm start, RL with OAR-G, held-out
    evaluation before and after) in a fresh process, from an empty cache (``OARL_CACHE`` in a temporary folder);
(b) every credit estimator for a few steps through ``OARTrainer`` with bf16 and activation checkpointing on, on
    the warm-started tiny model: the device the model and the accelerator ended on, the credit pass's time and the
    share of completions it reshaped;
(c) ``oarl eval`` with the HF backend on (a)'s trained model (arithmetic, 64 problems x 4 samples);
(d) the credit pass at real shapes: Qwen2.5-1.5B and 7B configurations with random weights in bf16 (no
    download), micro-batches of 8 and 4 rows, 256-token prompts, 1,024- and 4,096-token completions (the synthetic
    probes of bench_estimators.py), under bf16 autocast as OARTrainer runs it: time and peak GPU memory of each pass
    relative to a training forward+backward of the same rows (TRL's fused LM head, as its GRPOTrainer runs it;
    OAR-G with checkpointing against the checkpointed training step). OAR-P: 24-token spans and hierarchical
    (spans refined at the Bi-Level threshold 0.4), with and without prefix reuse; token-level on two rows.
    OAR-P costs hundreds of training steps per row at these lengths: each pass runs only if its projected time
    (the reference multiples of ../shared/gpu/README.md times the measured training step) fits in what is left
    of --time-limit, in priority order; the report lists the skipped ones with their projection.

A part that fails is reported (its error) and the check goes on; the exit status is 1 if any part failed.
Uses torch, transformers and TRL APIs of torch 2.11 / transformers 5.17 or older (the GPU machine's torch).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_estimators import fused_forward_backward, synthetic_batch  # noqa: E402
from bench_memory import measure_peak  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ESTIMATORS = ("none", "gradient", "perturbation", "entropy", "grail", "rollout")
SPAN = 24  # tokens per reasoning step of the span and hierarchical OAR-P passes (the reference figures' spans)
# Qwen2.5-1.5B and -7B (their config.json), and a tiny stand-in for --smoke
SHAPES = {
    "1.5B": dict(
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
    "7B": dict(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
        tie_word_embeddings=False,
    ),
    "smoke": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
        tie_word_embeddings=True,
    ),
}
# (d)'s cells: (shape, completion tokens, rows); --smoke: the same passes on tiny shapes
CELLS = [("1.5B", 1024, 8), ("7B", 1024, 4), ("1.5B", 4096, 8), ("7B", 4096, 4)]
SMOKE_CELLS = [("smoke", 48, 4), ("smoke", 96, 2)]
PROMPT_LEN, SMOKE_PROMPT_LEN = 256, 16
# Projected cost of an OAR-P pass per row, in training forward+backward steps of one row at 1,024 tokens (H200,
# 1.5B: token-level 232, with reuse 119; 24-token spans 7.9; ../shared/gpu/README.md), rounded up; hierarchical
# refines about 60% of the steps token by token. It grows about linearly with the completion's length.
OAR_P_STEPS = {
    "spans": 12,
    "spans-reuse": 10,
    "hierarchical": 170,
    "hierarchical-reuse": 90,
    "token": 260,
    "token-reuse": 140,
}
# The smoke run: the default job shortened, and a small warm start that states answers after a few seconds
SMOKE_TRAIN = [
    "--sft_steps",
    "10",
    "--max_steps",
    "1",
    "--eval_size",
    "4",
    "--eval_samples",
    "1",
    "--per_device_train_batch_size",
    "8",
    "--generation_batch_size",
    "8",
    "--num_generations",
    "4",
    "--max_completion_length",
    "24",
]
SMOKE_WARM_START = {
    "model": {"hidden_size": 48, "num_layers": 1, "num_heads": 4, "intermediate_size": 96},
    "steps": 100,
    "batch_size": 32,
    "learning_rate": 5e-3,
    "num_threads": 1,
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU: the check's code, in seconds")
    out = os.environ.get("OUT")
    parser.add_argument(
        "--output",
        default=str(Path(out) / "gpu_check.md") if out else "gpu_check.md",
        help="the markdown report (a .json of the same name beside it); default $OUT/gpu_check.md",
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=330.0,
        help="seconds for the whole check; (d)'s "
        "expensive passes run only while their projected time fits (default: %(default)s)",
    )
    parser.add_argument("--parts", default="a,b,c,d", help="comma-separated subset of a,b,c,d")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


class Check:
    """Runs the parts, keeps their results and errors, writes the report after each part."""

    def __init__(self, args):
        self.args, self.started = args, time.perf_counter()
        self.device = "cpu" if args.smoke else "cuda"
        self.work = Path(tempfile.mkdtemp(prefix="oarl-gpu-check-"))
        self.env = {
            **os.environ,
            "OARL_CACHE": str(self.work / "cache"),
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
        }
        self.results: dict = {
            "environment": environment(args.smoke),
            "parts": {},
            "command": " ".join(["python benchmarks/gpu_check.py", *(args.argv or [])]),
        }

    def left(self) -> float:
        return self.args.time_limit - (time.perf_counter() - self.started)

    def part(self, key: str, title: str, fn) -> None:
        say(f"({key}) {title}")
        began = time.perf_counter()
        entry = {"title": title}
        try:
            entry.update(fn())
            entry["status"] = "ok"
        except Exception as exc:  # reported, and the next part runs
            entry.update(
                status="FAILED", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()[-3000:]
            )
            say(f"({key}) FAILED: {entry['error']}")
        entry["seconds"] = round(time.perf_counter() - began, 1)
        self.results["parts"][key] = entry
        self.write()

    def oarl(self, args: list[str], timeout: float) -> tuple[subprocess.CompletedProcess, float]:
        began = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "oarl.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=max(timeout, 1.0),
            cwd=self.work,
        )
        seconds = time.perf_counter() - began
        if proc.returncode != 0:
            raise RuntimeError(f"`oarl {' '.join(args[:2])} ...` exited {proc.returncode}: {proc.stderr[-2000:]}")
        return proc, seconds

    def write(self) -> None:
        path = Path(self.args.output)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.results["total_seconds"] = round(time.perf_counter() - self.started, 1)
        path.with_suffix(".json").write_text(json.dumps(self.results, indent=1, default=str))
        path.write_text(render(self.results))


def say(text: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {text}", flush=True)


def environment(smoke: bool) -> dict:
    import transformers
    import trl

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "date": datetime.date.today().isoformat(),
        "host": platform.node(),
        "smoke": smoke,
        "gpu": gpu,
        "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if gpu else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "python": platform.python_version(),
        "load": os.getloadavg()[0],
    }


# ------------------------------------------------------------------------------------------------ (a), (c)


def default_train(check: Check) -> dict:
    run = check.work / "default-run"
    proc, seconds = check.oarl(
        ["train", "--output_dir", str(run), *(SMOKE_TRAIN if check.args.smoke else [])], timeout=check.left() - 60
    )
    summary = json.loads((run / "summary.json").read_text())
    device = next(
        (line.split("training on ", 1)[1] for line in proc.stderr.splitlines() if "training on " in line), "?"
    )
    return {
        "wall_s": round(seconds, 1),
        "train_s": round(summary["train_time_s"], 1),
        "steps": summary["steps"],
        "device": device,
        "credit_overhead": summary["credit_overhead"],
        "run_dir": str(run),
        "heldout": {
            split: [summary["heldout_before"][split]["avg"], after["avg"]]
            for split, after in summary["heldout_after"].items()
        },
    }


def hf_eval(check: Check) -> dict:
    run = check.work / "default-run"
    if not (run / "final_model").is_dir():
        raise RuntimeError("(a) left no trained model to evaluate")
    limit, n = ("4", "1") if check.args.smoke else ("64", "4")
    out = check.work / "eval"
    _, seconds = check.oarl(
        [
            "eval",
            "--model",
            str(run),
            "--benchmarks",
            "arithmetic",
            "--limit",
            limit,
            "--n",
            n,
            "--backend",
            "hf",
            "--temperature",
            "1.0",
            "--max-new-tokens",
            "48",
            "--output-dir",
            str(out),
            "--no-progress",
        ],
        timeout=check.left() - 30,
    )
    results = json.loads((out / "results.json").read_text())
    return {
        "wall_s": round(seconds, 1),
        "results": {k: v for k, v in results.items() if k in ("benchmarks", "config")}
        if "benchmarks" in results
        else results,
    }


# ------------------------------------------------------------------------------------------------ (b)


def estimators_through_the_trainer(check: Check) -> dict:
    from oarl import OARConfig, OARTrainer, rewards
    from oarl.data import arithmetic
    from oarl.devices import ACTIVATION_CHECKPOINTING
    from oarl.models.tiny import load_tiny
    from oarl.models.warmstart import warm_start

    os.environ["OARL_CACHE"] = check.env["OARL_CACHE"]  # (a)'s warm start, cached
    cfg = arithmetic.DEFAULT_REGIME.warmstart_config()
    if check.args.smoke:
        cfg.update(SMOKE_WARM_START)
    path = warm_start(cfg, progress=False)
    regime = arithmetic.DEFAULT_REGIME
    rows = arithmetic.problems("train", 64, seed=1, task=regime.task)
    dataset = arithmetic.as_dataset([{"prompt": r["prompt"], "answer": r["answer"]} for r in rows])
    batch = 16 if check.args.smoke else 64
    out = {}
    for credit in ESTIMATORS:
        say(f"(b) {credit}")
        model, tokenizer = load_tiny(path)
        args = OARConfig(
            output_dir=str(check.work / f"b-{credit}"),
            credit=credit,
            bf16=True,
            **{ACTIVATION_CHECKPOINTING: True},
            use_cpu=check.args.smoke,
            max_steps=2,
            per_device_train_batch_size=batch,
            generation_batch_size=batch,
            num_generations=8,
            max_completion_length=regime.max_completion_length,
            learning_rate=regime.rl_lr,
            temperature=1.0,
            beta=0.0,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            seed=0,
            dataloader_num_workers=0,
            disable_tqdm=True,
            credit_rollouts=2,
            credit_max_steps=3,
        )
        trainer = OARTrainer(
            model=model,
            reward_funcs=[arithmetic.reward, rewards.format],
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
        )
        began = time.perf_counter()
        trainer.train()
        logs = [r for r in trainer.state.log_history if "loss" in r]
        credit_s = [r.get("credit/time_s", 0.0) for r in logs]
        out[credit] = {
            "seconds": round(time.perf_counter() - began, 2),
            "steps": trainer.state.global_step,
            "device": str(next(trainer.model.parameters()).device),
            "accelerator": str(trainer.accelerator.device),
            "bf16": trainer.args.bf16,
            "loss_finite": all(r["loss"] == r["loss"] and abs(r["loss"]) < float("inf") for r in logs),
            "credit_s": round(sum(credit_s), 3),
            "reshaped": None
            if trainer.last_credit is None
            else round(  # of the last generation batch
                float((trainer.last_credit.credit.weights != 1).any(1).float().mean()), 3
            ),
        }
        del trainer, model
    wrong = [k for k, v in out.items() if v["device"].split(":")[0] != check.device or not v["loss_finite"]]
    if wrong:
        raise RuntimeError(f"not on {check.device} or a non-finite loss: {wrong}: {out}")
    return {"estimators": out}


# ------------------------------------------------------------------------------------------------ (d)


def random_model(shape: str, device: str, max_length: int):
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(
        **SHAPES[shape],
        max_position_embeddings=max_length,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=1,
        use_cache=True,
    )
    with torch.device(device):  # initialised on the device, in bf16: no host copy of 7B parameters
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    from trl.trainer.utils import add_fused_lm_head

    add_fused_lm_head(model)  # model(..., fused_lm_head=True): TRL's training forward
    return model.train()


class Cell:
    """One (shape, completion length, rows) of (d): its probes and its measured passes."""

    def __init__(self, check: Check, model, shape: str, length: int, rows: int, prompt_len: int, skipped: list):
        self.check, self.model, self.device, self.skipped = check, model, check.device, skipped
        self.shape, self.length, self.rows, self.passes = shape, length, rows, {}
        self.ids, self.attn, self.reasoning, self.answer = (
            t.to(self.device) for t in synthetic_batch(rows, prompt_len, length, model.config.vocab_size, seed=0)
        )
        self.completion = self.attn.clone()
        self.completion[:, : self.ids.shape[1] - length] = False
        self.spans = torch.arange(self.ids.shape[1], device=self.device).expand_as(self.ids) // SPAN

    def measure(self, name: str, fn, rows: int | None = None, repeats: int = 2, base: str | None = None) -> None:
        """fn(ids, attn, reasoning, answer) on the first `rows` rows under bf16 autocast: the best of `repeats` runs
        after a warm-up (one run, no warm-up, with repeats=1), the largest memory peak; ratios against `base`.
        Out of memory: noted among the skipped passes."""
        rows = rows or self.rows
        args = (self.ids[:rows], self.attn[:rows], self.reasoning[:rows], self.answer[:rows])

        def run():
            with torch.autocast(device_type=torch.device(self.device).type, dtype=torch.bfloat16):
                fn(*args)

        try:
            if repeats > 1:
                run()
            runs = [measure_peak(run, self.device) for _ in range(repeats)]
        except torch.cuda.OutOfMemoryError as exc:
            self.skipped.append(
                f"{self.shape}, {self.length}: {name}: out of memory ({str(exc).splitlines()[0][:160]})"
            )
            self.model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            return
        entry = {
            "seconds": min(r[0] for r in runs),
            "rows": rows,
            "added_mib": max(peak - before for _, before, peak in runs) / 2**20,
        }
        if base in self.passes:
            reference = self.passes[base]
            entry.update(
                vs=base,
                x_time=entry["seconds"] / reference["seconds"] * reference["rows"] / rows,
                x_mem=entry["added_mib"] / max(reference["added_mib"], 1e-9) if self.device == "cuda" else None,
            )
        self.passes[name] = entry
        say(
            f"(d) {self.shape}, {self.length}: {name}: {entry['seconds']:.3f} s"
            + (f", {entry['x_time']:.2f}x time" if "x_time" in entry else "")
        )

    def train_step(self, checkpointing: bool):
        def fn(ids, attn, reasoning, answer):
            with checkpointing_of(self.model, checkpointing):
                fused_forward_backward(self.model, ids, attn, self.completion[: ids.shape[0]])

        return fn

    def cheap_passes(self) -> None:
        from oarl.credit import entropy_importance, gradient_importance, grail_saliency

        model, device = self.model, self.device
        self.measure("train", self.train_step(False))
        self.measure("train, checkpointing", self.train_step(True))
        self.measure("train, two rows", self.train_step(False), rows=min(2, self.rows))
        gen = lambda: torch.Generator(device).manual_seed(0)  # noqa: E731
        self.measure("OAR-G", lambda *a: gradient_importance(model, *a, generator=gen()), base="train")
        self.measure(
            "OAR-G, checkpointing",
            lambda *a: gradient_importance(model, *a, generator=gen(), activation_checkpointing=True),
            base="train, checkpointing",
        )
        self.measure("entropy", lambda *a: entropy_importance(model, *a), base="train")
        self.measure("GRAIL", lambda *a: grail_saliency(model, *a), base="train")

    def oar_p(self, kind: str, reuse: bool) -> None:
        """OAR-P "spans" (all rows), "hierarchical" or "token" (two rows), if its projected time fits."""
        from oarl.credit import perturbation_importance

        rows = self.rows if kind == "spans" else min(2, self.rows)
        name = f"OAR-P {kind}" + (", prefix reuse" if reuse else "")
        step = self.passes.get("train") or self.passes.get("train, two rows")
        if step is None:
            self.skipped.append(f"{self.shape}, {self.length}: {name}: no training step measured to compare with")
            return
        projected = (
            OAR_P_STEPS[kind + ("-reuse" if reuse else "")] * self.length / 1024 * step["seconds"] / step["rows"]
        )
        projected *= rows
        if not self.check.args.smoke and projected > self.check.left() - 30:
            self.skipped.append(f"{self.shape}, {self.length}: {name} on {rows} rows (projected {projected:.0f} s)")
            return
        spans = None if kind == "token" else self.spans[:rows]
        self.measure(
            name,
            lambda *a: perturbation_importance(
                self.model,
                *a,
                mode="last",
                reuse_prefix="auto" if reuse else False,
                pad_token_id=0,
                span_ids=spans,
                refine=0.4 if kind == "hierarchical" else None,
            ),
            rows=rows,
            repeats=1,
            base="train" if rows == self.rows else "train, two rows",
        )

    def result(self) -> dict:
        return {"shape": self.shape, "length": self.length, "rows": self.rows, "passes": self.passes}


def credit_passes(check: Check) -> dict:
    """(d), in priority order: the cheap passes of every cell, then OAR-P's spans, then its hierarchical and token
    passes (each only if its projection fits in the time left). Both models stay on the GPU (18 GiB in bf16)."""
    smoke = check.args.smoke
    prompt_len, plan = (SMOKE_PROMPT_LEN, SMOKE_CELLS) if smoke else (PROMPT_LEN, CELLS)
    longest = {shape: prompt_len + max(length for s, length, _ in plan if s == shape) + 64 for shape, _, _ in plan}
    models, cells, skipped = {}, [], []

    def attempt(what: str, fn) -> None:
        if check.left() < 15:
            skipped.append(f"{what}: no time left")
            return
        try:
            fn()
        except torch.cuda.OutOfMemoryError as exc:  # building a model
            skipped.append(f"{what}: out of memory ({str(exc).splitlines()[0][:200]})")
            torch.cuda.empty_cache()

    for shape, length, rows in plan:

        def build(shape=shape, length=length, rows=rows):
            if shape not in models:
                say(f"(d) building the {shape} model (random weights, bf16)")
                models[shape] = random_model(shape, check.device, longest[shape])
            cell = Cell(check, models[shape], shape, length, rows, prompt_len, skipped)
            cells.append(cell)
            cell.cheap_passes()

        attempt(f"{shape}, {length}", build)
    for kinds in (("spans",), ("hierarchical", "token")):
        for cell in cells:
            for kind in kinds:
                for reuse in (True, False):
                    attempt(f"{cell.shape}, {cell.length}: OAR-P {kind}", lambda: cell.oar_p(kind, reuse))
    return {"cells": [c.result() for c in cells], "skipped": skipped}


class checkpointing_of:
    """transformers' activation (gradient) checkpointing of a model on or off inside the block."""

    def __init__(self, model, enabled: bool):
        self.model, self.enabled = model, enabled

    def __enter__(self):
        if not self.enabled:
            return
        kwargs = {"use_reentrant": False}
        if hasattr(self.model, "activation_checkpointing_enable"):  # transformers >= 5.20
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    def __exit__(self, *exc):
        if self.enabled:
            disable = getattr(self.model, "activation_checkpointing_disable", None)
            (disable or self.model.gradient_checkpointing_disable)()


# ------------------------------------------------------------------------------------------------ report


def render(results: dict) -> str:
    env, parts = results["environment"], results["parts"]
    memory = f" ({env['gpu_memory_gib']} GiB)" if env["gpu"] else ""
    lines = [
        f"# oarl GPU check{' (smoke: tiny shapes on the CPU)' if env['smoke'] else ''}",
        "",
        f"{env['date']}, {env['gpu'] or 'no GPU'}{memory}; "
        f"torch {env['torch']} (CUDA {env['cuda']}), transformers {env['transformers']}, TRL {env['trl']}, "
        f"Python {env['python']}; load {env['load']:.1f}; total {results.get('total_seconds', 0):.0f} s",
        "",
        f"Command: `{results['command']}`",
        "",
    ]
    for key, part in parts.items():
        lines += [f"## ({key}) {part['title']}: {part['status']} ({part['seconds']:.0f} s)", ""]
        if part["status"] != "ok":
            lines += ["```", part["error"], "```", ""]
            continue
        if key == "a":
            lines += [
                f"wall time {part['wall_s']:.0f} s (training {part['train_s']:.0f} s, {part['steps']} steps), "
                f"{part['device']}; credit overhead {part['credit_overhead'] or 0:.0%}; held-out accuracy "
                + ", ".join(f"{s}: {b:.3f} -> {a:.3f}" for s, (b, a) in part["heldout"].items()),
                "",
            ]
        elif key == "b":
            lines += [
                "| credit | steps | seconds | credit pass s | model on | accelerator | bf16 | finite loss | "
                "completions reshaped |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            lines += [
                f"| {k} | {v['steps']} | {v['seconds']:.1f} | {v['credit_s']:.2f} | {v['device']} | "
                f"{v['accelerator']} | {v['bf16']} | {v['loss_finite']} | {v['reshaped']} |"
                for k, v in part["estimators"].items()
            ] + [""]
        elif key == "c":
            lines += [
                f"wall time {part['wall_s']:.0f} s",
                "",
                "```",
                json.dumps(part["results"], indent=1)[:1500],
                "```",
                "",
            ]
        elif key == "d":
            if not any(cell["passes"] for cell in part["cells"]):
                lines += ["**Nothing measured** (every pass was skipped: see below).", ""]
            for cell in part["cells"]:
                lines += [
                    f"### {cell['shape']}, {cell['length']}-token completions, {cell['rows']} rows",
                    "",
                    "| pass | rows | seconds | x time | added memory MiB | x memory | against |",
                    "|---|---|---|---|---|---|---|",
                ]
                for name, p in cell["passes"].items():
                    x_time = f"{p['x_time']:.2f}" if "x_time" in p else ""
                    x_mem = f"{p['x_mem']:.2f}" if p.get("x_mem") is not None else ""
                    lines.append(
                        f"| {name} | {p['rows']} | {p['seconds']:.3f} | {x_time} | {p['added_mib']:.0f} | "
                        f"{x_mem} | {p.get('vs', '')} |"
                    )
                lines.append("")
            if part["skipped"]:
                lines += ["Not measured (time limit or memory):", ""] + [f"- {s}" for s in part["skipped"]] + [""]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU here; run with --smoke for the check's code on tiny CPU shapes", file=sys.stderr)
        return 2
    check = Check(args)
    say(f"report: {args.output}; work folder {check.work} (removed at the end); {check.results['environment']}")
    parts = {
        "a": ("default `oarl train` from an empty cache", default_train),
        "b": ("every estimator through OARTrainer, bf16 and activation checkpointing", estimators_through_the_trainer),
        "c": ("`oarl eval`, HF backend", hf_eval),
        "d": ("the credit pass at real shapes, against a training forward+backward", credit_passes),
    }
    for key in [p.strip() for p in args.parts.split(",") if p.strip()]:
        title, fn = parts[key]
        check.part(key, title, lambda: fn(check))
    check.write()
    shutil.rmtree(check.work, ignore_errors=True)  # the cache and models of (a)-(c); the report stays
    failed = [k for k, p in check.results["parts"].items() if p["status"] != "ok"]
    empty = [
        k
        for k, p in check.results["parts"].items()
        if k == "d" and p["status"] == "ok" and not any(c["passes"] for c in p["cells"])
    ]
    say(
        f"done in {check.results['total_seconds']:.0f} s; "
        + (f"FAILED: {failed}" if failed else "all parts ran")
        + (f"; nothing measured in ({', '.join(empty)}): every pass skipped" if empty else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
