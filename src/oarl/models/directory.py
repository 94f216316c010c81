"""A Hugging Face model directory on disk: check that it can load (``check_model_dir``) and load it
(``load_directory``) as ``oarl.models.loading.load_model`` returns models: a plain float model in eval mode on the
device asked for, with a tokenizer that has a pad token and pads on the left."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from oarl.models.tokenizers import load_local_tokenizer, prepare_tokenizer


def resolve_dtype(dtype) -> torch.dtype | str:
    """None -> float32 (TRL's default); a torch.dtype, "auto" or a name such as "bfloat16" otherwise."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if isinstance(dtype, str) and isinstance(getattr(torch, dtype, None), torch.dtype):
        return getattr(torch, dtype)
    raise ValueError(f"dtype must be a torch.dtype, 'auto' or a name such as 'bfloat16', got {dtype!r}")


def finish_loading(model, tokenizer, device):
    """``(model, tokenizer)`` ready for use: the model on ``device`` (left where it is if None) in eval mode, the
    tokenizer prepared (:func:`oarl.models.tokenizers.prepare_tokenizer`), its pad id in the model's configs."""
    if device is not None:
        model = model.to(device)
    model.eval()
    tokenizer = prepare_tokenizer(tokenizer)
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)  # any of them: the folder has a tokenizer
WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json", "pytorch_model.bin.index.json")


def check_model_dir(path: str | os.PathLike) -> None:
    """Raise ValueError, naming the file and the fix, for a model directory that cannot load: no ``config.json``, no
    tokenizer files, no weights, or a weights file that is empty or shorter than its own header says (a copy or a
    save that was cut short). Reads only the safetensors headers."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ValueError(
            f"{path} is a directory but not a Hugging Face model directory (no config.json): give a "
            "folder written by save_pretrained (config.json, weights, tokenizer files), an `oarl train` "
            "run directory, or a hub name"
        )
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ValueError(
            f"{path} has no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}, ...): save the tokenizer "
            "with the model (tokenizer.save_pretrained(path)), or copy its files there"
        )
    weights = sorted({w for pattern in WEIGHT_FILES for w in path.glob(pattern)})
    if not weights:
        raise ValueError(
            f"{path} has no weights (model.safetensors or pytorch_model.bin): save the model there "
            "(model.save_pretrained(path)), or copy its weight files"
        )
    for file in weights:
        size = file.stat().st_size
        if size == 0:
            raise ValueError(
                f"{file} is empty (0 bytes): the model was not saved or copied whole; save or copy it again"
            )
        if file.suffix == ".safetensors" and size < (needed := _safetensors_size(file)):
            raise ValueError(
                f"{file} is cut short ({size} bytes of the {needed} its header describes): the model was "
                "not saved or copied whole; save or copy it again"
            )


def _safetensors_size(file: Path) -> int:
    """The size a safetensors file must have: 8 + its JSON header's length + the end of its last tensor."""
    with file.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return 8
        n = int.from_bytes(head, "little")
        if n > file.stat().st_size:
            return 8 + n
        try:
            header = json.loads(f.read(n))
            ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            raise ValueError(
                f"{file} is not a safetensors file (its header cannot be read): save or copy the model again"
            ) from None
    return 8 + n + max(ends, default=0)


def load_directory(path: Path, dtype, device):
    check_model_dir(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(dtype))
    tokenizer = load_local_tokenizer(path, getattr(model.config, "vocab_size", None))
    return finish_loading(model, tokenizer, device)
