"""Run by tests/test_distributed.py in two processes: OARTrainer under one distributed backend, every estimator.

    python distributed_train.py MODEL_DIR OUT_DIR BACKEND CASE[,CASE...]

BACKEND is how `accelerate launch` started the processes (ddp, zero2, zero3, zero3-noinit, fsdp2: the last through
the FSDP2 shim below). For each CASE (a credit setting, table CASES) one trainer trains MAX_STEPS steps, and
every credit pass of each process is recorded in OUT_DIR/CASE/rank<r>.pt: the pass's inputs, its outputs, the number
of policy forwards it ran, the parameters it saw, the OAR-G noise generator's state, the autocast state and, for
rollout credit, what the sampler and scorer returned. The test recomputes each record in one process and compares.

The ranks are unbalanced on purpose by the reward (`skewed_reward`): at the first generation, rank 1's group gets
one reward for every completion (advantage 0: no completion to score) while rank 0's rewards alternate (all four
scored); at the second, rank 1 has two completions of zero advantage and rank 0 none, so the two run different
numbers of forwards (rows per pass, OAR-P chunks). A collective inside the credit pass then deadlocks or fails.
"""

import faulthandler
import os
import sys
from pathlib import Path

import torch
from datasets import Dataset
from transformers.integrations import unset_hf_deepspeed_config

import oarl.trainer
from oarl import OARConfig, OARTrainer
from oarl.devices import ACTIVATION_CHECKPOINTING
from oarl.models.tiny import load_tiny

from conftest import addition_prompts, addition_reward

MAX_STEPS = 2
CASES = {  # credit settings; OAR-P chunks and OAR-G passes are kept small so that every pass runs several forwards
    "none": dict(credit="none"),
    "perturbation": dict(credit="perturbation", credit_chunk_size=4, credit_batch_size=2),
    "perturbation-span": dict(credit="perturbation", credit_span="sentence", credit_refine=True, credit_chunk_size=2),
    "gradient": dict(credit="gradient", credit_batch_size=2),
    "entropy": dict(credit="entropy", credit_batch_size=2),
    "grail": dict(credit="grail", credit_apply_to="all", credit_batch_size=2),
    # token steps: the task has one sentence of reasoning
    "rollout": dict(credit="rollout", credit_span="token", credit_max_steps=3, credit_rollouts=2),
}


def fsdp2_shim(args: OARConfig) -> None:
    """TEST SHIM: accelerate selects FSDP only for GPU-like devices and runs plain DDP on CPUs (the run's FSDP
    settings are then silently ignored). Here the process group is set up as the Trainer does on a CPU (gloo, by
    `args.device`), and accelerate's record of it then says GPU-like, so that the Trainer's accelerator takes the
    FSDP2 branch and `fully_shard`s the model (on the CPU, gloo collectives). Nothing else about the run changes."""
    from accelerate import PartialState
    from accelerate.utils import DistributedType

    assert args.device.type == "cpu"  # sets up the process group and accelerate's PartialState
    PartialState._shared_state["distributed_type"] = DistributedType.MULTI_GPU


def skewed_reward(completions, answer, trainer_state, **kwargs):
    """The task's reward, replaced for the first two generations by fixed patterns per rank (see module doc)."""
    rank, step = int(os.environ.get("RANK", "0")), trainer_state.global_step
    if step == 0:
        pattern = [0.0, 0.0, 0.0, 0.0] if rank == 1 else [1.0, 0.0, 1.0, 0.0]
    elif step == 1:
        pattern = [1.0, 0.0, 0.5, 0.5] if rank == 1 else [1.0, 0.0, 0.0, 1.0]
    else:
        return addition_reward(completions, answer)
    return [pattern[i % 4] for i in range(len(completions))]


class Recorder:
    """Wraps oarl.trainer.token_advantages and records every call made with a model or a sampler (a credit pass)."""

    def __init__(self, function):
        self.function, self.records = function, []

    def __call__(self, model, *args, generator=None, sampler=None, scorer=None, **kwargs):
        if model is None and sampler is None:  # no pass: every row skipped
            return self.function(model, *args, generator=generator, sampler=sampler, scorer=scorer, **kwargs)
        tokenizer, *tensors, config = args
        record = {
            "inputs": [t.detach().cpu().clone() for t in tensors],  # prompt ids/mask, completion ids/mask, advantages
            "truncated": kwargs["truncated"].cpu().clone(),
            "config": config,
            "max_completion_length": kwargs.get("max_completion_length"),
            "generator_state": None if generator is None else generator.get_state(),
            "autocast": torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu"),
            "forwards": 0,
            "sampled": [],
            "scored": [],
            "linear": torch.nn.functional.linear.__module__,  # DeepSpeed's under ZeRO-3 with memory_efficient_linear
        }
        handle = None
        if model is not None:
            record["parameters"] = {n: p.detach().cpu().clone() for n, p in model.named_parameters()}
            record["buffers"] = {n: b.detach().cpu().clone() for n, b in model.named_buffers()}

            def count(module, inputs):
                record["forwards"] += 1

            handle = model.register_forward_pre_hook(count)
        if sampler is not None:
            sampler = self.recording(
                sampler, record["sampled"], lambda result: [[[int(t) for t in c] for c in cs] for cs in result]
            )
            scorer = self.recording(scorer, record["scored"], lambda result: [float(r) for r in result])
        try:
            out = self.function(model, *args, generator=generator, sampler=sampler, scorer=scorer, **kwargs)
        finally:
            if handle is not None:
                handle.remove()
        record["advantages"], record["importance"] = out.advantages.cpu(), out.importance.cpu()
        self.records.append(record)
        return out

    @staticmethod
    def recording(function, calls, plain):
        def wrapped(*args):
            result = function(*args)
            calls.append((args, plain(result)))
            return result

        return wrapped


def layout(trainer) -> dict:
    """How the trained model's parameters are held after training (outside a credit pass)."""
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    model = trainer.accelerator.unwrap_model(trainer.model_wrapped)
    params = list(model.parameters())
    return {
        "zero3_partitioned": sum(getattr(p, "ds_numel", 0) > p.numel() for p in params),  # ZeRO-3: local data empty
        "dtensors": sum(isinstance(p, DTensor) for p in params),  # FSDP2: sharded
        "fsdp_modules": sum(isinstance(m, FSDPModule) for m in model.modules()),
        "dtypes": sorted({str(p.dtype) for p in params}),
        "parameters": len(params),
    }


def main():
    if os.environ.get("OARL_HANG_TIMEOUT"):  # a deadlock prints every thread's stack and ends the process
        faulthandler.dump_traceback_later(float(os.environ["OARL_HANG_TIMEOUT"]), exit=True)
    model_dir, out, backend, cases = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4].split(",")
    mixed = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    for case in cases:
        recorder = Recorder(oarl.trainer.token_advantages)
        oarl.trainer.token_advantages = recorder
        # ZeRO-3: a model loaded after the training arguments is built partitioned (deepspeed.zero.Init: transformers
        # 5.25 with accelerate 1.16 do so whenever the arguments select ZeRO-3, whatever zero3_init_flag says); one
        # loaded before them is built whole and partitioned by deepspeed.initialize. "zero3-noinit" runs the latter.
        if backend == "zero3-noinit":
            unset_hf_deepspeed_config()  # the previous case's arguments set it: as in a fresh process
            model, tokenizer = load_tiny(model_dir)
        args = OARConfig(
            output_dir=str(out / case),
            per_device_train_batch_size=4,
            num_generations=4,
            max_completion_length=32,
            max_steps=MAX_STEPS,
            learning_rate=1e-3,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            seed=0,
            bf16=mixed == "bf16",
            use_cpu=True,
            beta=0.0,
            disable_tqdm=True,
            temperature=1.0,
            **{ACTIVATION_CHECKPOINTING: True},
            **CASES[case],
        )
        if backend == "fsdp2":
            fsdp2_shim(args)
        if backend != "zero3-noinit":
            model, tokenizer = load_tiny(model_dir)
        built_partitioned = hasattr(next(model.parameters()), "ds_id")  # built under deepspeed.zero.Init
        trainer = OARTrainer(
            model=model,
            reward_funcs=[skewed_reward],
            args=args,
            train_dataset=Dataset.from_list(addition_prompts(16)),
            processing_class=tokenizer,
        )
        trainer.train()
        oarl.trainer.token_advantages = recorder.function
        rank = trainer.accelerator.process_index
        (out / case).mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "records": recorder.records,
                "world": trainer.accelerator.num_processes,
                "steps": trainer.state.global_step,
                "backend": str(trainer.accelerator.distributed_type),
                "built_partitioned": built_partitioned,
                "layout": layout(trainer),
            },
            out / case / f"rank{rank}.pt",
        )
        trainer.accelerator.wait_for_everyone()
        if trainer.accelerator.is_main_process:
            print(
                f"CASE-OK {backend} {case} steps={trainer.state.global_step} "
                f"type={trainer.accelerator.distributed_type}",
                flush=True,
            )
        del trainer, model


if __name__ == "__main__":
    main()
