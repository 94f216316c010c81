"""Cost of each credit estimator relative to one plain forward+backward of the same batch.

    python benchmarks/bench_estimators.py [--batch 8 --prompt-len 24 --completion-len 64 ...]

A tiny random Qwen2 and a batch of synthetic probes (prompt ⊕ reasoning ⊕ conclusion ⊕ answer, rows of
different lengths, left padded). The baseline is what a GRPO step already pays per batch: one forward and
one backward of the policy over prompt ⊕ completion (token log-probabilities of the completion, summed).
Each estimator is timed on the same batch in the same process; the table gives the time per completion and
the ratio to the baseline (the median of --repeats runs after one warm-up).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from oarl.credit import entropy_importance, gradient_importance, perturbation_importance

PAD_ID = 0
CONCLUSION_LEN = 3  # e.g. "\boxed{"
ANSWER_LEN = 2
STEP_LEN = 12  # tokens per reasoning step (a line or a sentence) for the span mode


def synthetic_batch(batch: int, prompt_len: int, completion_len: int, vocab: int, seed: int):
    """Left-padded probes of varying lengths with reasoning / answer masks; [B, L] each."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(completion_len // 2, completion_len + 1, (batch,), generator=g)  # completion lengths
    total = prompt_len + completion_len
    ids = torch.full((batch, total), PAD_ID, dtype=torch.long)
    attn = torch.zeros(batch, total, dtype=torch.bool)
    reasoning = torch.zeros_like(attn)
    answer = torch.zeros_like(attn)
    for b, n in enumerate(lengths.tolist()):  # building the inputs only, not timed
        start = total - prompt_len - n
        ids[b, start:] = torch.randint(1, vocab, (prompt_len + n,), generator=g)
        attn[b, start:] = True
        reasoning[b, start + prompt_len : total - CONCLUSION_LEN - ANSWER_LEN] = True
        answer[b, total - ANSWER_LEN :] = True
    return ids, attn, reasoning, answer


def forward_backward(model, ids, attn, completion):
    """The baseline: completion token log-probs, summed, and their gradient w.r.t. the parameters."""
    position_ids = (attn.long().cumsum(1) - 1).clamp_min(0)
    logits = model(input_ids=ids, attention_mask=attn.long(), position_ids=position_ids).logits[:, :-1]
    logp = logits.log_softmax(-1).gather(2, ids[:, 1:, None]).squeeze(-1)
    (logp * completion[:, 1:]).sum().backward()
    model.zero_grad(set_to_none=True)


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=24)
    parser.add_argument("--completion-len", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=2 * args.hidden,
        num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=args.prompt_len + args.completion_len, pad_token_id=PAD_ID,
    )
    model = Qwen2ForCausalLM(config).to(args.device).train()
    ids, attn, reasoning, answer = (t.to(args.device) for t in synthetic_batch(
        args.batch, args.prompt_len, args.completion_len, args.vocab, seed=0))
    steps = torch.arange(ids.shape[1], device=ids.device).expand_as(ids) // STEP_LEN  # [B, L]
    completion = attn.clone()
    completion[:, : ids.shape[1] - args.completion_len] = False
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def run(fn):
        def call():
            fn()
            sync()
        return timed(call, args.repeats)

    baseline = run(lambda: forward_backward(model, ids, attn, completion))
    estimators = {
        "perturbation (last)": lambda: perturbation_importance(
            model, ids, attn, reasoning, answer, mode="last", chunk_size=args.chunk_size),
        "perturbation (last, reuse)": lambda: perturbation_importance(
            model, ids, attn, reasoning, answer, mode="last", chunk_size=args.chunk_size, reuse_prefix=True),
        f"perturbation (last, {STEP_LEN}-token spans)": lambda: perturbation_importance(
            model, ids, attn, reasoning, answer, mode="last", chunk_size=args.chunk_size, span_ids=steps),
        "perturbation (answer_joint)": lambda: perturbation_importance(
            model, ids, attn, reasoning, answer, mode="answer_joint", chunk_size=args.chunk_size),
        "gradient (answer_mean)": lambda: gradient_importance(
            model, ids, attn, reasoning, answer, mode="answer_mean", generator=torch.Generator(args.device)),
        "entropy": lambda: entropy_importance(model, ids, attn, reasoning, answer),
    }
    params = sum(p.numel() for p in model.parameters())
    n_reasoning = int(reasoning.sum())
    print(f"model: Qwen2 {params / 1e3:.0f}k params, {args.layers} layers, hidden {args.hidden}, "
          f"vocab {args.vocab}; batch {args.batch}, prompt {args.prompt_len}, completions <= {args.completion_len} "
          f"({n_reasoning / args.batch:.1f} reasoning tokens per completion); device {args.device}, "
          f"{args.threads} thread(s); median of {args.repeats}")
    print(f"{'':36s} {'ms / completion':>16s} {'x fwd+bwd':>10s}")
    print(f"{'forward+backward (baseline)':36s} {1e3 * baseline / args.batch:16.2f} {1.0:10.2f}")
    for name, fn in estimators.items():
        seconds = run(fn)
        print(f"{name:36s} {1e3 * seconds / args.batch:16.2f} {seconds / baseline:10.2f}")


if __name__ == "__main__":
    main()
