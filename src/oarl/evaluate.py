"""Evaluation harness: sample n completions per problem, verify them, report the field's numbers.

Per benchmark, from n samples per problem of which c are correct:

    pass@k      unbiased estimator 1 - C(n-c, k) / C(n, k), in the stable product form
                1 - prod_{i=n-c+1}^{n} (1 - k/i)  (Chen et al. 2021), averaged over problems
    avg@n       mean accuracy over all samples (= mean_p c_p/n), with its standard error over problems
    maj@n       accuracy of the majority-voted final answer, votes pooled by value (``0.5`` = ``\\frac12``);
                samples without an answer do not vote; a tie goes to the answer seen first; no answer at
                all counts as wrong
    no_answer   fraction of samples with no parsable final answer
    mean_length mean completion length in tokens (truncated_frac: the fraction that hit max_new_tokens)

Answers are found by ``oarl.credit.answer.extract_answer`` and verified by ``oarl.rewards.verify``: the
same code as the training reward, so training and evaluation agree.

Two entry points:

    run_eval(EvalConfig(...))          the ``oarl eval`` command: benchmarks from files or the hub, a model
                                       from a path/name/train-run directory, outputs in a report directory
                                       (results.json, results.md, samples.jsonl), resumable
    evaluate_model(model, tokenizer, problems, n, k_list, prompt_template=...)
                                       in-memory, for the trainer's held-out accuracy; returns the numbers

Generation backends (``backend``): ``hf``, batched Hugging Face ``generate`` with left padding; ``vllm``, one vLLM
engine for all benchmarks, on a GPU or on vLLM's CPU build (same prompts, outputs, stop strings and seeds, see
:class:`VLLMBackend`); ``auto`` (the default), vLLM when it is installed and a GPU is present, else HF (on a CPU, vLLM
only when asked: its engine start costs more than a small evaluation). Prompts: the model's chat template when it has
one (the user message is the problem plus an instruction to box the answer), else the plain template
``PLAIN_TEMPLATE``; a row that carries its own plain ``prompt`` (the arithmetic task) uses it verbatim
unless a template is given. A template names fields in braces: ``{problem}`` (the problem text) or any field of
the row (``{Body} {Question}``); LaTeX braces stay as they are (``oarl.data.template``).

Resume: samples.jsonl is appended one batch of problems at a time; a problem with all n samples there is
not generated again (a partly written problem is regenerated). The settings that change samples are kept
in ``eval_config.json``; resuming with other settings is refused (use ``overwrite``). The default report
folder is named after those settings (``reports/eval-<model>-<hash>``, ``<run>/eval-<hash>``), so that a run
with other settings starts its own folder and the same command resumes. With the HF backend a resumed run is
not bit-identical to an uninterrupted one (sampling is seeded per batch, and batches start elsewhere); with
vLLM it is (seeded per prompt).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import statistics
import sys
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from oarl.credit.answer import extract_answer
from oarl.data.template import PromptTemplate
from oarl.errors import removed_on_failure
from oarl.rewards import DEFAULT_TIMEOUT_S, gold_answers, group_by_value, matches_gold

logger = logging.getLogger(__name__)

PLAIN_TEMPLATE = "{problem}\nPut the final answer after 'The answer is'.\n"
CHAT_TEMPLATE = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{}."
DEFAULT_BENCHMARKS = ("math500", "gsm8k", "aime24", "amc23", "minerva")
SAMPLES_FILE, RESULTS_JSON, RESULTS_MD, CONFIG_FILE = "samples.jsonl", "results.json", "results.md", "eval_config.json"
# settings that change the samples: resuming with any of them different is refused
RESUME_KEYS = ("model", "n", "temperature", "top_p", "max_new_tokens", "seed", "prompt_template", "chat_template", "stop")


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


def majority_correct(preds: Sequence[str | None], correct: Sequence[bool], timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
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
    out[f"maj@{n}"] = statistics.fmean(float(majority_correct([s["pred"] for s in g], [s["correct"] for s in g])) for g in groups)
    flat = [s for g in groups for s in g]
    out["no_answer_frac"] = sum(s["pred"] is None for s in flat) / len(flat)
    out["mean_length"] = statistics.fmean(s["num_tokens"] for s in flat)
    out["truncated_frac"] = sum(s.get("finish_reason") == "length" for s in flat) / len(flat)
    return out


# ----------------------------------------------------------------------------------------------------------
# prompts


def build_prompt(row: dict, tokenizer=None, template: str | None = None, chat: bool | None = None) -> str:
    """The text given to the model for one row.

    chat=None uses the tokenizer's chat template when it has one. Without chat, ``template`` (default: the
    row's own ``prompt`` if it has one, else PLAIN_TEMPLATE) filled from the row: ``{problem}`` and any of the
    row's ``fields`` (see ``oarl.data.template``; an unknown field raises ValueError listing the fields).
    """
    if chat is None:
        chat = tokenizer is not None and getattr(tokenizer, "chat_template", None) is not None
    if "problem" not in row:  # a row with only a ready prompt (e.g. oarl.data.arithmetic.problems)
        return row["prompt"]
    if not chat and template is None and row.get("prompt"):
        return row["prompt"]
    text = PromptTemplate(template or (CHAT_TEMPLATE if chat else PLAIN_TEMPLATE)).fill(template_fields(row))
    if chat:
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
    return text


def template_fields(row: dict) -> dict:
    """What a prompt template can name in a row: the raw record's fields, and ``problem``."""
    return {**(row.get("fields") or {}), "problem": row["problem"]}


# ----------------------------------------------------------------------------------------------------------
# generation backends: generate(prompts, n, sampling) -> per prompt, n dicts {text, num_tokens, finish_reason}


@dataclass
class Sampling:
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 1024
    seed: int = 0
    stop: list[str] = field(default_factory=list)  # completions are cut at the first stop string


def _cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return (text, False) if cut < 0 else (text[:cut], True)


class HFBackend:
    """Batched ``model.generate`` with left padding; ``batch_size`` prompts (x n samples) per call."""

    name = "hf"

    def __init__(self, model, tokenizer, batch_size: int = 8, add_special_tokens: bool = True):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.add_special_tokens = add_special_tokens
        self.context = getattr(getattr(model, "config", None), "max_position_embeddings", None)  # tokens, or None
        self._warned = False  # the context-cut warning, once

    def _eos_ids(self) -> set[int]:
        ids = self.model.generation_config.eos_token_id if self.model.generation_config is not None else None
        ids = [ids] if isinstance(ids, int) else list(ids or [])
        if self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)
        return set(ids)

    def generate(self, prompts: list[str], n: int, sampling: Sampling) -> list[list[dict]]:
        import torch

        tok, model = self.tokenizer, self.model
        if tok.pad_token is None:  # as TRL does
            tok.pad_token = tok.eos_token
        padding_side, tok.padding_side = tok.padding_side, "left"
        eos = self._eos_ids()
        out: list[list[dict]] = []
        was_training = model.training
        model.eval()
        try:
            for start in range(0, len(prompts), self.batch_size):
                chunk = prompts[start : start + self.batch_size]
                enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=self.add_special_tokens).to(model.device)
                if self.context and len(chunk) > 1 and self.context - enc["input_ids"].shape[1] < sampling.max_new_tokens:
                    # the longest prompt would cut every completion of the batch: each prompt alone, with its room
                    for prompt in chunk:
                        out += self.generate([prompt], n, sampling)
                    continue
                do_sample = sampling.temperature > 0
                k = n if do_sample else 1  # greedy: one completion, repeated n times below
                # as the vLLM backend: no completion runs past the model's context (a 1024-token budget on a
                # 256-position model would generate garbage, or fail, beyond position 256)
                room = self.context - enc["input_ids"].shape[1] if self.context else sampling.max_new_tokens
                if room < sampling.max_new_tokens and not self._warned:
                    self._warned = True
                    logger.warning("a prompt of %d tokens leaves %d of max_new_tokens=%d in the model's %d-token "
                                   "context: completions are cut there (finish_reason 'length')",
                                   enc["input_ids"].shape[1], max(room, 0), sampling.max_new_tokens, self.context)
                kwargs = dict(do_sample=do_sample, max_new_tokens=max(1, min(sampling.max_new_tokens, room)),
                              num_return_sequences=k,
                              pad_token_id=tok.pad_token_id, eos_token_id=sorted(eos) or None)
                if do_sample:
                    kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
                # seeded per batch (by its first prompt), without touching the caller's random state
                seed = sampling.seed + zlib.crc32(chunk[0].encode("utf-8"))
                devices = [model.device] if model.device.type == "cuda" else []
                with torch.random.fork_rng(devices=devices), torch.no_grad():
                    torch.manual_seed(seed)
                    ids = model.generate(**enc, **kwargs)[:, enc["input_ids"].shape[1] :]
                for i in range(len(chunk)):
                    gens = []
                    for row in ids[i * k : (i + 1) * k].tolist():
                        length = next((j for j, t in enumerate(row) if t in eos), None)
                        finish = "length" if length is None else "stop"
                        length = len(row) if length is None else length
                        text = tok.decode(row[:length], skip_special_tokens=True)
                        text, stopped = _cut_at_stop(text, sampling.stop)
                        gens.append({"text": text, "num_tokens": length, "finish_reason": "stop" if stopped else finish})
                    out.append(gens * (n // k))
        finally:
            model.train(was_training)
            tok.padding_side = padding_side
        return out


# On vLLM's CPU backend, gpu_memory_utilization is the fraction of the machine's memory reserved for the weights and
# the key/value cache, refused when that much is not free at start; vLLM's default (0.9) fails on a machine that runs
# anything else. oarl's CPU default is a fixed key/value cache instead (VLLM_CPU_KVCACHE_SPACE, in GiB), which only
# needs that much free memory: 2 GiB hold about 45,000 tokens of SmolLM2-135M in float32.
CPU_KV_CACHE_GIB = 2
VLLM_INSTALL_HINT = ("install it with `pip install 'oarl[vllm]'` on a GPU machine, or follow the README's recipe "
                     "'vLLM on a CPU' (`make test-vllm` builds such an environment in .venv-vllm)")


def vllm_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def vllm_on_cpu() -> bool:
    """Whether vLLM runs on its CPU backend here (the ``vllm-cpu`` build, or no accelerator)."""
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


class VLLMBackend:
    """Generation with a vLLM engine (``vllm.LLM``), on a GPU or on vLLM's CPU build.

    Same inputs and outputs as :class:`HFBackend`: prompts are tokenized by the same tokenizer with the same
    ``add_special_tokens`` and sent as token ids, completions come back as ``{text, num_tokens,
    finish_reason}`` (``num_tokens`` without the end-of-sequence token, special tokens skipped in ``text``,
    ``stop`` strings cut by vLLM). Seeds: each prompt is sampled with its own seed, ``seed + crc32(prompt)``
    (vLLM gives its k-th sample ``+ k``), so a resumed evaluation draws what an uninterrupted one would.
    Greedy decoding (temperature 0) generates once and repeats the completion n times, as ``generate``
    does (vLLM refuses n > 1 without sampling). ``max_tokens`` is capped so that prompt + completion fit the
    engine's ``max_model_len``.

    ``VLLMBackend.start(path, ...)`` starts an engine; ``VLLMBackend(llm, tokenizer)`` wraps a running one
    (e.g. the engine TRL colocates with training, see ``OARTrainer.generation_backend``).
    """

    name = "vllm"

    def __init__(self, llm, tokenizer, add_special_tokens: bool = True):
        self.llm, self.tokenizer, self.add_special_tokens = llm, tokenizer, add_special_tokens
        self.max_model_len = self.context = llm.llm_engine.model_config.max_model_len

    @classmethod
    def start(cls, model_path: str, tokenizer, dtype: str | None = None, seed: int = 0, add_special_tokens: bool = True,
              **engine_kwargs) -> "VLLMBackend":
        """Start an engine on the model directory (or hub name) ``model_path``; ``tokenizer`` is the one the HF
        backend would use (its ids must be AutoTokenizer's, see ``oarl.models.loading.auto_tokenizer_problem``).
        ``engine_kwargs`` go to ``vllm.LLM``; on vLLM's CPU backend chunked prefill is off (per-prompt seeds
        need it), the key/value cache defaults to
        :data:`CPU_KV_CACHE_GIB` GiB (or ``$VLLM_CPU_KVCACHE_SPACE``) and ``dtype`` to float32 (the HF backend's; vLLM's "auto" would run a float32
        checkpoint in bfloat16)."""
        from vllm import LLM

        on_cpu = vllm_on_cpu()
        if on_cpu and not {"gpu_memory_utilization", "kv_cache_memory_bytes"} & set(engine_kwargs):
            engine_kwargs["kv_cache_memory_bytes"] = int(os.environ.get("VLLM_CPU_KVCACHE_SPACE") or CPU_KV_CACHE_GIB) << 30
        if on_cpu:
            # A prompt prefilled in chunks has its sampled token discarded and its per-request generator rewound,
            # which CPU generators cannot do (vLLM 0.32: "CPU Generator does not use offset", the engine dies);
            # without chunked prefill every prompt is prefilled whole.
            engine_kwargs.setdefault("enable_chunked_prefill", False)
        # vLLM's "auto" runs a float32 checkpoint in bfloat16; on a CPU, keep the HF backend's float32 by default
        llm = LLM(model=model_path, dtype=dtype or ("float32" if on_cpu else "auto"), seed=seed, **engine_kwargs)
        return cls(llm, tokenizer, add_special_tokens)

    def generate(self, prompts: list[str], n: int, sampling: Sampling) -> list[list[dict]]:
        from vllm import SamplingParams

        greedy = sampling.temperature <= 0
        inputs, params = [], []
        for prompt in prompts:
            ids = self.tokenizer(prompt, add_special_tokens=self.add_special_tokens)["input_ids"]
            inputs.append({"prompt_token_ids": ids})
            params.append(SamplingParams(
                n=1 if greedy else n, temperature=max(sampling.temperature, 0.0), top_p=1.0 if greedy else sampling.top_p,
                max_tokens=max(1, min(sampling.max_new_tokens, self.max_model_len - len(ids))),
                seed=sampling.seed + zlib.crc32(prompt.encode("utf-8")), stop=list(sampling.stop) or None,
                skip_special_tokens=True,
            ))
        out = []
        for result in self.llm.generate(inputs, params, use_tqdm=False):
            gens = []
            for o in result.outputs:
                # vLLM keeps the end-of-sequence token (or a stop token id) in token_ids; a stop string has stop_reason str
                ended_by_token = o.finish_reason == "stop" and not isinstance(o.stop_reason, str)
                gens.append({"text": o.text, "num_tokens": len(o.token_ids) - int(ended_by_token),
                             "finish_reason": o.finish_reason or "stop"})
            out.append(gens * n if greedy else gens)
        return out


# ----------------------------------------------------------------------------------------------------------
# scoring and the shared loop


def over_context(backend, prompt: str) -> str | None:
    """Why ``prompt`` cannot be sampled from: it fills the model's whole context (``backend.context`` tokens), so no
    completion token fits; None when it can, or when the backend has no context length."""
    context = getattr(backend, "context", None)
    if not context:
        return None
    n = len(backend.tokenizer(prompt, add_special_tokens=backend.add_special_tokens)["input_ids"])
    return (f"a prompt of {n} tokens leaves no room for a completion in the model's context of {context} tokens"
            if n >= context else None)


def score_generations(rows: list[dict], prompts: list[str], generations: list[list[dict]], benchmark: str,
                      timeout_s: float = DEFAULT_TIMEOUT_S) -> list[dict]:
    """One sample record per generation: prompt, completion, parsed answer, gold, correct, length."""
    records = []
    for row, prompt, gens in zip(rows, prompts, generations, strict=True):
        golds = gold_answers(row["answer"])  # acceptable answers: a match with any of them scores
        gold = golds[0] if len(golds) == 1 else golds or None
        for j, g in enumerate(gens):
            pred = extract_answer(g["text"])
            records.append({
                "benchmark": benchmark, "id": row["id"], "sample": j, "prompt": prompt, "completion": g["text"],
                "pred": pred, "gold": gold, "correct": matches_gold(pred, golds, timeout_s),
                "num_tokens": g["num_tokens"], "finish_reason": g["finish_reason"], "source": row.get("source"),
            })
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
    from tqdm.auto import tqdm

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
            samples += score_generations(batch_rows, batch_prompts, backend.generate(batch_prompts, n, sampling), "problems")
            bar.update(len(batch_rows))
    out = benchmark_metrics(samples, n, k_list)
    for name in ("avg@{}", "avg@{}_se", "maj@{}"):
        if name.format(n) in out:
            out[name.format("n")] = out[name.format(n)]
    if return_samples:
        out["samples"] = samples
    return out


# ----------------------------------------------------------------------------------------------------------
# the `oarl eval` run


@dataclass
class EvalConfig:
    model: str | None = None  # path, hub name, "tiny", or an `oarl train` run directory (uses <run>/final_model)
    benchmarks: list[str] = field(default_factory=lambda: list(DEFAULT_BENCHMARKS))
    data_dir: str | None = None
    limit: int | None = None
    n: int = 1
    k: list[int] = field(default_factory=lambda: [1])
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 1024
    seed: int = 0
    batch_size: int = 8
    backend: str = "auto"  # auto | hf | vllm
    dtype: str | None = None
    device: str | None = None
    prompt_template: str | None = None
    chat_template: str = "auto"  # auto | on | off
    stop: list[str] = field(default_factory=list)
    output_dir: str | None = None
    overwrite: bool = False
    problem_field: str | None = None
    answer_field: str | None = None
    strict: bool = False
    verify_timeout_s: float = DEFAULT_TIMEOUT_S
    progress: bool = True


def resolve_model_path(model: str) -> str:
    """An `oarl train` run directory means its final model (``<run>/final_model``)."""
    path = Path(model).expanduser()
    if (path / "final_model").is_dir() and not (path / "config.json").is_file():
        return str(path / "final_model")
    return model


def default_output_dir(model: str, settings: dict) -> Path:
    """``<run>/eval-<hash>`` for a train run (its evaluation next to it), else ``reports/eval-<model>-<hash>``;
    the hash is of the settings that change samples (RESUME_KEYS): other settings, another folder."""
    tag = hashlib.sha256(json.dumps([settings[k] for k in RESUME_KEYS]).encode()).hexdigest()[:8]
    path = Path(model).expanduser()
    if (path / "final_model").is_dir():
        return path / f"eval-{tag}"
    return Path("reports") / f"eval-{(path.name or str(model)).replace('/', '_')}-{tag}"


def read_samples(path: Path) -> list[dict]:
    """Records of samples.jsonl; a torn last line (interrupted write) is ignored."""
    records = []
    if path.is_file():
        with path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    logger.warning("ignoring a torn line in %s", path)
    return records


def load_benchmark_rows(name: str, cfg: EvalConfig):
    """``(short name, rows)``: also the embedded arithmetic task as ``arithmetic`` / ``arithmetic-hard``."""
    if name in ("arithmetic", "arithmetic-test", "arithmetic-hard"):
        from oarl.data import arithmetic
        from oarl.data.benchmarks import BenchmarkRows

        split = "hard" if name.endswith("hard") else "test"
        size = cfg.limit or (arithmetic.DEFAULT_REGIME.hard_eval_problems if split == "hard" else arithmetic.DEFAULT_REGIME.eval_problems)
        rows = [{"problem": f"What is {r['expression']}?", "prompt": r["prompt"], "answer": str(r["answer"]),
                 "id": f"{name}/{i}", "source": f"arithmetic:{split}:seed{cfg.seed}:{i}"}
                for i, r in enumerate(arithmetic.problems(split, size, seed=cfg.seed))]
        return name, BenchmarkRows(rows, name=name)
    from oarl.data.benchmarks import load_benchmark

    rows = load_benchmark(name, data_dir=cfg.data_dir, limit=cfg.limit, problem_field=cfg.problem_field,
                          answer_field=cfg.answer_field, strict=cfg.strict)
    return (rows.name or Path(name).stem), rows


def use_vllm(backend: str) -> bool:
    """Whether ``backend`` ("auto", "hf" or "vllm") means vLLM here: "auto" is vLLM when it is installed and a GPU
    is present. Raises ValueError for "vllm" when vLLM is not installed."""
    if backend == "vllm" and not vllm_installed():
        raise ValueError(f"--backend vllm: vLLM is not installed; {VLLM_INSTALL_HINT}")
    if backend == "auto":
        from oarl.devices import gpu_available

        return vllm_installed() and gpu_available()
    return backend == "vllm"


def _load_backend(cfg: EvalConfig, model_path: str, chat: bool | None):
    """``(backend, tokenizer, chat)``: vLLM or HF generate, as cfg.backend says."""
    from oarl.models.loading import auto_tokenizer_problem, load_model, load_tokenizer, model_directory

    if use_vllm(cfg.backend):
        path = model_directory(model_path)
        problem = auto_tokenizer_problem(path) if Path(path).is_dir() else None
        if problem is None:
            tokenizer = load_tokenizer(path)
            if chat is None:
                chat = getattr(tokenizer, "chat_template", None) is not None
            backend = VLLMBackend.start(path, tokenizer, dtype=cfg.dtype, seed=cfg.seed, add_special_tokens=not chat)
            return backend, tokenizer, chat
        from oarl.models.tiny import is_tiny_dir

        fix = (f"re-save its tokenizer (same ids): python -c \"from oarl.models.tiny import build_tokenizer; "
               f"build_tokenizer().save_pretrained('{path}')\"" if is_tiny_dir(path) else "use --backend hf")
        if cfg.backend == "vllm":
            raise ValueError(f"--backend vllm: {problem}, so vLLM would not generate from the ids the model knows; {fix}")
        logger.warning("%s; generating with HF instead of vLLM (%s)", problem, fix)
    from oarl.devices import default_device

    model, tokenizer = load_model(model_path, dtype=cfg.dtype, device=cfg.device or default_device())
    if chat is None:
        chat = getattr(tokenizer, "chat_template", None) is not None
    return HFBackend(model, tokenizer, batch_size=cfg.batch_size, add_special_tokens=not chat), tokenizer, chat


def run_eval(cfg: EvalConfig, backend=None, tokenizer=None) -> dict:
    """Evaluate ``cfg.model`` on ``cfg.benchmarks``; writes samples.jsonl, results.json, results.md in
    ``cfg.output_dir`` and returns the results dict. ``backend``/``tokenizer`` may be given (tests, reuse).
    Raises ValueError / FileNotFoundError for a bad argument (every setting: ``oarl.checks.check_eval``) before
    loading a model or writing anything; a run that fails before its first sample leaves no report folder behind."""
    t0 = time.perf_counter()
    if cfg.model is None:
        raise ValueError("no model given")
    from oarl.checks import check_eval
    from oarl.models.loading import check_model_name

    check_eval(cfg)
    model_path = resolve_model_path(cfg.model)
    check_model_name(model_path)
    k_list = sorted({k for k in cfg.k if k <= cfg.n})
    if len(k_list) < len(cfg.k):
        logger.warning("dropping k > n=%d from %s", cfg.n, cfg.k)
    chat = {"auto": None, "on": True, "off": False}[cfg.chat_template]
    # Every argument is checked (benchmarks read, the template's fields known) before any output is touched.
    benchmarks = [load_benchmark_rows(b, cfg) for b in cfg.benchmarks]
    if cfg.prompt_template:
        for name, rows in benchmarks:
            PromptTemplate(cfg.prompt_template, template_fields(rows[0]), source=name)
        if not re.search(r"answer|boxed", cfg.prompt_template, re.IGNORECASE):
            print("note: --prompt-template replaces the whole default prompt, its answer instruction included "
                  f"(\"{CHAT_TEMPLATE.split(chr(10))[-1]}\" with a chat template, else "
                  f"\"{PLAIN_TEMPLATE.split(chr(10))[1]}\"); yours asks for no final answer, and a completion "
                  "without one scores 0", file=sys.stderr)

    # resume: same settings, then the problems already complete in samples.jsonl
    settings = {"model": model_path, "n": cfg.n, "temperature": cfg.temperature, "top_p": cfg.top_p,
                "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed, "prompt_template": cfg.prompt_template,
                "chat_template": cfg.chat_template, "stop": list(cfg.stop)}
    out_dir = Path(cfg.output_dir) if cfg.output_dir else default_output_dir(cfg.model, settings)
    with removed_on_failure(out_dir, keep=lambda: bool(read_samples(out_dir / SAMPLES_FILE))):
        return _run_eval(cfg, backend, tokenizer, t0, model_path, k_list, chat, benchmarks, settings, out_dir)


def _skip_over_context(chunk: list[dict], prompts: list[str], backend, rows) -> tuple[list[dict], list[str]]:
    """The rows of ``chunk`` (and their prompts) whose prompt leaves room for a completion (``over_context``); the
    others are skipped with their reason, listed in ``rows.skipped`` (a benchmark's skipped rows) and logged."""
    kept: tuple[list, list] = ([], [])
    for row, prompt in zip(chunk, prompts, strict=True):
        reason = over_context(backend, prompt)
        if reason is None:
            kept[0].append(row)
            kept[1].append(prompt)
            continue
        logger.warning("skipping %s: %s", row.get("source") or row["id"], reason)
        if hasattr(rows, "skipped"):
            rows.skipped.append((row.get("source") or row["id"], reason))
    return kept


def _run_eval(cfg, backend, tokenizer, t0, model_path, k_list, chat, benchmarks, settings, out_dir) -> dict:
    from tqdm.auto import tqdm

    samples_path, config_path = out_dir / SAMPLES_FILE, out_dir / CONFIG_FILE
    if cfg.overwrite:
        for name in (SAMPLES_FILE, RESULTS_JSON, RESULTS_MD, CONFIG_FILE):
            (out_dir / name).unlink(missing_ok=True)
    old: dict = {}
    if config_path.is_file():
        old = json.loads(config_path.read_text())
        diff = {k: (old.get(k), settings[k]) for k in RESUME_KEYS if old.get(k) != settings[k]}
        if diff:
            raise ValueError(f"{out_dir} holds samples made with other settings {diff}; use --overwrite or another --output-dir")
    config_path.write_text(json.dumps(settings, indent=2))
    previous = read_samples(samples_path)
    done: dict[tuple[str, str], list[dict]] = {}
    for s in previous:
        done.setdefault((s["benchmark"], s["id"]), []).append(s)
    done = {key: v for key, v in done.items() if len({s["sample"] for s in v}) >= cfg.n}
    if previous and len(done) * cfg.n != len(previous):  # drop partly written problems from the file
        with samples_path.open("w", encoding="utf-8") as f:
            for v in done.values():
                for s in sorted(v, key=lambda s: s["sample"])[: cfg.n]:
                    f.write(json.dumps(s) + "\n")

    todo = {name: [r for r in rows if (name, r["id"]) not in done] for name, rows in benchmarks}
    num_todo = sum(len(v) for v in todo.values())
    if num_todo and backend is None:
        backend, tokenizer, chat = _load_backend(cfg, model_path, chat)
    elif chat is None:
        chat = (getattr(tokenizer, "chat_template", None) is not None) if tokenizer is not None else old.get("chat_resolved", False)
    config_path.write_text(json.dumps({**settings, "chat_resolved": chat}, indent=2))
    sampling = Sampling(cfg.temperature, cfg.top_p, cfg.max_new_tokens, cfg.seed, list(cfg.stop))
    batch = max(1, cfg.batch_size)
    logger.info("eval: %d problems to generate (%d already in %s)", num_todo, len(done), samples_path)

    bar = tqdm(total=num_todo, desc="eval", unit="problem", disable=not cfg.progress or num_todo == 0)
    example_prompt = {}
    with samples_path.open("a", encoding="utf-8") as f:
        for name, rows in benchmarks:
            if rows:
                example_prompt[name] = build_prompt(rows[0], tokenizer, cfg.prompt_template, chat) if tokenizer is not None or not chat else None
            bar.set_description(name)
            for start in range(0, len(todo[name]), batch):
                batch_rows = todo[name][start : start + batch]
                prompts = [build_prompt(r, tokenizer, cfg.prompt_template, chat) for r in batch_rows]
                chunk, prompts = _skip_over_context(batch_rows, prompts, backend, rows)
                bar.update(len(batch_rows) - len(chunk))
                if not chunk:
                    continue
                records = score_generations(chunk, prompts, backend.generate(prompts, cfg.n, sampling), name, cfg.verify_timeout_s)
                f.write("".join(json.dumps(r) + "\n" for r in records))
                f.flush()
                for r in records:
                    done.setdefault((name, r["id"]), []).append(r)
                bar.update(len(chunk))
    bar.close()

    per_benchmark = {}
    for name, rows in benchmarks:
        ids = {r["id"] for r in rows}
        samples = [s for (b, i), v in done.items() if b == name and i in ids for s in v]
        metrics = benchmark_metrics(samples, cfg.n, k_list)
        metrics["skipped_rows"] = [{"source": src, "reason": why} for src, why in getattr(rows, "skipped", [])]
        metrics["example_prompt"] = example_prompt.get(name)
        per_benchmark[name] = metrics
    results = {
        "model": cfg.model,
        "model_path": model_path,
        "output_dir": str(out_dir),
        "backend": getattr(backend, "name", None) or "resumed",
        "settings": {**settings, "k": k_list, "batch_size": cfg.batch_size, "benchmarks": cfg.benchmarks, "limit": cfg.limit,
                     "prompt_format": "chat template" if chat else "plain",
                     "prompt_template_used": cfg.prompt_template or (CHAT_TEMPLATE if chat else PLAIN_TEMPLATE),
                     "own_prompt_benchmarks": [name for name, rows in benchmarks if rows and "prompt" in rows[0]
                                               and not chat and cfg.prompt_template is None],
                     "verify_timeout_s": cfg.verify_timeout_s},
        "benchmarks": per_benchmark,
        "wall_time_s": time.perf_counter() - t0,
        "generated_problems": num_todo,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    (out_dir / RESULTS_JSON).write_text(json.dumps(results, indent=2))
    (out_dir / RESULTS_MD).write_text(results_markdown(results))
    return results


# ----------------------------------------------------------------------------------------------------------
# tables


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def metric_rows(bench: dict) -> list[tuple[str, str]]:
    """(label, formatted value) of one benchmark's numbers, in table order."""
    n = bench.get("n", 1)
    rows = [("problems", str(bench.get("problems", 0)))]
    if f"avg@{n}" in bench:
        rows.append((f"avg@{n}", f"{_pct(bench[f'avg@{n}'])} ± {_pct(bench[f'avg@{n}_se'])}"))
    rows += [(k, _pct(v)) for k, v in bench.items() if k.startswith("pass@")]
    if f"maj@{n}" in bench:
        rows.append((f"maj@{n}", _pct(bench[f"maj@{n}"])))
    if "no_answer_frac" in bench:
        rows.append(("no answer %", _pct(bench["no_answer_frac"])))
        rows.append(("mean length", f"{bench['mean_length']:.1f}"))
    if bench.get("skipped_rows"):
        rows.append(("skipped rows", str(len(bench["skipped_rows"]))))
    return rows


def results_markdown(results: dict) -> str:
    """One table: a row per benchmark, a column per metric (percentages)."""
    s = results["settings"]
    header = (f"# Evaluation of `{results['model']}`\n\n"
              f"n={s['n']}, temperature={s['temperature']}, top_p={s['top_p']}, max_new_tokens={s['max_new_tokens']}, "
              f"seed={s['seed']}, backend={results['backend']}, prompt: {s['prompt_format']}"
              f" (`{s['prompt_template_used']!r}`"
              + (f"; {', '.join(s['own_prompt_benchmarks'])}: the task's own prompt" if s.get("own_prompt_benchmarks") else "")
              + ")\n\n")
    benches = results["benchmarks"]
    labels: list[str] = []
    for b in benches.values():
        labels += [lab for lab, _ in metric_rows(b) if lab not in labels]
    lines = ["| benchmark | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for name, b in benches.items():
        vals = dict(metric_rows(b))
        lines.append(f"| {name} | " + " | ".join(vals.get(lab, "–") for lab in labels) + " |")
    return header + "\n".join(lines) + "\n\nAccuracies in %; avg@n ± its standard error over problems.\n"


def _results_file(path: str | Path) -> Path:
    """A results.json, a report folder, or a train run (its newest evaluation, ``eval-*/``)."""
    path = Path(path)
    runs = sorted(path.glob(f"eval*/{RESULTS_JSON}"), key=lambda p: p.stat().st_mtime) if path.is_dir() else []
    for candidate in (path, path / RESULTS_JSON, *runs[-1:]):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no {RESULTS_JSON} at {path} (nor in {path / RESULTS_JSON} or {path / 'eval-*'})")


def compare_markdown(paths: Sequence[str | Path]) -> str:
    """One table with a column per evaluated model (a report dir, its results.json, or a train run dir)."""
    runs = []
    for p in paths:
        file = _results_file(p)
        runs.append((str(p).rstrip("/"), json.loads(file.read_text())))
    labels = [r.get("model") or p for p, r in runs]
    if len(set(labels)) < len(labels):
        labels = [p for p, _ in runs]
    table: dict[tuple[str, str], dict[int, str]] = {}
    for j, (_, res) in enumerate(runs):
        for bench, b in res["benchmarks"].items():
            for lab, val in metric_rows(b):
                table.setdefault((bench, lab), {})[j] = val
    lines = ["| benchmark | metric | " + " | ".join(f"`{lab}`" for lab in labels) + " |", "|---|---|" + "---|" * len(labels)]
    for (bench, lab), vals in table.items():
        lines.append(f"| {bench} | {lab} | " + " | ".join(vals.get(j, "–") for j in range(len(runs))) + " |")
    settings = "\n".join(f"- `{lab}`: n={r['settings']['n']}, temperature={r['settings']['temperature']}, "
                         f"max_new_tokens={r['settings']['max_new_tokens']}, prompt: {r['settings']['prompt_format']}"
                         for lab, (_, r) in zip(labels, runs))
    return "\n".join(lines) + "\n\n" + settings + "\n"
