"""Evaluation: verify sampled completions and compute the field's numbers.

Per benchmark, from n samples per problem of which c are correct:

    pass@k      unbiased estimator 1 - C(n-c, k) / C(n, k), in the stable product form
                1 - prod_{i=n-c+1}^{n} (1 - k/i)  (Chen et al. 2021), averaged over problems
    avg@n       mean accuracy over all samples (= mean_p c_p/n), with its standard error over problems
    maj@n       accuracy of the majority-voted final answer, votes pooled by value (``0.5`` = ``\\frac12``);
                samples without an answer do not vote; a tie goes to the answer seen first; no answer at
                all counts as wrong
    no_answer   fraction of samples with no parsable final answer
    mean_length mean completion length in tokens (truncated_frac: the fraction that hit max_new_tokens)

Answers are found by ``oarl.answer.extract_answer`` and verified by ``oarl.rewards.verify``: the same code as the
training reward, so training and evaluation agree.

    evaluate_model(model, tokenizer, problems, n, k_list, prompt_template=...)
        in memory, for the trainer's held-out accuracy and for scripts; returns the numbers
    benchmark_metrics(samples, n, k_list), score_generations(rows, prompts, generations, benchmark)
        the numbers of scored samples, and the scoring of generated ones (``oarl eval`` uses both)

Generation (prompts, HF and vLLM engines) is ``oarl.generation``; the ``oarl eval`` command, with its report folder
and resume, is ``oarl.commands.eval``.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

from oarl.answer import extract_answer
from oarl.generation import HFBackend, Sampling, build_prompt
from oarl.rewards import DEFAULT_TIMEOUT_S, gold_answers, group_by_value, matches_gold

# ----------------------------------------------------------------------------------------------------------
# metrics


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with n samples, c correct: 1 - C(n-c,k)/C(n,k), computed as
    1 - prod_{i=n-c+1}^{n} (1 - k/i), which never forms a large binomial coefficient."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every k-subset contains a correct sample
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def majority_correct(
    preds: Sequence[str | None], correct: Sequence[bool], timeout_s: float = DEFAULT_TIMEOUT_S
) -> bool:
    """Is the majority-voted answer correct? Answers vote by value (``\\frac12``, ``0.5`` and ``\\dfrac12`` pool
    their votes); None does not vote; ties go to the answer seen first; no answer at all is wrong.

    The right answers (``correct``, verified against the gold) are one group. The wrong ones are grouped by
    ``oarl.rewards.group_by_value`` only when together they could outvote the right ones, so most problems
    cost no verification at all.
    """
    right = [i for i, (p, c) in enumerate(zip(preds, correct, strict=True)) if p is not None and c]
    wrong = [None if p is None or c else p for p, c in zip(preds, correct)]
    num_wrong = sum(p is not None for p in wrong)
    if not right or num_wrong < len(right):
        return bool(right)
    sizes = Counter(label for label in group_by_value(wrong, timeout_s) if label is not None)
    best = max(sizes.values())
    if best != len(right):
        return len(right) > best
    return right[0] < min(label for label, size in sizes.items() if size == best)  # a tie: the first seen wins


def benchmark_metrics(samples: list[dict], n: int, k_list: Sequence[int]) -> dict:
    """The numbers of one benchmark from its samples (``id``, ``correct``, ``pred``, ``num_tokens``,
    ``finish_reason``), n per problem."""
    by_problem: dict[str, list[dict]] = {}
    for s in samples:
        by_problem.setdefault(s["id"], []).append(s)
    groups = [sorted(g, key=lambda s: s["sample"])[:n] for g in by_problem.values()]
    num_problems = len(groups)
    out: dict[str, Any] = {"problems": num_problems, "n": n}
    if num_problems == 0:
        return out
    acc = [sum(s["correct"] for s in g) / n for g in groups]
    out[f"avg@{n}"] = statistics.fmean(acc)
    out[f"avg@{n}_se"] = statistics.stdev(acc) / math.sqrt(num_problems) if num_problems > 1 else 0.0
    for k in k_list:
        if k <= n:
            out[f"pass@{k}"] = statistics.fmean(pass_at_k(n, sum(s["correct"] for s in g), k) for g in groups)
    out[f"maj@{n}"] = statistics.fmean(
        float(majority_correct([s["pred"] for s in g], [s["correct"] for s in g])) for g in groups
    )
    flat = [s for g in groups for s in g]
    out["no_answer_frac"] = sum(s["pred"] is None for s in flat) / len(flat)
    out["mean_length"] = statistics.fmean(s["num_tokens"] for s in flat)
    out["truncated_frac"] = sum(s.get("finish_reason") == "length" for s in flat) / len(flat)
    return out


# ----------------------------------------------------------------------------------------------------------
# scoring


def score_generations(
    rows: list[dict],
    prompts: list[str],
    generations: list[list[dict]],
    benchmark: str,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> list[dict]:
    """One sample record per generation: prompt, completion, parsed answer, gold, correct, length."""
    records = []
    for row, prompt, gens in zip(rows, prompts, generations, strict=True):
        golds = gold_answers(row["answer"])  # acceptable answers: a match with any of them scores
        gold = golds[0] if len(golds) == 1 else golds or None
        for j, g in enumerate(gens):
            pred = extract_answer(g["text"])
            records.append(
                {
                    "benchmark": benchmark,
                    "id": row["id"],
                    "sample": j,
                    "prompt": prompt,
                    "completion": g["text"],
                    "pred": pred,
                    "gold": gold,
                    "correct": matches_gold(pred, golds, timeout_s),
                    "num_tokens": g["num_tokens"],
                    "finish_reason": g["finish_reason"],
                    "source": row.get("source"),
                }
            )
    return records


def evaluate_model(
    model,
    tokenizer,
    problems: list[dict],
    n: int = 1,
    k_list: Sequence[int] = (1,),
    prompt_template: str | None = None,
    chat: bool | None = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 256,
    seed: int = 0,
    batch_size: int = 16,
    stop: Sequence[str] = (),
    progress: bool = False,
    progress_desc: str = "eval",
    return_samples: bool = False,
    backend=None,
) -> dict:
    """Held-out numbers of an in-memory model (unwrapped from DDP/accelerate) on ``problems`` (dicts with
    ``problem``, or only a ready ``prompt`` used verbatim, and ``answer``): ``avg@n``, ``avg@n_se``, ``pass@k``, ``maj@n``, ``no_answer_frac``, ``mean_length``,
    ``truncated_frac``, ``problems``, ``n`` (plus ``samples`` if asked), and the same numbers under
    n-free names ``avg@n``, ``avg@n_se``, ``maj@n``. The model's train/eval mode, the tokenizer's padding
    side and the global random state are left as they were. ``prompt_template`` e.g.
    ``"Q: {problem}\\nA: "``; None here means the problem text as it is (no instruction added).
    ``chat=False`` (the default here) never applies a chat template, None applies it when there is one.
    ``backend``: generate with it (e.g. a :class:`VLLMBackend` on the engine a trainer colocates) instead of
    HF ``generate`` on ``model``.
    ``progress``: a bar over the problems, labelled ``progress_desc``.
    """
    rows = [{"id": str(p.get("id", i)), **p} for i, p in enumerate(problems)]
    if chat is None:
        chat = getattr(tokenizer, "chat_template", None) is not None
    if backend is None:
        backend = HFBackend(model, tokenizer, batch_size=batch_size, add_special_tokens=not chat)
    sampling = Sampling(temperature, top_p, max_new_tokens, seed, list(stop))
    if prompt_template is None and not chat:
        prompt_template = "{problem}"
    prompts = [build_prompt(r, tokenizer, prompt_template, chat) for r in rows]
    samples: list[dict] = []
    with tqdm(total=len(rows), desc=progress_desc, unit="problem", disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(rows), batch_size):
            batch_rows, batch_prompts = rows[start : start + batch_size], prompts[start : start + batch_size]
            samples += score_generations(
                batch_rows, batch_prompts, backend.generate(batch_prompts, n, sampling), "problems"
            )
            bar.update(len(batch_rows))
    out = benchmark_metrics(samples, n, k_list)
    for name in ("avg@{}", "avg@{}_se", "maj@{}"):
        if name.format(n) in out:
            out[name.format("n")] = out[name.format(n)]
    if return_samples:
        out["samples"] = samples
    return out
