"""The embedded default model: a character-level tokenizer and a tiny Qwen2, built locally (no network).

    model, tokenizer = build_tiny(TinyConfig())         # 1,063,936 parameters by default
    save_tiny(model, tokenizer, path)                   # a normal Hugging Face model directory
    model, tokenizer = load_tiny(path)

The tokenizer is transformers' ``Qwen2Tokenizer`` (the tokenizer class of the Qwen2 architecture) with a
99-symbol vocabulary and no merges: Qwen2's pre-tokenizer and byte-level mapping split a text into single
bytes, and with no merges every byte of :data:`ALPHABET` stays one token, so the model sees one token per
character. Special tokens: ``<pad>`` (id 0), ``<eos>`` (id 1), ``<unk>`` (id 2, never produced: like any
Qwen2 tokenizer it drops the bytes that are not in its vocabulary, i.e. characters outside ALPHABET); no BOS
is added. pad != eos on purpose: TRL pads completions with the pad id, and the credit core perturbs
reasoning tokens by replacing them with the pad id.

Tool calls (:func:`with_tool_calls`): a tokenizer of the tiny model can also carry a compact chat template with
tool-call markup and the ``response_template`` that parses it (transformers' response parsing, which TRL's tool loop
uses), so that TRL's ``tools=`` / ``environment_factory`` runs with this model (``oarl.data.calculator``)::

    Q: (6+2)-(1+4)=?            user
    A: 6+2=8. 1+4=5. [calc expr=8-5]<eos>      assistant: content, then its tool call(s)
    T: 3                        tool result (TRL inserts it: tool_mask 0, as the next "A: ")
    A: The answer is 3.<eos>    assistant

Because the class is the one transformers registers for ``qwen2``, every loader gets the same ids:
``AutoTokenizer.from_pretrained(path)`` (what TRL, vLLM and other tools call), ``PreTrainedTokenizerFast``
on the ``tokenizer.json`` and :func:`load_tiny`. (Directories saved by oarl before this class was used
declare ``PreTrainedTokenizerFast`` over a WordLevel model; AutoTokenizer rebuilds those as Qwen2's tokenizer
with other ids. Their ids over ALPHABET equal this tokenizer's, so ``build_tokenizer().save_pretrained(path)``
upgrades such a directory; ``oarl.models.loading`` still reads them as they are.)
"""

from __future__ import annotations

import json
import os
import string
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen2Tokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from oarl.models.tokenizers import load_local_tokenizer

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
    """The character-level ``Qwen2Tokenizer`` over :data:`ALPHABET` (ids: pad 0, eos 1, unk 2, then ALPHABET in order)."""
    byte_symbol = bytes_to_unicode()  # the printable stand-in of each byte in a byte-level vocabulary
    vocab = {PAD: 0, EOS: 1, UNK: 2}
    for ch in ALPHABET:
        vocab[byte_symbol[ord(ch)]] = len(vocab)
    return Qwen2Tokenizer(
        vocab=vocab,
        merges=[],
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        bos_token=None,
        padding_side="left",
        model_max_length=1024,
    )


# The chat format of :func:`with_tool_calls`. An assistant turn ends with EOS, also after a tool call (generation
# stops there and TRL runs the tool); the {% generation %} markers let SFT train on the assistant's tokens only.
TOOL_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{{ 'Q: ' + message['content'] + '\n' }}"
    "{%- elif message['role'] == 'assistant' -%}{{ 'A: ' }}{% generation %}{{ message['content'] or '' }}"
    "{%- for call in message.get('tool_calls') or [] -%}{{ '[' + call['function']['name'] }}"
    "{%- for key, value in call['function']['arguments'].items() -%}{{ ' ' + key + '=' + value | string }}{%- endfor -%}"
    "{{ ']' }}{%- endfor -%}{{ eos_token }}{% endgeneration %}"
    "{%- elif message['role'] == 'tool' -%}{{ 'T: ' + message['content'] | string + '\n' }}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'A: ' }}{%- endif -%}"
)
# transformers' response parsing (TRL's parse_response) of one assistant turn: "[name key=value ...]" is a tool call.
TOOL_RESPONSE_TEMPLATE = {
    "defaults": {"role": "assistant"},
    "start_anchor": "A: ",
    "fields": {
        "tool_calls": {
            "open_pattern": r"\[(?P<name>[A-Za-z_]\w*)",
            "close": "]",
            "repeats": True,
            "content": "xml-inline",
            "content_args": {"tag_pattern": r" (?P<key>\w+)=(?P<value>[^ \]]*)"},
            "transform": {"type": "function", "function": {"name": "{name}", "arguments": "{content}"}},
        },
        "content": {"close": EOS, "content": "text"},
    },
}


def with_tool_calls(tokenizer):
    """The tokenizer with :data:`TOOL_CHAT_TEMPLATE` and :data:`TOOL_RESPONSE_TEMPLATE` (both saved with it)."""
    tokenizer.chat_template = TOOL_CHAT_TEMPLATE
    tokenizer.response_template = TOOL_RESPONSE_TEMPLATE
    return tokenizer


def build_tiny(config: TinyConfig | dict | None = None):
    """``(model, tokenizer)``: a freshly initialised ``Qwen2ForCausalLM`` sized by ``config`` and the char tokenizer."""
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
    """Save as a Hugging Face model directory that :func:`load_tiny` and ``from_pretrained`` read back."""
    path = os.fspath(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def load_tiny(path: str | os.PathLike, **model_kwargs):
    """``(model, tokenizer)`` from a directory written by :func:`save_tiny`."""
    model = AutoModelForCausalLM.from_pretrained(os.fspath(path), **model_kwargs)
    tokenizer = load_local_tokenizer(Path(path), model.config.vocab_size)
    tokenizer.padding_side = "left"
    return model, tokenizer


def is_tiny_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a model directory written by :func:`save_tiny` (load it with :func:`load_tiny`)."""
    cfg = os.path.join(os.fspath(path), "config.json")
    if not os.path.isfile(cfg):
        return False
    with open(cfg) as f:
        return "oarl_tiny" in json.load(f)
