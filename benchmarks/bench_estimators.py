"""Cost of each credit estimator relative to one plain forward+backward of the same batch.

    python benchmarks/bench_estimators.py [--model random --batch 8 --prompt-len 24 --completion-len 64 ...]
    python benchmarks/bench_estimators.py --model smollm2-135m --batch 2 --prompt-len 128 \\
        --completion-len 256,512,1024 --estimators gradient,gradient-bf16,gradient-checkpointing,entropy

--model random (default): a tiny random Qwen2 (--vocab, --hidden, --layers); tiny: the embedded default
model's architecture (1.06M parameters, untrained); any other value goes to ``oarl.models.loading.load_model``
(e.g. smollm2-135m). Synthetic probes (prompt ⊕ reasoning ⊕ conclusion ⊕
answer, rows of different lengths, left padded): cost does not depend on the token ids. The baseline is what
a GRPO step already pays per batch: one forward and one backward of the policy over prompt ⊕ completion in
float32 (token log-probabilities of the completion from the full logits, summed, gradient into the
parameters). Also shown: TRL's fused LM head (what TRL 1.16's GRPOTrainer runs: log-probabilities without
materialising the full logits) and, when a bf16 estimator is asked for, the baseline under bf16 autocast.
Each estimator is timed on the same batch in the same process; the table gives the time per completion and
the ratio to the float32 baseline: the median of --repeats runs after one warm-up, in wall time and in
process CPU time (the second is far less sensitive to other processes on a shared machine). The "-bf16"
variants of OAR-G run under torch.autocast(bfloat16), as OARTrainer does with bf16=True; "-checkpointing"
turns OAR-G's activation checkpointing on. For each OAR-G variant a profile splits its time into the clean
forward, the noisy forward and the backward (torch.profiler, over one more run). OAR-P runs without prefix reuse
unless its name ends in "-reuse" (OARTrainer's default, where the model's cache allows it); "-spans": --step-len-token
steps; "-hierarchical": the steps, then token by token in those reaching the 0.4-quantile.

Rollout credit samples --rollouts continuations at each boundary of STEP_LEN-token steps (at most --max-steps
steps), each as long as the rest of its completion (what a continuation writes: the remaining steps and the
answer), with ``generate`` and its key/value cache; scoring is free here (a verifier costs next to nothing).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch

from oarl.credit import entropy_importance, gradient_importance, grail_saliency, perturbation_importance
from oarl.credit.rollout import rollout_importance

PAD_ID = 0
CONCLUSION_LEN = 3  # e.g. "\boxed{"
ANSWER_LEN = 2
STEP_LEN = 12  # tokens per reasoning step (a line or a sentence) for the span mode
ESTIMATORS = (
    "perturbation",
    "perturbation-reuse",
    "perturbation-spans",
    "perturbation-spans-reuse",
    "perturbation-hierarchical",
    "perturbation-hierarchical-reuse",
    "perturbation-joint",
    "gradient",
    "gradient-checkpointing",
    "gradient-bf16",
    "gradient-bf16-checkpointing",
    "entropy",
    "grail",
    "rollout",
)
GRADIENT_PHASES = ("clean_forward", "noisy_forward", "backward")


def synthetic_batch(batch: int, prompt_len: int, completion_len: int, vocab: int, seed: int):
    """Left-padded probes of varying lengths with reasoning / answer masks; [B, L] each."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(completion_len // 2, completion_len + 1, (batch,), generator=g)  # completion lengths
    lengths[0] = completion_len  # the longest row has the full length
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


def fused_forward_backward(model, ids, attn, completion):
    """TRL's training forward: log-probs through its fused LM head (``add_fused_lm_head``), then backward."""
    labels = ids.masked_fill(~completion, -100)
    logp = model(input_ids=ids, attention_mask=attn.long(), labels=labels, fused_lm_head=True).log_probs
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
            new = model.generate(
                input_ids=ids,
                attention_mask=(ids != PAD_ID).long(),
                do_sample=True,
                top_k=0,
                max_new_tokens=length,
                min_new_tokens=length,
                pad_token_id=PAD_ID,
                eos_token_id=None,
            )[:, width:].tolist()
            for j, i in enumerate(indices):
                out[i] = new[j * k : (j + 1) * k]
        return out

    return sampler


def timed(fn, repeats: int) -> tuple[float, float]:
    """Median (wall seconds, process CPU seconds) of `repeats` calls after one warm-up."""
    fn()  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def gradient_profile(fn) -> dict[str, float]:
    """Share of each OAR-G phase (record_function labels in oarl.credit.gradient) in one run's CPU time."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    totals = {e.key: e.cpu_time_total for e in prof.key_averages()}
    phases = {p: totals.get(f"oarl.gradient.{p}", 0.0) for p in GRADIENT_PHASES}
    whole = sum(phases.values()) or 1.0
    return {p: t / whole for p, t in phases.items()}


def build_model(args):
    if args.model == "random":
        from transformers import Qwen2Config, Qwen2ForCausalLM

        config = Qwen2Config(
            vocab_size=args.vocab,
            hidden_size=args.hidden,
            intermediate_size=2 * args.hidden,
            num_hidden_layers=args.layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=args.prompt_len + max(args.lengths),
            pad_token_id=PAD_ID,
        )
        return Qwen2ForCausalLM(config).to(args.device)
    if args.model == "tiny":  # the embedded model's architecture, untrained: cost does not depend on the weights
        from oarl.models.tiny import build_tiny

        return build_tiny()[0].to(args.device)
    from oarl.models.loading import load_model

    return load_model(args.model, device=args.device)[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random", help="'random' (a tiny random Qwen2), 'tiny' or a load_model name")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=24)
    parser.add_argument("--completion-len", default="64", help="one length or a comma-separated list")
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=32)
    parser.add_argument("--step-len", type=int, default=STEP_LEN, help="tokens per step of OAR-P's span modes")
    parser.add_argument(
        "--estimators", default=",".join(ESTIMATORS), help="comma-separated subset of " + ",".join(ESTIMATORS)
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rollouts", type=int, default=4, help="rollout credit: continuations per step boundary")
    parser.add_argument("--max-steps", type=int, default=8, help="rollout credit: steps per completion at most")
    args = parser.parse_args()
    args.lengths = [int(x) for x in args.completion_len.split(",")]
    names = [e.strip() for e in args.estimators.split(",") if e.strip()]
    if any(n not in ESTIMATORS for n in names):
        parser.error(f"--estimators: choose among {', '.join(ESTIMATORS)}")

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(args).train()
    from trl.trainer.utils import add_fused_lm_head

    add_fused_lm_head(model)  # model(..., fused_lm_head=True) gives log-probs; other calls are unchanged
    vocab = model.config.vocab_size
    device_type = torch.device(args.device).type
    sync = torch.cuda.synchronize if device_type == "cuda" else (lambda: None)

    def run(fn):
        def call():
            fn()
            sync()

        return timed(call, args.repeats)

    def autocast(enabled: bool):
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=enabled)

    def gradient(ids, attn, reasoning, answer, bf16: bool, checkpointing: bool):
        def fn():
            with autocast(bf16):
                gradient_importance(
                    model,
                    ids,
                    attn,
                    reasoning,
                    answer,
                    mode="answer_mean",
                    generator=torch.Generator(args.device),
                    activation_checkpointing=checkpointing,
                )

        return fn

    params = sum(p.numel() for p in model.parameters())
    print("command: python benchmarks/bench_estimators.py " + " ".join(sys.argv[1:]))
    print(
        f"model: {args.model} ({type(model).__name__}, {params / 1e6:.2f}M params); batch {args.batch}, "
        f"prompt {args.prompt_len}; device {args.device}, {args.threads} thread(s); median of {args.repeats}; "
        f"load {os.getloadavg()[0]:.2f}; {platform.node()}"
    )
    for length in args.lengths:
        ids, attn, reasoning, answer = (
            t.to(args.device) for t in synthetic_batch(args.batch, args.prompt_len, length, vocab, seed=0)
        )
        steps = torch.arange(ids.shape[1], device=ids.device).expand_as(ids) // args.step_len  # [B, L]
        completion = attn.clone()
        completion[:, : ids.shape[1] - length] = False
        n_reasoning = int(reasoning.sum()) / args.batch
        *rollout_batch, lengths = split_prompts(ids, attn, reasoning, args.prompt_len)
        rollout_sampler = remaining_length_sampler(model, rollout_batch[0], lengths)

        def oar_p(reuse: bool, mode: str = "last", **kwargs):
            return lambda: perturbation_importance(
                model, ids, attn, reasoning, answer, mode=mode, chunk_size=args.chunk_size, reuse_prefix=reuse, **kwargs
            )

        estimators = {
            "perturbation": ("OAR-P last", oar_p(reuse=False)),
            "perturbation-reuse": ("OAR-P last, prefix reuse", oar_p(reuse=True)),
            "perturbation-spans": (f"OAR-P last, {args.step_len}-token spans", oar_p(reuse=False, span_ids=steps)),
            "perturbation-spans-reuse": ("  the same, prefix reuse", oar_p(reuse=True, span_ids=steps)),
            "perturbation-hierarchical": (
                "OAR-P hierarchical (q = 0.4)",
                oar_p(reuse=False, span_ids=steps, refine=0.4),
            ),
            "perturbation-hierarchical-reuse": (
                "  the same, prefix reuse",
                oar_p(reuse=True, span_ids=steps, refine=0.4),
            ),
            "perturbation-joint": ("OAR-P answer_joint", oar_p(reuse=False, mode="answer_joint")),
            "gradient": ("OAR-G answer_mean", gradient(ids, attn, reasoning, answer, False, False)),
            "gradient-checkpointing": ("OAR-G, checkpointing", gradient(ids, attn, reasoning, answer, False, True)),
            "gradient-bf16": ("OAR-G, bf16 autocast", gradient(ids, attn, reasoning, answer, True, False)),
            "gradient-bf16-checkpointing": (
                "OAR-G, bf16, checkpointing",
                gradient(ids, attn, reasoning, answer, True, True),
            ),
            "entropy": ("entropy", lambda: entropy_importance(model, ids, attn, reasoning, answer)),
            "grail": ("GRAIL", lambda: grail_saliency(model, ids, attn, reasoning, answer)),
            "rollout": (
                f"rollout K={args.rollouts}, {STEP_LEN}-token steps",
                lambda: rollout_importance(
                    *rollout_batch,
                    torch.arange(args.batch),
                    rollout_sampler,
                    lambda rows, comps: [1.0] * len(comps),
                    rollouts=args.rollouts,
                    max_steps=args.max_steps,
                ),
            ),
        }
        print(
            f"\ncompletions <= {length} tokens ({n_reasoning:.0f} reasoning tokens per completion on average)"
            f"; load {os.getloadavg()[0]:.2f}"
        )
        print(f"{'':34s} {'ms/compl. wall':>15s} {'x fwd+bwd':>10s} {'ms/compl. CPU':>14s} {'x fwd+bwd':>10s}")
        base_wall, base_cpu = run(lambda: forward_backward(model, ids, attn, completion))

        def row(label, wall, cpu):
            print(
                f"{label:34s} {1e3 * wall / args.batch:15.1f} {wall / base_wall:10.2f} "
                f"{1e3 * cpu / args.batch:14.1f} {cpu / base_cpu:10.2f}",
                flush=True,
            )

        row("fwd+bwd fp32 (baseline)", base_wall, base_cpu)
        if any("bf16" in name for name in names):

            def bf16_baseline():
                with autocast(True):
                    forward_backward(model, ids, attn, completion)

            row("fwd+bwd bf16 autocast", *run(bf16_baseline))
        row("fwd+bwd fp32, TRL fused LM head", *run(lambda: fused_forward_backward(model, ids, attn, completion)))
        for name in names:
            label, fn = estimators[name]
            row(label, *run(fn))
            if name.startswith("gradient"):
                shares = gradient_profile(fn)
                print(
                    f"{'  OAR-G profile':34s} "
                    + ", ".join(f"{p.replace('_', ' ')} {100 * s:.0f}%" for p, s in shares.items())
                )
    print(f"\nload at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
