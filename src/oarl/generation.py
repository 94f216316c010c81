"""The generation layer: prompts, sampling settings, and the engines that sample completions.

Every user of generation in oarl goes through here: ``oarl eval``, the held-out evaluation of ``oarl train``,
``oarl explain``'s sampled completions, the benchmarks and experiments. An engine (a *backend*) has one method,

    generate(prompts, n, sampling) -> per prompt, n dicts {text, num_tokens, finish_reason}

``HFBackend``: batched Hugging Face ``generate`` with left padding. ``VLLMBackend``: a vLLM engine, on a GPU or on
vLLM's CPU build (same prompts, outputs, stop strings and seeds). ``load_backend`` picks and starts one for a model:
``auto`` is vLLM when it is installed and a GPU is present, else HF (on a CPU, vLLM only when asked: its engine start
costs more than a small evaluation).

Prompts (``build_prompt``): the model's chat template when it has one (the user message is the problem plus an
instruction to box the answer, ``CHAT_TEMPLATE``), else the plain template ``PLAIN_TEMPLATE``; a row that carries its
own plain ``prompt`` (the arithmetic task) uses it verbatim unless a template is given. A template names fields in
braces: ``{problem}`` (the problem text) or any field of the row (``{Body} {Question}``); LaTeX braces stay as they
are (``oarl.data.template``).
"""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from oarl.data.template import PromptTemplate
from oarl.devices import default_device, gpu_available, vllm_installed, vllm_on_cpu
from oarl.models.loading import auto_tokenizer_problem, load_model, load_tokenizer, model_directory
from oarl.models.tiny import is_tiny_dir

logger = logging.getLogger(__name__)

PLAIN_TEMPLATE = "{problem}\nPut the final answer after 'The answer is'.\n"
CHAT_TEMPLATE = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{}."


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
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
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
                enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=self.add_special_tokens).to(
                    model.device
                )
                if (
                    self.context
                    and len(chunk) > 1
                    and self.context - enc["input_ids"].shape[1] < sampling.max_new_tokens
                ):
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
                    logger.warning(
                        "a prompt of %d tokens leaves %d of max_new_tokens=%d in the model's %d-token "
                        "context: completions are cut there (finish_reason 'length')",
                        enc["input_ids"].shape[1],
                        max(room, 0),
                        sampling.max_new_tokens,
                        self.context,
                    )
                kwargs = dict(
                    do_sample=do_sample,
                    max_new_tokens=max(1, min(sampling.max_new_tokens, room)),
                    num_return_sequences=k,
                    pad_token_id=tok.pad_token_id,
                    eos_token_id=sorted(eos) or None,
                )
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
                        gens.append(
                            {"text": text, "num_tokens": length, "finish_reason": "stop" if stopped else finish}
                        )
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
VLLM_INSTALL_HINT = (
    "install it with `pip install 'oarl[vllm]'` on a GPU machine, or follow the README's recipe "
    "'vLLM on a CPU' (`make test-vllm` builds such an environment in .venv-vllm)"
)


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
    def start(
        cls,
        model_path: str,
        tokenizer,
        dtype: str | None = None,
        seed: int = 0,
        add_special_tokens: bool = True,
        **engine_kwargs,
    ) -> VLLMBackend:
        """Start an engine on the model directory (or hub name) ``model_path``; ``tokenizer`` is the one the HF
        backend would use (its ids must be AutoTokenizer's, see ``oarl.models.loading.auto_tokenizer_problem``).
        ``engine_kwargs`` go to ``vllm.LLM``; on vLLM's CPU backend chunked prefill is off (per-prompt seeds
        need it), the key/value cache defaults to
        :data:`CPU_KV_CACHE_GIB` GiB (or ``$VLLM_CPU_KVCACHE_SPACE``) and ``dtype`` to float32 (the HF backend's; vLLM's "auto" would run a float32
        checkpoint in bfloat16)."""
        from vllm import LLM  # lazy: vLLM is an optional dependency

        on_cpu = vllm_on_cpu()
        if on_cpu and not {"gpu_memory_utilization", "kv_cache_memory_bytes"} & set(engine_kwargs):
            engine_kwargs["kv_cache_memory_bytes"] = (
                int(os.environ.get("VLLM_CPU_KVCACHE_SPACE") or CPU_KV_CACHE_GIB) << 30
            )
        if on_cpu:
            # A prompt prefilled in chunks has its sampled token discarded and its per-request generator rewound,
            # which CPU generators cannot do (vLLM 0.32: "CPU Generator does not use offset", the engine dies);
            # without chunked prefill every prompt is prefilled whole.
            engine_kwargs.setdefault("enable_chunked_prefill", False)
        # vLLM's "auto" runs a float32 checkpoint in bfloat16; on a CPU, keep the HF backend's float32 by default
        llm = LLM(model=model_path, dtype=dtype or ("float32" if on_cpu else "auto"), seed=seed, **engine_kwargs)
        return cls(llm, tokenizer, add_special_tokens)

    def generate(self, prompts: list[str], n: int, sampling: Sampling) -> list[list[dict]]:
        from vllm import SamplingParams  # lazy: vLLM is an optional dependency

        greedy = sampling.temperature <= 0
        inputs, params = [], []
        for prompt in prompts:
            ids = self.tokenizer(prompt, add_special_tokens=self.add_special_tokens)["input_ids"]
            inputs.append({"prompt_token_ids": ids})
            params.append(
                SamplingParams(
                    n=1 if greedy else n,
                    temperature=max(sampling.temperature, 0.0),
                    top_p=1.0 if greedy else sampling.top_p,
                    max_tokens=max(1, min(sampling.max_new_tokens, self.max_model_len - len(ids))),
                    seed=sampling.seed + zlib.crc32(prompt.encode("utf-8")),
                    stop=list(sampling.stop) or None,
                    skip_special_tokens=True,
                )
            )
        out = []
        for result in self.llm.generate(inputs, params, use_tqdm=False):
            gens = []
            for o in result.outputs:
                # vLLM keeps the end-of-sequence token (or a stop token id) in token_ids; a stop string has stop_reason str
                ended_by_token = o.finish_reason == "stop" and not isinstance(o.stop_reason, str)
                gens.append(
                    {
                        "text": o.text,
                        "num_tokens": len(o.token_ids) - int(ended_by_token),
                        "finish_reason": o.finish_reason or "stop",
                    }
                )
            out.append(gens * n if greedy else gens)
        return out


def over_context(backend, prompt: str) -> str | None:
    """Why ``prompt`` cannot be sampled from: it fills the model's whole context (``backend.context`` tokens), so no
    completion token fits; None when it can, or when the backend has no context length."""
    context = getattr(backend, "context", None)
    if not context:
        return None
    n = len(backend.tokenizer(prompt, add_special_tokens=backend.add_special_tokens)["input_ids"])
    return (
        f"a prompt of {n} tokens leaves no room for a completion in the model's context of {context} tokens"
        if n >= context
        else None
    )


def use_vllm(backend: str) -> bool:
    """Whether ``backend`` ("auto", "hf" or "vllm") means vLLM here: "auto" is vLLM when it is installed and a GPU
    is present. Raises ValueError for "vllm" when vLLM is not installed."""
    if backend == "vllm" and not vllm_installed():
        raise ValueError(f"--backend vllm: vLLM is not installed; {VLLM_INSTALL_HINT}")
    if backend == "auto":
        return vllm_installed() and gpu_available()
    return backend == "vllm"


def load_backend(
    model_path: str,
    backend: str = "auto",
    *,
    chat: bool | None = None,
    dtype: str | None = None,
    device: str | None = None,
    seed: int = 0,
    batch_size: int = 8,
):
    """``(backend, tokenizer, chat)`` for the model at ``model_path`` (a directory, hub name or named model):
    a :class:`VLLMBackend` or an :class:`HFBackend`, as ``backend`` ("auto", "hf", "vllm"; see :func:`use_vllm`)
    says. ``chat=None`` resolves to whether the tokenizer has a chat template. vLLM takes the token ids of
    AutoTokenizer: a model whose saved tokenizer AutoTokenizer reads differently falls back to HF with a warning
    under "auto", and raises ValueError (with the fix) under "vllm". ``dtype``, ``device`` (HF; default: the GPU
    when there is one), ``seed`` (vLLM's engine) and ``batch_size`` (HF: prompts per ``generate``) as in ``oarl eval``."""
    if use_vllm(backend):
        path = model_directory(model_path)
        problem = auto_tokenizer_problem(path) if Path(path).is_dir() else None
        if problem is None:
            tokenizer = load_tokenizer(path)
            if chat is None:
                chat = getattr(tokenizer, "chat_template", None) is not None
            engine = VLLMBackend.start(path, tokenizer, dtype=dtype, seed=seed, add_special_tokens=not chat)
            return engine, tokenizer, chat
        fix = (
            f're-save its tokenizer (same ids): python -c "from oarl.models.tiny import build_tokenizer; '
            f"build_tokenizer().save_pretrained('{path}')\""
            if is_tiny_dir(path)
            else "use --backend hf"
        )
        if backend == "vllm":
            raise ValueError(
                f"--backend vllm: {problem}, so vLLM would not generate from the ids the model knows; {fix}"
            )
        logger.warning("%s; generating with HF instead of vLLM (%s)", problem, fix)
    model, tokenizer = load_model(model_path, dtype=dtype, device=device or default_device())
    if chat is None:
        chat = getattr(tokenizer, "chat_template", None) is not None
    return HFBackend(model, tokenizer, batch_size=batch_size, add_special_tokens=not chat), tokenizer, chat
