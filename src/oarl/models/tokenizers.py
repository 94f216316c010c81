"""Tokenizers of local model directories, loaded with the ids they were saved with, and made ready for batched
generation (a pad token, left padding). ``oarl.models.loading`` and ``oarl.models.tiny`` load tokenizers with these."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from tokenizers import Tokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

# Texts whose token ids tell a tokenizer apart from another one built on the same vocabulary.
PROBE_TEXTS = (
    "Q: (6+2)-(1+4)=?\nA: 6+2=8. 1+4=5. The answer is 3.",
    "Q: 12+7*3-40=?\nA: 7*3=21. The answer is -7.  Über \\boxed{x}",
    "  Two  spaces,\n\n\ta tab; 'quotes' & \"more\" ~`|^_ {braces} [1/2] $\\frac{1}{2}$ #### 42",
)


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
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer_file = path / "tokenizer.json"
    if not tokenizer_file.is_file():  # nothing else to read it with
        return tokenizer, None
    raw = Tokenizer.from_file(str(tokenizer_file))
    for text in PROBE_TEXTS:
        if raw.encode(text, add_special_tokens=False).ids != tokenizer(text, add_special_tokens=False)["input_ids"]:
            return tokenizer, (
                f"AutoTokenizer loads the tokenizer of {path} as {type(tokenizer).__name__}, whose ids "
                f"differ from those of its tokenizer.json (e.g. on {text!r})"
            )
    if vocab_size is not None and len(tokenizer) > vocab_size:
        return tokenizer, (
            f"AutoTokenizer loads the tokenizer of {path} with {len(tokenizer)} ids, more than the "
            f"model's {vocab_size} embeddings"
        )
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
    config_file = path / "tokenizer_config.json"
    tokenizer_class = json.loads(config_file.read_text()).get("tokenizer_class") if config_file.is_file() else None
    if (path / "tokenizer.json").is_file() and tokenizer_class in (
        None,
        "PreTrainedTokenizerFast",
        "TokenizersBackend",
    ):
        return PreTrainedTokenizerFast.from_pretrained(path)
    tokenizer, problem = _auto_tokenizer_checked(path, vocab_size)
    if problem:
        logger.warning("%s; loading tokenizer.json with PreTrainedTokenizerFast instead.", problem)
        return PreTrainedTokenizerFast.from_pretrained(path)
    return tokenizer
