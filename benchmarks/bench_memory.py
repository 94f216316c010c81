"""Peak memory of the OAR-G credit pass against the training forward+backward of the same micro-batch.

    python benchmarks/bench_memory.py [--model smollm2-135m --lengths 256,512,1024 --batch 4 --prompt-len 128
                                       --threads 2 --bf16]

Every configuration (pass x activation checkpointing x completion length) runs in a fresh process, so that
one measurement's allocations cannot hide another's. In that process the model is loaded and the inputs
built, then the peak is reset and the pass runs once:

- ``train``: the training step's forward+backward as TRL's GRPOTrainer runs it (``add_fused_lm_head``, the
  completion tokens' log-probabilities without materialising the full logits, a loss, ``backward()`` into
  the parameters' gradients), with the model in train mode and transformers' activation checkpointing on or
  off;
- ``oar-g``: ``oarl.credit.gradient_importance`` on the same rows (prompt ⊕ completion; the completion is
  reasoning except its last 3 tokens, a 1-token lead-in and a 2-token answer), with its own activation
  checkpointing on or off;
- ``entropy``: ``oarl.credit.entropy_importance`` on the same rows (one forward without gradient, logits at
  every reasoning position); checkpointing does not apply to it.

On CPU the peak is the process's peak resident set (VmHWM of /proc/self/status, reset through
/proc/self/clear_refs before the pass); "added" is that peak minus the resident set just before the pass
(the model, its inputs and the libraries). On a GPU it is ``torch.cuda.max_memory_allocated`` after
``reset_peak_memory_stats``. --bf16 runs every pass under torch.autocast(bfloat16), as the trainer does with
``bf16=True``. Token ids are random: memory does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

PASSES = ("train", "oar-g", "entropy")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", default="smollm2-135m", help="a name or directory for oarl.models.loading.load_model"
    )
    parser.add_argument("--lengths", default="256,512,1024", help="completion lengths (tokens), comma-separated")
    parser.add_argument("--batch", type=int, default=4, help="rows per pass: the training micro-batch")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--passes",
        default="train,oar-g",
        help="comma-separated subset of " + ",".join(PASSES) + " ('train' always runs first: it is the reference)",
    )
    parser.add_argument("--bf16", action="store_true", help="every pass under torch.autocast(bfloat16)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="write the rows here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # "pass,checkpointing,length"
    return parser.parse_args(argv)


def status_kib(field: str) -> int:
    """A field of this process's /proc/self/status in KiB (VmRSS: resident set, VmHWM: its peak)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(args) -> dict:
    """One pass in this (fresh) process; returns its peak memory in MiB."""
    import torch

    from oarl.credit import entropy_importance, gradient_importance
    from oarl.models.loading import load_model

    name, checkpointing, length = args.child.split(",")
    checkpointing, length = checkpointing == "1", int(length)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, _ = load_model(args.model, device=args.device)
    vocab = model.config.vocab_size
    total = args.prompt_len + length
    ids = torch.randint(3, vocab, (args.batch, total), device=args.device)
    attn = torch.ones_like(ids, dtype=torch.bool)
    completion = torch.zeros_like(attn)
    completion[:, args.prompt_len :] = True
    reasoning, answer = completion.clone(), torch.zeros_like(attn)
    reasoning[:, -3:] = False
    answer[:, -2:] = True
    autocast = torch.autocast(device_type=torch.device(args.device).type, dtype=torch.bfloat16, enabled=args.bf16)

    if name == "train":
        from trl.trainer.utils import add_fused_lm_head

        add_fused_lm_head(model)
        if checkpointing:
            model.activation_checkpointing_enable()
        model.train()
        labels = ids.masked_fill(~completion, -100)

        def run():
            with autocast:
                logps = model(input_ids=ids, attention_mask=attn.long(), labels=labels, fused_lm_head=True).log_probs
            (-(logps * completion[:, 1:]).sum() / completion.sum()).backward()
    elif name == "oar-g":

        def run():
            with autocast:
                gradient_importance(
                    model,
                    ids,
                    attn,
                    reasoning,
                    answer,
                    activation_checkpointing=checkpointing,
                    generator=torch.Generator(args.device).manual_seed(0),
                )
    else:

        def run():
            with autocast:
                entropy_importance(model, ids, attn, reasoning, answer)

    seconds, before, peak = measure_peak(run, args.device)
    mib = 2**20
    return {
        "pass": name,
        "checkpointing": checkpointing,
        "length": length,
        "before_mib": before / mib,
        "peak_mib": peak / mib,
        "added_mib": (peak - before) / mib,
        "seconds": seconds,
    }


def measure_peak(run, device) -> tuple[float, int, int]:
    """(seconds, bytes before, peak bytes) of one run(): on a GPU, torch.cuda.max_memory_allocated after
    reset_peak_memory_stats; on the CPU the process's peak resident set (VmHWM, reset through /proc/self/clear_refs:
    meaningful in a fresh process only)."""
    import torch

    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak resident set (VmHWM) to the current one
        before = status_kib("VmRSS") * 1024
    started = time.perf_counter()
    run()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() if cuda else status_kib("VmHWM") * 1024
    return seconds, before, peak


def main(argv=None):
    args = parse_args(argv)
    if any(p not in PASSES for p in args.passes.split(",")):
        raise SystemExit(f"--passes: choose among {', '.join(PASSES)}")
    if args.child:
        print(json.dumps(child(args)))
        return
    lengths = [int(x) for x in args.lengths.split(",")]
    command = " ".join(["python", "benchmarks/bench_memory.py", *sys.argv[1:]])
    print(f"command: {command}")
    print(
        f"model {args.model}, micro-batch {args.batch} rows, prompt {args.prompt_len} tokens, "
        f"{'bf16 autocast' if args.bf16 else 'fp32'}, {args.threads} thread(s), device {args.device}; "
        f"load at start {os.getloadavg()[0]:.2f}; {platform.node()}"
    )
    unit = "GPU max allocated" if args.device.startswith("cuda") else "peak RSS"
    print(
        f"{'completion':>10s} {'checkpointing':>13s} {'pass':>7s} {unit + ' MiB':>22s} {'added MiB':>10s} "
        f"{'x train added':>13s} {'seconds':>8s}"
    )
    rows = []
    flags = list(sys.argv[1:] if argv is None else argv)
    for length in lengths:
        for checkpointing in (False, True):
            added = {}
            for name in ["train"] + [p for p in args.passes.split(",") if p != "train"]:
                out = subprocess.run(
                    [sys.executable, __file__, *flags, "--child", f"{name},{int(checkpointing)},{length}"],
                    check=True,
                    capture_output=True,
                    text=True,
                )
                row = json.loads(out.stdout.strip().splitlines()[-1])
                added[name] = row["added_mib"]
                rows.append(row)
                ratio = row["added_mib"] / added["train"]
                print(
                    f"{length:>10d} {'on' if checkpointing else 'off':>13s} {name:>7s} {row['peak_mib']:>22.0f} "
                    f"{row['added_mib']:>10.0f} {ratio:>13.2f} {row['seconds']:>8.1f}",
                    flush=True,
                )
    print(f"load at end {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": command, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
