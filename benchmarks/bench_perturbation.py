"""OAR-P on real completions: the cost of each mode per completion, and its agreement with token-level OAR-P.

    python benchmarks/bench_perturbation.py --part agreement [--model smollm2-135m --n 12 --max-new-tokens 320]
    python benchmarks/bench_perturbation.py --part timing --timing-n 2 [--modes token,token-reuse,...]

Completions: sampled from the model (temperature 0.7, top-p 0.95, seed --seed) on GSM8K test questions
(``../shared/data/benchmarks/gsm8k.jsonl`` through ``oarl.data.benchmarks``) in oarl's chat prompt (the
question and the instruction to end with "The answer is N."); kept are those that end with EOS, have a
parsable final answer and at least --min-reasoning reasoning tokens, until --n are kept. They are cached
under ``$OARL_CACHE/bench/`` (the sampling takes minutes on a CPU; it shows its progress).

Modes (OAR-P outcome "last", replacement = the pad id, as OARTrainer does; "-reuse": with prefix reuse, the
default of OARTrainer since it is exact, the others recompute every variant):
    token                token-level OAR-P, recomputing every variant (the reference)
    token-reuse          the same, reusing the clean forward's key/value cache before each replaced token
    line, sentence       one variant per reasoning step (credit_span); + "-reuse"
    line-refine,
    sentence-refine      hierarchical: steps, then token by token inside the steps whose normalised importance
                         reaches the Bi-Level threshold (credit_refine); + "-reuse"
    gradient, entropy    OAR-G (answer_mean, one noise draw) and policy entropy, for comparison
    gradient-bf16        OAR-G under torch.autocast(bfloat16) with the same noise draw, as with bf16=True;
                         gradient-seed1: another noise draw (float32); both also compared with OAR-G float32

--part agreement: every mode's importances on the --n completions against token-level ones (computed with
prefix reuse, which --part timing shows equal to recomputation): Spearman over all reasoning tokens and over
the refined ones, overlap of the top-10% tokens (and how often the sets are identical), mean absolute
difference of the Bi-Level weights; mean ± standard error over completions. The hierarchical importances
here are composed from the token-level and step importances (what the hierarchical mode computes, as
--part timing checks on its completions).
--part timing: each mode once on the first --timing-n completions, against one plain forward+backward of the
same rows in float32 (baseline, median of 3 after a warm-up), in the same process; wall and process CPU
time per completion, the positions (rows x columns) the mode sent through the model per completion (a cost that
does not depend on the machine's load), and the largest difference of each exact mode from recomputation.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from oarl.credit import entropy_importance, gradient_importance, perturbation_importance, segment_completions
from oarl.credit.bilevel import bilevel_weights, reaches_threshold
from oarl.report.agreement import spearman

TOKEN_MODES = ("token", "token-reuse")
STEP_MODES = ("line", "sentence")
STEP_REUSE_MODES = ("line-reuse", "sentence-reuse")
REFINE_MODES = ("line-refine", "sentence-refine", "line-refine-reuse", "sentence-refine-reuse")
OTHER_MODES = ("gradient", "gradient-bf16", "gradient-seed1", "entropy")
MODES = TOKEN_MODES + STEP_MODES + STEP_REUSE_MODES + REFINE_MODES + OTHER_MODES
EXACT = {m: m.removesuffix("-reuse") for m in MODES if m.endswith("-reuse")}  # the same importances, recomputed
TOP_FRACTION = 0.1


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("agreement", "timing"), required=True)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--n", type=int, default=12, help="completions (agreement)")
    parser.add_argument("--timing-n", type=int, default=2, help="completions timed (the first of the --n)")
    parser.add_argument("--max-new-tokens", type=int, default=320)
    parser.add_argument("--min-reasoning", type=int, default=160, help="fewest reasoning tokens of a kept completion")
    parser.add_argument("--threshold", type=float, default=0.4, help="Bi-Level threshold q (and refine quantile)")
    parser.add_argument("--chunk-size", type=int, default=32)
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ",".join(MODES))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if any(m not in MODES for m in args.modes):
        parser.error(f"--modes: choose among {', '.join(MODES)}")
    return args


# ---------------------------------------------------------------------------------------------------------
# Completions


def sample_completions(model, tokenizer, args) -> list[dict]:
    """[{"prompt_ids", "completion_ids"}] * n, cached (atomic write) under $OARL_CACHE/bench/."""
    from oarl.data.benchmarks import load_benchmark
    from oarl.data.gsm import INSTRUCTION
    from oarl.models.loading import cache_dir

    path = (
        cache_dir()
        / "bench"
        / (
            f"perturbation-{Path(args.model).name}-n{args.n}-len{args.max_new_tokens}-"
            f"min{args.min_reasoning}-seed{args.seed}.json"
        )
    )
    if path.exists():
        return json.loads(path.read_text())
    questions = [r["problem"] for r in load_benchmark("gsm8k")]
    generator = torch.Generator().manual_seed(args.seed)
    kept, tried, started, batch = [], 0, time.perf_counter(), 8
    while len(kept) < args.n and tried < len(questions):
        texts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": f"{q}\n{INSTRUCTION}"}], tokenize=False, add_generation_prompt=True
            )
            for q in questions[tried : tried + batch]
        ]
        tried += len(texts)
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
        with torch.no_grad():
            out = model.generate(
                **enc,
                max_new_tokens=args.max_new_tokens,
                do_sample=True,
                temperature=0.7,
                top_p=0.95,
                pad_token_id=tokenizer.pad_token_id,
            )
        completions = out[:, enc["input_ids"].shape[1] :]
        mask = torch.ones_like(completions)
        for b in range(len(texts)):
            ends = (completions[b] == tokenizer.eos_token_id).nonzero()
            if len(ends) == 0:  # truncated
                mask[b] = 0
            else:
                mask[b, int(ends[0]) + 1 :] = 0
        segments = segment_completions(tokenizer, completions, mask, span="line")
        for b in range(len(texts)):
            if mask[b].any() and segments.has_answer[b] and int(segments.reasoning[b].sum()) >= args.min_reasoning:
                kept.append(
                    {
                        "prompt_ids": enc["input_ids"][b][enc["attention_mask"][b].bool()].tolist(),
                        "completion_ids": completions[b][mask[b].bool()].tolist(),
                    }
                )
        print(
            f"sampling: {tried} questions, {len(kept)}/{args.n} completions kept, "
            f"{time.perf_counter() - started:.0f} s",
            file=sys.stderr,
            flush=True,
        )
    kept = kept[: args.n]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(kept))
    os.replace(tmp, path)
    return kept


def probe_batch(tokenizer, rows: list[dict]) -> dict:
    """Left-padded prompts ⊕ right-padded completions, with reasoning / answer masks and line / sentence ids."""
    pad = tokenizer.pad_token_id
    p_len = max(len(r["prompt_ids"]) for r in rows)
    c_len = max(len(r["completion_ids"]) for r in rows)
    prompt = torch.full((len(rows), p_len), pad)
    prompt_mask = torch.zeros_like(prompt)
    completion = torch.full((len(rows), c_len), pad)
    completion_mask = torch.zeros_like(completion)
    for b, r in enumerate(rows):
        prompt[b, p_len - len(r["prompt_ids"]) :] = torch.tensor(r["prompt_ids"])
        prompt_mask[b, p_len - len(r["prompt_ids"]) :] = 1
        completion[b, : len(r["completion_ids"])] = torch.tensor(r["completion_ids"])
        completion_mask[b, : len(r["completion_ids"])] = 1
    no_prompt = torch.zeros_like(prompt, dtype=torch.bool)
    out = {"ids": torch.cat([prompt, completion], 1), "attn": torch.cat([prompt_mask, completion_mask], 1).bool()}
    for span in STEP_MODES:
        seg = segment_completions(tokenizer, completion, completion_mask, span=span)
        out[span] = torch.cat([torch.full_like(prompt, -1), seg.steps], 1)
    out["reasoning"] = torch.cat([no_prompt, seg.reasoning], 1)
    out["answer"] = torch.cat([no_prompt, seg.answer], 1)
    return out


def run_mode(model, tokenizer, probe: dict, mode: str, args) -> torch.Tensor:
    common = (model, probe["ids"], probe["attn"], probe["reasoning"], probe["answer"])
    if mode.startswith("gradient"):
        seed = args.seed + (mode == "gradient-seed1")
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "gradient-bf16"):
            return gradient_importance(*common, generator=torch.Generator().manual_seed(seed))
    if mode == "entropy":
        return entropy_importance(*common)
    span = mode.split("-")[0]
    return perturbation_importance(
        *common,
        mode="last",
        chunk_size=args.chunk_size,
        pad_token_id=tokenizer.pad_token_id,
        reuse_prefix="auto" if mode.endswith("reuse") else False,
        span_ids=probe[span] if span in STEP_MODES else None,
        refine=args.threshold if "refine" in mode else None,
    )


# ---------------------------------------------------------------------------------------------------------
# Agreement


def top_set(values: torch.Tensor) -> set[int]:
    k = max(1, math.ceil(TOP_FRACTION * values.numel()))
    return set(torch.topk(values, k).indices.tolist())


def compare(
    reference: torch.Tensor, other: torch.Tensor, mask: torch.Tensor, refined: torch.Tensor | None, threshold: float
) -> dict:
    """Per completion (row) agreement of other [B, L] with reference [B, L] over the reasoning tokens."""
    w_ref = bilevel_weights(reference, mask, threshold)
    w_other = bilevel_weights(other, mask, threshold)
    out = {"spearman": [], "spearman_refined": [], "top_overlap": [], "top_same": [], "weight_mae": []}
    for b in range(reference.shape[0]):
        m = mask[b]
        ref, oth = reference[b][m], other[b][m]
        out["spearman"].append(spearman(ref, oth))
        if refined is not None:
            r = refined[b][m]
            out["spearman_refined"].append(spearman(ref[r], oth[r]))
        top_ref, top_other = top_set(ref), top_set(oth)
        out["top_overlap"].append(len(top_ref & top_other) / len(top_ref))
        out["top_same"].append(float(top_ref == top_other))
        out["weight_mae"].append(float((w_ref[b][m] - w_other[b][m]).abs().mean()))
    return out


def mean_se(values: list[float]) -> str:
    values = [v for v in values if v == v]
    if not values:
        return "-"
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {se:.3f}"


def agreement(model, tokenizer, rows, args):
    probe = probe_batch(tokenizer, rows)
    mask = probe["reasoning"]
    started = time.perf_counter()
    reference = run_mode(model, tokenizer, probe, "token-reuse", args)
    print(f"token-level (prefix reuse): {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    results = {}
    for mode in args.modes:
        if mode in TOKEN_MODES or mode in STEP_REUSE_MODES or mode.endswith("refine-reuse"):
            continue  # the same importances as their recomputed mode
        if mode in REFINE_MODES:  # composed: the refined steps' tokens get their token-level importance
            span = mode.split("-")[0]
            steps = results.get(span, {}).get("importance")
            if steps is None:
                steps = run_mode(model, tokenizer, probe, span, args)
            refined = reaches_threshold(steps, mask, args.threshold)
            importance = torch.where(refined, reference, steps)
        else:
            importance, refined = run_mode(model, tokenizer, probe, mode, args), None
        results[mode] = {
            "importance": importance,
            "refined": refined,
            **compare(reference, importance, mask, refined, args.threshold),
        }
        print(f"{mode}: done, {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    lengths = [len(r["completion_ids"]) for r in rows]
    print(
        f"{len(rows)} completions of {min(lengths)}-{max(lengths)} tokens (mean {statistics.fmean(lengths):.0f}), "
        f"{mask.sum(1).float().mean():.0f} reasoning tokens on average; Bi-Level threshold {args.threshold}"
    )
    print(
        f"{'mode':20s} {'Spearman':>14s} {'Spearman refined':>17s} {'top-10% overlap':>16s} {'top-10% same':>14s} "
        f"{'weight MAE':>14s} {'refined':>8s}"
    )
    for mode, r in results.items():
        frac = "-" if r["refined"] is None else f"{float(r['refined'].sum() / mask.sum()):.2f}"
        print(
            f"{mode:20s} {mean_se(r['spearman']):>14s} {mean_se(r['spearman_refined']):>17s} "
            f"{mean_se(r['top_overlap']):>16s} {mean_se(r['top_same']):>14s} {mean_se(r['weight_mae']):>14s} "
            f"{frac:>8s}",
            flush=True,
        )
    if "gradient" in results:  # OAR-G against itself: precision and noise draw
        print("OAR-G (float32, one draw) against:")
        for mode in ("gradient-bf16", "gradient-seed1"):
            if mode in results:
                r = compare(results["gradient"]["importance"], results[mode]["importance"], mask, None, args.threshold)
                print(
                    f"{mode:20s} {mean_se(r['spearman']):>14s} {'-':>17s} {mean_se(r['top_overlap']):>16s} "
                    f"{mean_se(r['top_same']):>14s} {mean_se(r['weight_mae']):>14s}",
                    flush=True,
                )


# ---------------------------------------------------------------------------------------------------------
# Timing


def forward_backward(model, probe):
    ids, attn = probe["ids"], probe["attn"]
    completion = attn.clone()
    completion[:, : probe["reasoning"].long().argmax(1).min()] = False
    logits = model(
        input_ids=ids, attention_mask=attn.long(), position_ids=(attn.long().cumsum(1) - 1).clamp_min(0)
    ).logits[:, :-1]
    logp = logits.log_softmax(-1).gather(2, ids[:, 1:, None]).squeeze(-1)
    (logp * completion[:, 1:]).sum().backward()
    model.zero_grad(set_to_none=True)


def clock(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


class TokenCounter:
    """Positions sent through the model's forward (rows x input columns, summed over calls): a cost measure that,
    unlike a time, does not depend on the machine's load (attention to a reused prefix is not in it)."""

    def __init__(self, model):
        self.positions = 0
        model.register_forward_pre_hook(self.count, with_kwargs=True)

    def count(self, module, args, kwargs):
        x = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs.get("inputs_embeds")
        self.positions += x.shape[0] * x.shape[1]


def timing(model, tokenizer, rows, args):
    probe = probe_batch(tokenizer, rows)
    n = len(rows)
    counter = TokenCounter(model)
    forward_backward(model, probe)  # warm-up
    base = [clock(lambda: forward_backward(model, probe))[1:] for _ in range(3)]
    base_wall, base_cpu = statistics.median(b[0] for b in base), statistics.median(b[1] for b in base)
    print(
        f"{n} completions of {[len(r['completion_ids']) for r in rows]} tokens, "
        f"{probe['reasoning'].sum(1).tolist()} reasoning; prompts {[len(r['prompt_ids']) for r in rows]} tokens"
    )
    print(
        f"{'mode':20s} {'s/compl. wall':>14s} {'x fwd+bwd':>10s} {'s/compl. CPU':>13s} {'x fwd+bwd':>10s} "
        f"{'positions':>10s} {'max |diff|':>11s}  load"
    )
    print(f"{'fwd+bwd (baseline)':20s} {base_wall / n:14.2f} {1.0:10.2f} {base_cpu / n:13.2f} {1.0:10.2f}", flush=True)
    done = {}
    for mode in args.modes:
        counter.positions = 0
        importance, wall, cpu = clock(lambda: run_mode(model, tokenizer, probe, mode, args))
        done[mode] = importance
        exact = EXACT.get(mode)
        if mode in ("line-refine", "sentence-refine") and "token" in done and mode.split("-")[0] in done:
            span = mode.split("-")[0]
            refined = reaches_threshold(done[span], probe["reasoning"], args.threshold)
            exact_value = torch.where(refined, done["token"], done[span])  # hierarchical = composed
        else:
            exact_value = done.get(exact)
        diff = "-" if exact_value is None else f"{float((importance - exact_value).abs().max()):.1e}"
        print(
            f"{mode:20s} {wall / n:14.2f} {wall / base_wall:10.2f} {cpu / n:13.2f} {cpu / base_cpu:10.2f} "
            f"{counter.positions / n:10.0f} {diff:>11s}  {os.getloadavg()[0]:.1f}",
            flush=True,
        )


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from oarl.models.loading import load_model

    model, tokenizer = load_model(args.model)
    print("command: python benchmarks/bench_perturbation.py " + " ".join(sys.argv[1:] if argv is None else argv))
    print(
        f"model {args.model}, {args.threads} thread(s), chunk size {args.chunk_size}; load {os.getloadavg()[0]:.2f}; "
        f"{platform.node()}"
    )
    rows = sample_completions(model, tokenizer, args)
    if args.part == "agreement":
        agreement(model, tokenizer, rows, args)
    else:
        timing(model, tokenizer, rows[: args.timing_n], args)
    print(f"load at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
