"""Sampled accuracy of SmolLM2-135M-Instruct (or a warm start) on a task, before any RL: the regime search.

    PYTHONPATH=src python experiments/smollm2/probe.py --task words --steps 2 --problems 32 --n 4 --temperature 0.7

Prints avg@n ± SE over problems, no-answer and truncated fractions, mean completion length (tokens),
seconds and the machine's load; appends one JSON line to experiments/smollm2/probe.jsonl. Deterministic
given the seed (sampling is seeded per batch).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from oarl.evaluate import evaluate_model
from oarl.models.loading import load_model

OUT = Path(__file__).with_name("probe.jsonl")


def rows_for(args):
    if args.task == "words":
        from oarl.data.word_problems import INSTRUCTION, problems

        rows = problems(
            "test",
            args.problems,
            seed=args.seed,
            steps=(args.steps, args.steps),
            ops=args.ops,
            max_operand=args.max_operand,
            max_value=args.max_value,
        )
        return [{"problem": r["question"], "answer": r["answer"]} for r in rows], INSTRUCTION
    if args.task == "gsm-symbolic":
        from oarl.data.gsm import INSTRUCTION, gsm_symbolic_rows

        return [
            {"problem": r["question"], "answer": r["answer"]}
            for r in gsm_symbolic_rows(args.problems, args.seed, "test")
        ], INSTRUCTION
    raise SystemExit(f"unknown task {args.task}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="words")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--ops", default="+-")
    ap.add_argument("--max-operand", type=int, default=20)
    ap.add_argument("--max-value", type=int, default=50)
    ap.add_argument("--problems", type=int, default=32)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--show", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_model(args.model)
    rows, instruction = rows_for(args)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    res = evaluate_model(
        model,
        tok,
        rows,
        n=args.n,
        prompt_template="{problem}\n" + instruction,
        chat=True,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        batch_size=args.batch_size,
        progress=True,
        return_samples=True,
    )
    seconds = time.perf_counter() - t0
    samples = res.pop("samples")
    by_problem: dict = {}
    for s in samples:
        by_problem.setdefault(s["id"], []).append(bool(s["correct"]))
    # share of problems whose n samples disagree: the groups that carry a GRPO signal (the others' advantages are 0)
    spread = sum(0 < sum(c) < len(c) for c in by_problem.values()) / max(len(by_problem), 1)
    record = {
        **vars(args),
        "avg": res["avg@n"],
        "se": res["avg@n_se"],
        "spread": round(spread, 3),
        "no_answer": res["no_answer_frac"],
        "truncated": res["truncated_frac"],
        "mean_tokens": res["mean_length"],
        "seconds": round(seconds, 1),
        "load": [round(load0, 1), round(os.getloadavg()[0], 1)],
    }
    print(json.dumps(record))
    with open(OUT, "a") as f:
        f.write(json.dumps(record) + "\n")
    for s in samples[: args.show]:
        print("----", s["gold"], s["pred"], s["correct"], s["num_tokens"], "\n" + s["completion"])


if __name__ == "__main__":
    main()
