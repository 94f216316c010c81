"""Cost of each credit estimator relative to one plain forward+backward of the same batch.

    python benchmarks/bench_estimators.py [--batch 8 --prompt-len 24 --completion-len 64 ...]

A tiny random Qwen2 and a batch of synthetic probes (prompt ⊕ reasoning ⊕ conclusion ⊕ answer, rows of
different lengths, left padded). The baseline is what a GRPO step already pays per batch: one forward and
one backward of the policy over prompt ⊕ completion (token log-probabilities of the completion, summed).
Each estimator is timed on the same batch in the same process; the table gives the time per completion and
the ratio to the baseline (the median of --repeats runs after one warm-up).

Rollout credit samples --rollouts continuations at each boundary of STEP_LEN-token steps (at most --max-steps
steps), each as long as the rest of its completion (what a continuation writes: the remaining steps and the
answer), with ``generate`` and its key/value cache; scoring is free here (a verifier costs next to nothing).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from oarl.credit import entropy_importance, gradient_importance, grail_saliency, perturbation_importance
from oarl.credit.rollout import rollout_importance

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


def split_prompts(ids, attn, reasoning, prompt_len: int):
    """The probes as rollout credit takes them: prompts [B, P] (left padded) and completions [B, T] (right
    padded) with masks, and the reasoning step of each completion token ([B, T], STEP_LEN tokens a step)."""
    rows = [(ids[b][attn[b]], reasoning[b][attn[b]]) for b in range(ids.shape[0])]
    width = max(len(r) for r, _ in rows) - prompt_len
    prompt_ids = torch.stack([r[:prompt_len] for r, _ in rows])
    completion_ids = torch.full((len(rows), width), PAD_ID, dtype=torch.long, device=ids.device)
    completion_mask = torch.zeros_like(completion_ids)
    steps = torch.full_like(completion_ids, -1)
    for b, (r, flags) in enumerate(rows):
        n = len(r) - prompt_len
        completion_ids[b, :n], completion_mask[b, :n] = r[prompt_len:], 1
        steps[b, :n] = torch.where(flags[prompt_len:], flags[prompt_len:].long().cumsum(0) - 1, -1) // STEP_LEN
    steps[steps < 0] = -1
    lengths = completion_mask.sum(1).tolist()
    return prompt_ids, torch.ones_like(prompt_ids), completion_ids, completion_mask, steps, lengths


def remaining_length_sampler(model, prompt_ids, lengths: list[int]):
    """K continuations per prefix, each as long as the rest of its completion (the row is told by its prompt, random
    tokens); prefixes needing the same length share one ``generate`` call."""
    prompt_len = prompt_ids.shape[1]
    total_of = {tuple(p): prompt_len + n for p, n in zip(prompt_ids.tolist(), lengths)}

    def sampler(prefixes, k):
        out = [None] * len(prefixes)
        by_length: dict[int, list[int]] = {}
        for i, p in enumerate(prefixes):
            by_length.setdefault(max(total_of[tuple(p[:prompt_len])] - len(p), 1), []).append(i)
        for length, indices in by_length.items():
            width = max(len(prefixes[i]) for i in indices)
            rows = [[PAD_ID] * (width - len(prefixes[i])) + prefixes[i] for i in indices for _ in range(k)]
            ids = torch.tensor(rows, device=model.device)
            new = model.generate(input_ids=ids, attention_mask=(ids != PAD_ID).long(), do_sample=True, top_k=0,
                                 max_new_tokens=length, min_new_tokens=length, pad_token_id=PAD_ID,
                                 eos_token_id=None)[:, width:].tolist()
            for j, i in enumerate(indices):
                out[i] = new[j * k : (j + 1) * k]
        return out

    return sampler


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
    parser.add_argument("--rollouts", type=int, default=4, help="rollout credit: continuations per step boundary")
    parser.add_argument("--max-steps", type=int, default=8, help="rollout credit: steps per completion at most")
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
    rollout_batch = split_prompts(ids, attn, reasoning, args.prompt_len)
    rollout_batch, lengths = rollout_batch[:5], rollout_batch[5]
    rollout_sampler = remaining_length_sampler(model, rollout_batch[0], lengths)
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
        "grail": lambda: grail_saliency(model, ids, attn, reasoning, answer),
        f"rollout (K={args.rollouts}, {STEP_LEN}-token steps)": lambda: rollout_importance(
            *rollout_batch, torch.arange(args.batch), rollout_sampler, lambda rows, comps: [1.0] * len(comps),
            rollouts=args.rollouts, max_steps=args.max_steps),
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
