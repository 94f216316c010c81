"""Generation throughput of vLLM against Hugging Face ``generate`` on the CPU, in one process.

    python benchmarks/bench_generation.py [--model smollm2-135m --prompts 64 --n 8 --max-new-tokens 256
                                           --hf-batch-size 8 --threads 2 --data-dir ../shared/data/benchmarks]

Needs vLLM (the CPU build: `make install-vllm`, then run it with .venv-vllm/bin/python). The workload is
``oarl eval``'s: the first ``--prompts`` GSM8K problems asked through the model's chat template, ``--n`` samples
each at temperature 0.6 / top-p 0.95 (EvalConfig's defaults), up to ``--max-new-tokens`` tokens, with the two
backends of ``oarl.generation`` (``HFBackend``: batched ``generate`` with left padding, ``--hf-batch-size``
prompts x n per call; ``VLLMBackend``: every prompt in one ``LLM.generate`` call), same model weights (float32),
same prompts and token ids. The HF backend runs first, then vLLM; the engine's start-up (loading, profiling,
compilation) is timed apart from its generation. Printed: completions/s and generated tokens/s of each, and
their ratio (vLLM over HF), with the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="a name oarl.models.loading.model_directory resolves")
    parser.add_argument("--prompts", type=int, default=64, help="GSM8K problems (default: %(default)s)")
    parser.add_argument("--n", type=int, default=8, help="samples per prompt (default: %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="completion cap (default: %(default)s)")
    parser.add_argument("--hf-batch-size", type=int, default=8, help="prompts per generate call (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the HF backend (default: %(default)s)")
    parser.add_argument("--data-dir", default=None, help="benchmark data directory (default: oarl's)")
    args = parser.parse_args(argv)

    from oarl.data.benchmarks import load_benchmark
    from oarl.generation import HFBackend, Sampling, VLLMBackend, build_prompt
    from oarl.models.loading import load_model, load_tokenizer, model_directory

    torch.set_num_threads(args.threads)
    path = model_directory(args.model)
    tokenizer = load_tokenizer(path)
    rows = load_benchmark("gsm8k", data_dir=args.data_dir, limit=args.prompts)
    prompts = [build_prompt(r, tokenizer) for r in rows]
    chat = tokenizer.chat_template is not None
    sampling = Sampling(temperature=0.6, top_p=0.95, max_new_tokens=args.max_new_tokens, seed=0)
    print(
        f"{args.model}: {len(prompts)} prompts x n={args.n}, <= {args.max_new_tokens} new tokens; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}; "
        f"load average before: {load_average()}",
        flush=True,
    )

    results = {}
    model, _ = load_model(path)
    hf = HFBackend(model, tokenizer, batch_size=args.hf_batch_size, add_special_tokens=not chat)
    started = time.perf_counter()
    gens = hf.generate(prompts, args.n, sampling)
    results["hf"] = (time.perf_counter() - started, gens)
    print(f"hf done in {results['hf'][0]:.1f} s (load average {load_average()})", flush=True)
    del model, hf

    started = time.perf_counter()
    vllm = VLLMBackend.start(path, tokenizer, seed=0, add_special_tokens=not chat)
    start_s = time.perf_counter() - started
    started = time.perf_counter()
    gens = vllm.generate(prompts, args.n, sampling)
    results["vllm"] = (time.perf_counter() - started, gens)

    print(f"\nload average after: {load_average()}; vLLM engine start {start_s:.1f} s (not counted below)")
    print(f"{'backend':<8} {'seconds':>8} {'completions/s':>14} {'tokens/s':>9} {'mean length':>12}")
    rate = {}
    for name, (seconds, gens) in results.items():
        flat = [g for row in gens for g in row]
        tokens = sum(g["num_tokens"] for g in flat)
        rate[name] = (len(flat) / seconds, tokens / seconds)
        print(f"{name:<8} {seconds:>8.1f} {rate[name][0]:>14.2f} {rate[name][1]:>9.1f} {tokens / len(flat):>12.1f}")
    print(
        f"vLLM / HF: {rate['vllm'][0] / rate['hf'][0]:.2f}x completions/s, {rate['vllm'][1] / rate['hf'][1]:.2f}x tokens/s"
    )


if __name__ == "__main__":
    main()
