"""Sample SmolLM2-135M-Instruct completions on GSM8K and MATH-500 for the answer-finding study (issue 9).

The completions are saved once (``smollm2_samples.jsonl`` beside this file) so that every rule change of
``oarl.answer`` / ``oarl.rewards`` is measured on the same text (``corpus.py``).

Per benchmark: the first ``--problems`` rows of a seeded shuffle, one sample per row for each of two
instructions in the chat template: oarl eval's (``\\boxed{}``) and oarl's plain one ("The answer is").
``--backend vllm`` (run with a Python that has vLLM, e.g. the CPU build) is much faster than HF
``generate`` here: 13 minutes for these 256 rows on the loaded 2-core box, where HF took 53 minutes for
the first 16 (README.md beside this file).

    PYTHONPATH=src python experiments/answers/sample_smollm2.py --problems 64 --backend vllm
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from oarl.data.benchmarks import load_benchmark
from oarl.generation import CHAT_TEMPLATE, HFBackend, Sampling, VLLMBackend, build_prompt
from oarl.models.loading import load_model, smollm2_dir

OUT = Path(__file__).with_name("smollm2_samples.jsonl")
INSTRUCTIONS = {
    "boxed": CHAT_TEMPLATE,
    "phrase": "{problem}\nSolve it step by step, then write the final answer after 'The answer is'.",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=64, help="rows per benchmark")
    ap.add_argument("--benchmarks", default="gsm8k,math500")
    ap.add_argument("--max-new-tokens", type=int, default=320)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--backend", choices=("hf", "vllm"), default="hf")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.backend == "vllm":
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(smollm2_dir())
        backend = VLLMBackend(str(smollm2_dir()), dtype="float32", seed=args.seed, gpu_memory_utilization=0.2)
    else:
        model, tok = load_model("smollm2-135m")
        backend = HFBackend(model, tok, batch_size=args.batch_size)
    # vLLM 0.32 on CPU fails on per-request seeds ("CPU Generator does not use offset"): its engine is seeded
    sampling = Sampling(
        temperature=args.temperature,
        top_p=0.95,
        max_new_tokens=args.max_new_tokens,
        seed=None if args.backend == "vllm" else args.seed,
    )
    done = set()
    if args.out.exists():  # resume: a (benchmark, id, style) already written is not sampled again
        done = {(r["benchmark"], r["id"], r["style"]) for r in map(json.loads, args.out.open())}
    t0 = time.time()
    for name in args.benchmarks.split(","):
        rows = list(load_benchmark(name))
        random.Random(args.seed).shuffle(rows)
        rows = rows[: args.problems]
        for style, template in INSTRUCTIONS.items():
            todo = [r for r in rows if (name, r["id"], style) not in done]
            for start in range(0, len(todo), args.batch_size):
                chunk = todo[start : start + args.batch_size]
                prompts = [build_prompt(r, tok, template, chat=True) for r in chunk]
                gens = backend.generate(prompts, 1, sampling)
                with args.out.open("a") as f:
                    for r, (g,) in zip(chunk, gens):
                        f.write(
                            json.dumps(
                                {
                                    "benchmark": name,
                                    "id": r["id"],
                                    "style": style,
                                    "gold": r["answer"],
                                    "completion": g["text"],
                                    "num_tokens": g["num_tokens"],
                                    "finish_reason": g["finish_reason"],
                                    "backend": args.backend,
                                }
                            )
                            + "\n"
                        )
                print(f"{name}/{style}: {start + len(chunk)}/{len(todo)} rows, {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
