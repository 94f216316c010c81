"""Shared helpers of the regime experiments: batched sampling evaluation (avg@n and greedy) with SE."""

from __future__ import annotations

import math
import time

import torch

from oarl.data.arithmetic import is_correct


@torch.no_grad()
def generate(model, tokenizer, prompts, *, n=1, temperature=1.0, greedy=False, max_new_tokens=56, batch_size=512, seed=0):
    """Completions (text, EOS stripped) for each prompt repeated n times: list of lists [len(prompts)][n]."""
    model.eval()
    tokenizer.padding_side = "left"
    flat = [p for p in prompts for _ in range(n)]
    out = []
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    for i in range(0, len(flat), batch_size):
        chunk = flat[i : i + batch_size]
        enc = tokenizer(chunk, return_tensors="pt", padding=True)
        kw = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
        ids = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id, **kw)
        out += tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return [out[j * n : (j + 1) * n] for j in range(len(prompts))]


def evaluate(model, tokenizer, rows, *, n=4, temperature=1.0, max_new_tokens=56, seed=0, greedy_too=True):
    """avg@n at `temperature` with its standard error over problems, plus greedy accuracy. Returns a dict
    with per-problem scores so that paired differences can be computed."""
    t0 = time.perf_counter()
    prompts = [r["prompt"] for r in rows]
    comps = generate(model, tokenizer, prompts, n=n, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
    per = [sum(is_correct(c, r["answer"]) for c in cs) / n for cs, r in zip(comps, rows)]
    res = {"n_problems": len(rows), "n_samples": n, "avg": mean(per), "se": se(per), "per_problem": per,
           "sample_seconds": time.perf_counter() - t0}
    if greedy_too:
        t1 = time.perf_counter()
        g = generate(model, tokenizer, prompts, n=1, greedy=True, max_new_tokens=max_new_tokens)
        gper = [float(is_correct(c[0], r["answer"])) for c, r in zip(g, rows)]
        res.update(greedy=mean(gper), greedy_se=se(gper), greedy_seconds=time.perf_counter() - t1)
    res["example"] = comps[0][0]
    return res


def mean(xs):
    return sum(xs) / len(xs)


def se(xs):
    m = mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs))


def paired(before, after):
    """Mean difference after - before over the same problems, and its paired standard error."""
    d = [a - b for a, b in zip(after, before)]
    return mean(d), se(d)


def fmt(r):
    s = f"avg@{r['n_samples']}={r['avg']:.3f}±{r['se']:.3f} (n={r['n_problems']}x{r['n_samples']})"
    if "greedy" in r:
        s += f" greedy={r['greedy']:.3f}±{r['greedy_se']:.3f}"
    return s + f" [{r['sample_seconds']:.1f}s+{r.get('greedy_seconds', 0):.1f}s]"
