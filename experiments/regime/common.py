"""Shared helpers of the regime experiments: held-out avg@n at a temperature (SE over problems) and greedy
accuracy, both by the package's own evaluation (``oarl.evaluate.evaluate_model``, the numbers `oarl train`
reports). The gain of two evaluations on the same problems, with its paired SE, is ``oarl.runs.heldout_gain``."""

from __future__ import annotations

import time

from oarl.evaluate import evaluate_model

SEQUENCES_PER_BATCH = 512  # completions generated together (prompts x n)


def heldout(model, tokenizer, rows, *, n=4, temperature=1.0, max_new_tokens=56, seed=0) -> dict:
    """``{avg, se, n_problems, n_samples, per_problem, example}`` of ``rows`` (``prompt``, ``answer``) with n samples
    each at ``temperature`` (0: greedy), in the form of ``oarl train``'s held-out numbers."""
    res = evaluate_model(
        model,
        tokenizer,
        rows,
        n=n,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        seed=seed,
        batch_size=max(1, SEQUENCES_PER_BATCH // n),
        return_samples=True,
    )
    by_problem: dict = {}
    for sample in res["samples"]:
        by_problem.setdefault(sample["id"], []).append(float(sample["correct"]))
    return {
        "avg": res["avg@n"],
        "se": res["avg@n_se"],
        "n_problems": len(rows),
        "n_samples": n,
        "per_problem": [sum(c) / len(c) for c in by_problem.values()],
        "example": res["samples"][0]["completion"],
    }


def evaluate(model, tokenizer, rows, *, n=4, temperature=1.0, max_new_tokens=56, seed=0, greedy_too=True):
    """avg@n at `temperature` with its standard error over problems, plus greedy accuracy. Returns a dict
    with per-problem scores so that paired differences can be computed."""
    t0 = time.perf_counter()
    res = heldout(model, tokenizer, rows, n=n, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
    res["sample_seconds"] = time.perf_counter() - t0
    if greedy_too:
        t1 = time.perf_counter()
        greedy = heldout(model, tokenizer, rows, n=1, temperature=0.0, max_new_tokens=max_new_tokens)
        res.update(greedy=greedy["avg"], greedy_se=greedy["se"], greedy_seconds=time.perf_counter() - t1)
    return res


def fmt(r):
    s = f"avg@{r['n_samples']}={r['avg']:.3f}±{r['se']:.3f} (n={r['n_problems']}x{r['n_samples']})"
    if "greedy" in r:
        s += f" greedy={r['greedy']:.3f}±{r['greedy_se']:.3f}"
    return s + f" [{r['sample_seconds']:.1f}s+{r.get('greedy_seconds', 0):.1f}s]"
