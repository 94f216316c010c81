"""The embedded default model: a character-level tokenizer and a tiny Qwen2, built locally (no network).

    model, tokenizer = build_tiny(TinyConfig())         # 1,063,936 parameters by default
    save_tiny(model, tokenizer, path)                   # a normal Hugging Face model directory
    model, tokenizer = load_tiny(path)

The tokenizer is built with the ``tokenizers`` library (one token per character, a WordLevel model over a
fixed alphabet, a Fuse decoder so that decoding concatenates characters) and wrapped in
``PreTrainedTokenizerFast``. Special tokens: ``<pad>`` (id 0), ``<eos>`` (id 1), ``<unk>`` (id 2); no BOS is
added. pad != eos on purpose: TRL pads completions with the pad id, and the credit core perturbs
reasoning tokens by replacing them with the pad id.

Loading the directory: do NOT use ``AutoTokenizer.from_pretrained(path)``. transformers 5 lists ``qwen2``
among the model types whose declared tokenizer class it overrides, so AutoTokenizer returns Qwen's own
``Qwen2Tokenizer`` (its own pre-tokenizer, other ids) even though the saved ``tokenizer_config.json`` names
``tokenizer_class: "PreTrainedTokenizerFast"``. :func:`load_tokenizer` (used by :func:`load_tiny`) loads
with ``PreTrainedTokenizerFast.from_pretrained``, which reads ``tokenizer.json`` as is (ids identical to
the ones saved). :func:`is_tiny_dir` tells such a directory apart (its config carries ``oarl_tiny``).
Other tools should do the same::

    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
"""

from __future__ import annotations

import json
import os
import string
from dataclasses import asdict, dataclass, field

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
# Every character the embedded tasks use, plus printable ASCII so that other short prompts still encode.
ALPHABET = "".join(sorted(set(string.digits + "+-*/=?.:,() \n" + string.ascii_letters + string.punctuation)))


@dataclass(frozen=True)
class TinyConfig:
    """Shape of the tiny Qwen2. The defaults give 1,063,936 parameters (tied embeddings): the model of the default regime."""

    hidden_size: int = field(default=128, metadata={"help": "Model width."})
    num_layers: int = field(default=4, metadata={"help": "Transformer blocks."})
    num_heads: int = field(default=4, metadata={"help": "Attention heads (also key/value heads)."})
    intermediate_size: int = field(default=512, metadata={"help": "MLP width."})
    max_position_embeddings: int = field(default=256, metadata={"help": "Longest sequence (characters)."})
    seed: int = field(default=0, metadata={"help": "Seed of the random initialisation."})


def build_tokenizer():
    """A character-level ``PreTrainedTokenizerFast`` over :data:`ALPHABET` (ids: pad 0, eos 1, unk 2)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {PAD: 0, EOS: 1, UNK: 2}
    for ch in ALPHABET:
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # one piece per character
    tok.decoder = decoders.Fuse()  # concatenate the characters back, no spaces
    tok.add_special_tokens([PAD, EOS, UNK])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK, padding_side="left", model_max_length=1024
    )


def build_tiny(config: TinyConfig | dict | None = None):
    """``(model, tokenizer)``: a freshly initialised ``Qwen2ForCausalLM`` sized by ``config`` and the char tokenizer."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if config is None:
        config = TinyConfig()
    elif isinstance(config, dict):
        config = TinyConfig(**config)
    tokenizer = build_tokenizer()
    hf_config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        use_cache=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = Qwen2ForCausalLM(hf_config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = None
    model.generation_config.do_sample = True
    model.config.oarl_tiny = asdict(config)
    return model, tokenizer


def num_parameters(model) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def save_tiny(model, tokenizer, path: str | os.PathLike) -> str:
    """Save as a Hugging Face model directory that :func:`load_tiny` (and ``from_pretrained``) read back."""
    path = os.fspath(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    # Make AutoTokenizer pick the generic fast class, not Qwen2's tokenizer (see the module docstring).
    cfg_file = os.path.join(path, "tokenizer_config.json")
    with open(cfg_file) as f:
        cfg = json.load(f)
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["padding_side"] = "left"
    with open(cfg_file, "w") as f:
        json.dump(cfg, f, indent=2)
    return path


def load_tokenizer(path: str | os.PathLike):
    """The character tokenizer saved in ``path`` (ids identical to the ones it was saved with)."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(os.fspath(path))
    tok.padding_side = "left"
    return tok


def load_tiny(path: str | os.PathLike, **model_kwargs):
    """``(model, tokenizer)`` from a directory written by :func:`save_tiny`."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(os.fspath(path), **model_kwargs)
    return model, load_tokenizer(path)


def is_tiny_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a model directory written by :func:`save_tiny` (load it with :func:`load_tiny`)."""
    cfg = os.path.join(os.fspath(path), "config.json")
    if not os.path.isfile(cfg):
        return False
    with open(cfg) as f:
        return "oarl_tiny" in json.load(f)
