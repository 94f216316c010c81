"""What the credit pass costs under each distributed backend: the gathered parameters, in memory and in time.

    python benchmarks/bench_distributed.py [--backends ddp,zero2,zero3,fsdp2 --model smollm2-135m --batch 4
                                            --prompt-len 128 --completion-len 256 --repeats 3 --threads 1 --bf16]

For each backend, two processes on this machine (torchrun, gloo; DeepSpeed with DS_ACCELERATOR=cpu) hold the model
as the backend holds it for training: DDP a whole copy on each process (accelerate's DDP wrapper), ZeRO-2 whole
parameters with sharded optimizer states and gradients, ZeRO-3 sharded parameters (DeepSpeed's default
persistence threshold: parameters under 1e5 elements, the norms here, stay whole), FSDP2 `fully_shard` of every
decoder block and the root (as accelerate applies it). Each process then times, on its own rows (synthetic probes
of bench_estimators: prompt ⊕ reasoning ⊕ 1-token lead-in ⊕ 2-token answer, random ids), in a process of its own:

- ``train``, the baseline: one training micro-step under the backend, forward + backward (completion
  log-probabilities from the full logits, as bench_estimators' baseline) + optimizer step (AdamW, lr 0);
- ``plain``: OAR-G (``oarl.credit.gradient_importance``) on the same rows with a whole copy of the model outside
  any backend: what the pass costs without distribution;
- ``gather``: entering and leaving ``oarl.trl_fixes.credit_policy`` with nothing inside: the all-gather of the
  parameters (ZeRO-3, FSDP2) and putting them back;
- ``oar-g``: the credit pass as OARTrainer runs it: ``credit_policy`` around the same OAR-G call (under
  ``accelerator.autocast()``).

The four take turns in each of --repeats rounds (after one warm-up round), so that a change of the machine's load
hits them alike; the table gives medians and ratios of wall and of process CPU time.

Memory (resident set of rank 0, /proc/self/status; peak through VmHWM, reset before each measurement):
``gathered`` is the resident set inside ``credit_policy`` minus the one before it (the parameters it brings
onto the process); ``pass`` and ``train`` are the peaks of one OAR-G pass and of one training micro-step minus
the resident set before each. The model's parameter bytes (whole and per process when sharded) are printed for
reference. --bf16: DeepSpeed's bf16 mode (bf16 parameters), FSDP2 with a bf16 MixedPrecisionPolicy, DDP under
autocast.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from bench_memory import status_kib  # this script's folder: on sys.path when run, and in its children's PYTHONPATH

BACKENDS = ("ddp", "zero2", "zero3", "fsdp2")
MIB = 2**20


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--backends", default=",".join(BACKENDS), help="comma-separated subset of " + ",".join(BACKENDS)
    )
    parser.add_argument(
        "--model", default="smollm2-135m", help="a name or directory for oarl.models.loading.load_model"
    )
    parser.add_argument("--batch", type=int, default=4, help="rows per process")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--completion-len", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--json", default=None, help="write the rows here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # a backend, inside torchrun
    return parser.parse_args(argv)


def reset_peak() -> int:
    """Resets the peak resident set (VmHWM) to the current one; returns the current one in bytes."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return status_kib("VmRSS") * 1024


def local_bytes(param) -> int:
    """Bytes of a parameter held by this process: its ZeRO-3 partition, its FSDP2 shard, or all of it."""
    from torch.distributed.tensor import DTensor

    data = param.ds_tensor if hasattr(param, "ds_tensor") else param
    data = data.to_local() if isinstance(data, DTensor) else data
    return data.numel() * data.element_size()


def storage(param) -> int:
    """Address of the memory that holds a parameter's data on this process (0: none)."""
    from torch.distributed.tensor import DTensor

    return (param.to_local() if isinstance(param, DTensor) else param).untyped_storage().data_ptr()


def prepare(backend: str, model, args):
    """(accelerator, wrapped model, optimizer) as the backend holds them for training."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin

    optimizer = None
    if backend.startswith("zero"):
        config = {
            "zero_optimization": {"stage": int(backend[-1])},
            "train_micro_batch_size_per_gpu": args.batch,
            "gradient_accumulation_steps": 1,
            "bf16": {"enabled": args.bf16},
        }
        accelerator = Accelerator(deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=config))
    else:
        accelerator = Accelerator(cpu=True, mixed_precision="bf16" if args.bf16 and backend == "ddp" else "no")
    if backend == "fsdp2":  # accelerate does not select FSDP on a CPU: fully_shard as its fsdp2 preparation does
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if args.bf16 else None)
        for block in model.model.layers:
            fully_shard(block, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)
        return accelerator, model, optimizer
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    return accelerator, wrapped, optimizer


def child(args) -> dict:
    import torch
    import torch.distributed as dist
    from bench_estimators import synthetic_batch

    from oarl.credit import gradient_importance
    from oarl.models.loading import load_model
    from oarl.trl_fixes import credit_policy

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    backend = args.child.split(":")[0]
    model, _ = load_model(args.model)
    # the same weights, whole, outside any backend (loaded before DeepSpeed's settings exist: else zero.Init shards it)
    plain = None if args.child.endswith(":memory") else load_model(args.model)[0]
    full_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    accelerator, wrapped, optimizer = prepare(backend, model, args)
    rank = accelerator.process_index
    ids, attn, reasoning, answer = synthetic_batch(
        args.batch, args.prompt_len, args.completion_len, model.config.vocab_size, seed=rank
    )
    completion = attn.clone()
    completion[:, : args.prompt_len] = False
    position_ids = (attn.long().cumsum(1) - 1).clamp_min(0)
    local = accelerator.unwrap_model(wrapped)
    held_bytes = sum(local_bytes(p) for p in local.parameters())

    def train():
        wrapped.train()
        with accelerator.autocast():
            logits = wrapped(input_ids=ids, attention_mask=attn.long(), position_ids=position_ids).logits[:, :-1]
        logp = logits.float().log_softmax(-1).gather(2, ids[:, 1:, None]).squeeze(-1)
        accelerator.backward(-(logp * completion[:, 1:]).sum() / completion.sum())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def gather():
        with credit_policy(wrapped, accelerator):
            pass

    generator = torch.Generator().manual_seed(rank)

    def oar_g():
        with credit_policy(wrapped, accelerator) as policy, accelerator.autocast():
            gradient_importance(policy, ids, attn, reasoning, answer, generator=generator)

    def timed(functions: dict) -> dict:
        """Median wall and CPU seconds of each function over --repeats rounds (after one warm-up round); the
        functions take turns within a round, so that a change of the machine's load hits them alike."""
        times = {name: ([], []) for name in functions}
        for round_ in range(args.repeats + 1):
            for name, fn in functions.items():
                dist.barrier()
                w, c = time.perf_counter(), time.process_time()
                fn()
                if round_ > 0:
                    times[name][0].append(time.perf_counter() - w)
                    times[name][1].append(time.process_time() - c)
        return {
            f"{name}_{kind}": statistics.median(values)
            for name, (wall, cpu) in times.items()
            for kind, values in (("wall", wall), ("cpu", cpu))
        }

    row = {"backend": backend, "full_mib": full_bytes / MIB, "held_mib": held_bytes / MIB}
    if args.child.endswith(":memory"):  # a fresh process, malloc returning every large block (see main)
        train()  # the optimizer's states exist from the first step on
        outside = {storage(p) for p in local.parameters()}
        dist.barrier()
        before = reset_peak()
        with credit_policy(wrapped, accelerator) as policy:
            row["gathered_mib"] = (status_kib("VmRSS") * 1024 - before) / MIB
            # parameter storage that exists only inside (the shards are kept besides the whole parameters)
            row["gathered_params_mib"] = (
                sum(p.numel() * p.element_size() for p in policy.parameters() if storage(p) not in outside) / MIB
            )
        for name, fn in (("oar-g", oar_g), ("train", train)):
            dist.barrier()
            before = reset_peak()
            fn()
            row[name + "_peak_mib"] = (status_kib("VmHWM") * 1024 - before) / MIB
    else:

        def oar_g_plain():
            with accelerator.autocast():
                gradient_importance(plain, ids, attn, reasoning, answer, generator=generator)

        if backend != "ddp" and args.bf16:
            plain.to(torch.bfloat16)  # DeepSpeed's and FSDP2's bf16 run the pass on bf16 parameters
        row.update(timed({"train": train, "gather": gather, "oar-g": oar_g, "oar-g-plain": oar_g_plain}))
    dist.barrier()
    return row


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        row = child(args)
        if int(os.environ.get("RANK", "0")) == 0:
            print("ROW " + json.dumps(row), flush=True)
        return
    backends = args.backends.split(",")
    if any(b not in BACKENDS for b in backends):
        raise SystemExit(f"--backends: choose among {', '.join(BACKENDS)}")
    command = " ".join(["python", "benchmarks/bench_distributed.py", *sys.argv[1:]])
    print(f"command: {command}")
    print(
        f"model {args.model}, 2 processes x {args.threads} thread(s), {args.batch} rows per process of "
        f"{args.prompt_len} + {args.completion_len} tokens, {'bf16' if args.bf16 else 'fp32'}; "
        f"load at start {os.getloadavg()[0]:.2f}; {platform.node()}",
        flush=True,
    )
    print(
        f"{'backend':>8s} {'params MiB':>11s} {'train s':>8s} {'plain s':>8s} {'gather s':>8s} {'oar-g s':>8s} "
        f"{'gather/train':>12s} {'oar-g/train':>12s} {'oar-g/plain':>12s} {'gathered MiB':>14s} {'pass peak':>10s} "
        f"{'train peak':>10s}"
    )
    env = {
        **os.environ,
        "DS_ACCELERATOR": "cpu",
        "OMP_NUM_THREADS": str(args.threads),
        "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.abspath(__file__)), *sys.path]),
    }
    flags = list(sys.argv[1:] if argv is None else argv)
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    rows = []
    for backend in backends:
        r = {}
        # Memory in a process of its own with malloc's fixed mmap threshold: every block over 64 KiB is mapped on its
        # own and returned to the system when freed, so that the resident set follows the live tensors (glibc's
        # default keeps freed blocks, and a later pass reuses them unseen). Time with the default malloc.
        for mode, extra in (("memory", {"MALLOC_MMAP_THRESHOLD_": "65536"}), ("time", {})):
            out = subprocess.run(
                [torchrun, "--nproc_per_node", "2", os.path.abspath(__file__), *flags, "--child", f"{backend}:{mode}"],
                env={**env, **extra},
                capture_output=True,
                text=True,
            )
            lines = [line for line in out.stdout.splitlines() if line.startswith("ROW ")]
            if out.returncode != 0 or not lines:
                raise SystemExit(f"{backend} ({mode}) failed:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}")
            r.update(json.loads(lines[-1][4:]))
        rows.append(r)
        ratio = lambda a, b: f"{r[a + '_wall'] / r[b + '_wall']:.3f}/{r[a + '_cpu'] / r[b + '_cpu']:.3f}"  # noqa: E731
        print(
            f"{backend:>8s} {r['full_mib']:>5.0f}/{r['held_mib']:<5.0f} {r['train_wall']:>8.2f} "
            f"{r['oar-g-plain_wall']:>8.2f} {r['gather_wall']:>8.2f} {r['oar-g_wall']:>8.2f} "
            f"{ratio('gather', 'train'):>12s} {ratio('oar-g', 'train'):>12s} {ratio('oar-g', 'oar-g-plain'):>12s} "
            f"{r['gathered_mib']:>6.0f} ({r['gathered_params_mib']:>4.0f}) {r['oar-g_peak_mib']:>10.0f} "
            f"{r['train_peak_mib']:>10.0f}",
            flush=True,
        )
    print(
        "params: whole / held by one process. Seconds: medians on rank 0 (plain: OAR-G on a whole copy of the model "
        "outside the backend). Ratios: wall/CPU time, measured in the same process on the same rows. MiB, rank 0: "
        "gathered = resident set added inside credit_policy (in brackets: parameter bytes it materialised); "
        "pass peak / train peak = peak resident set added by one OAR-G pass / one training micro-step"
    )
    print(f"load at end {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": command, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
