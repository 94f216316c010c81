"""Torch threads on a shared CPU: a training step and the OAR-G credit pass with 1 and 2 threads, alone and
beside a busy process, with OpenMP's default and passive wait policy.

    python benchmarks/bench_threads.py [--models tiny,smollm2-135m --repeats 5]

Each configuration runs in a fresh process (OpenMP reads its settings when torch loads): torch threads 1 or 2
(``torch.set_num_threads``), ``OMP_WAIT_POLICY`` unset (libgomp, which torch's CPU wheel uses, then spins at
every barrier before sleeping) or ``PASSIVE`` (waiting threads sleep at once), and with or without a second
process that keeps one core busy (``while True: pass``, started before and stopped after the run). The
workloads, on synthetic token ids:

- tiny: the embedded default job's shapes: the 1.06M-parameter model (``build_tiny``, untrained), a training forward+backward of 64 rows
  of 16 + 31 tokens (one micro-batch) and the OAR-G pass over 256 such rows (one generation batch);
- smollm2-135m: a micro-batch of 4 rows of 128 + 256 tokens, training forward+backward and OAR-G pass.

The table gives the median wall time of --repeats runs after one warm-up, and the ratio to 1 thread alone
with the default policy. The load average is read at the start of each run ("alone" means no busy process
of ours; other users' processes may still run: see the load column).
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

WORKLOADS = {  # name: (rows per micro-batch, rows per credit pass, prompt tokens, completion tokens)
    "tiny": (64, 256, 16, 31),
    "smollm2-135m": (4, 4, 128, 256),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,smollm2-135m")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--policies", default="default,PASSIVE")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # "model,threads"
    return parser.parse_args(argv)


def child(args) -> dict:
    import torch

    from oarl.credit import gradient_importance
    from oarl.models.loading import load_model
    from oarl.models.tiny import build_tiny

    name, threads = args.child.split(",")
    torch.set_num_threads(int(threads))
    model = build_tiny()[0] if name == "tiny" else load_model(name)[0]  # cost does not depend on the weights
    micro, credit_rows, prompt, completion = WORKLOADS[name]
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (credit_rows, prompt + completion), generator=g)
    attn = torch.ones_like(ids, dtype=torch.bool)
    reasoning, answer = torch.zeros_like(attn), torch.zeros_like(attn)
    reasoning[:, prompt:-3] = True
    answer[:, -2:] = True

    def train_step():
        model.train()
        logits = model(input_ids=ids[:micro]).logits[:, prompt - 1 : -1]
        logp = logits.log_softmax(-1).gather(2, ids[:micro, prompt:, None])
        logp.sum().backward()
        model.zero_grad(set_to_none=True)

    def credit_pass():
        gradient_importance(model, ids, attn, reasoning, answer, generator=torch.Generator().manual_seed(0))

    out = {}
    for label, fn in (("train step", train_step), ("OAR-G pass", credit_pass)):
        fn()
        runs = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - start)
        out[label] = statistics.median(runs)
    return out


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return
    command = "python benchmarks/bench_threads.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"command: {command}")
    print(f"{os.cpu_count()} CPUs; {platform.node()}; median of {args.repeats} after a warm-up")
    print(
        f"{'model':>13s} {'pass':>11s} {'threads':>7s} {'OMP wait':>8s} {'busy':>5s} {'seconds':>8s} "
        f"{'x 1 thread alone':>16s} {'load':>5s}"
    )
    rows = []
    for name in args.models.split(","):
        base = {}
        for threads in args.threads.split(","):
            for policy in args.policies.split(","):
                for busy in (False, True):
                    env = dict(os.environ)
                    env.pop("OMP_WAIT_POLICY", None)
                    if policy != "default":
                        env["OMP_WAIT_POLICY"] = policy
                    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
                    try:
                        time.sleep(0.5 if busy else 0.0)
                        load = os.getloadavg()[0]
                        out = subprocess.run(
                            [sys.executable, __file__, "--repeats", str(args.repeats), "--child", f"{name},{threads}"],
                            env=env,
                            check=True,
                            capture_output=True,
                            text=True,
                        )
                    finally:
                        if hog is not None:
                            hog.kill()
                            hog.wait()
                    result = json.loads(out.stdout.strip().splitlines()[-1])
                    for label, seconds in result.items():
                        key = (label,)
                        if threads == "1" and policy == "default" and not busy:
                            base[key] = seconds
                        ratio = seconds / base[key] if key in base else float("nan")
                        rows.append(
                            {
                                "model": name,
                                "pass": label,
                                "threads": int(threads),
                                "policy": policy,
                                "busy": busy,
                                "seconds": seconds,
                                "load": load,
                            }
                        )
                        print(
                            f"{name:>13s} {label:>11s} {threads:>7s} {policy:>8s} {'yes' if busy else 'no':>5s} "
                            f"{seconds:8.3f} {ratio:16.2f} {load:5.1f}",
                            flush=True,
                        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": command, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
