"""Builders shared by the credit tests (no tests here): a small byte-level BPE tokenizer trained in-process
on a few math-style sentences, and a tiny randomly initialised Qwen2 on its vocabulary.

They are not ``oarl.models.tiny``'s tokenizer and model (the trained fixture model in ``conftest.py`` is), because
they test what that character-level model cannot express; see each builder's docstring."""

from __future__ import annotations

import functools

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

CORPUS = [
    "Q: What is 12 + 30? Let's think step by step.",
    "First, 12 + 30 = 42. So the total is 42.",
    "Therefore, the final answer is \\boxed{42}.",
    "We add the numbers: 7 * 6 = 42.\n#### 42",
    "The answer is 42. Answer: 17. The final answer is 3/4.",
    "She has 5 apples and buys 3 more, so she has 8 apples.",
    "Hence x = \\frac{1}{2} and the answer is \\boxed{\\frac{1}{2}}.",
    "Step 1: compute 100 - 58 = 42.\nStep 2: check it.",
] * 4
VOCAB_SIZE = 320
SPECIAL = ["<pad>", "<eos>"]


@functools.lru_cache(maxsize=1)
def bpe_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer like the ones real models use, where a word or a number is several characters in
    one token, a token can straddle the edge of the final answer, the same text has non-canonical tokenisations,
    and every byte (multibyte UTF-8 characters included) encodes. The credit core must segment such completions;
    the tiny model's one-token-per-character tokenizer (tested beside it) cannot show any of this."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def tiny_qwen2(vocab_size: int, seed: int = 0, dtype=torch.float64) -> Qwen2ForCausalLM:
    """A random Qwen2 for equivalence tests against slow references: float64, any vocabulary (the BPE tokenizer's or
    random ids), untied output head, larger-than-default init (logits far from uniform), and grouped-query attention
    (2 key/value heads for 4 query heads, as in Qwen2 and SmolLM2) that the key/value-cache prefix reuse must handle.
    ``oarl.models.tiny.build_tiny`` has none of these (its ``TinyConfig`` gives one key/value head per query head)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _tiny_qwen2(vocab_size, dtype)


def _tiny_qwen2(vocab_size: int, dtype) -> Qwen2ForCausalLM:
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
        tie_word_embeddings=False,
        attention_dropout=0.0,
    )
    model = Qwen2ForCausalLM(config).to(dtype)
    # Larger-than-default init so that logits (and so importances) are far from uniform.
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0.0, 0.2)
    return model.eval()


def pad_rows(rows: list[list[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, L] ids and mask of token lists, padded on `side` ("left" or "right")."""
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for b, r in enumerate(rows):
        sl = slice(length - len(r), length) if side == "left" else slice(0, len(r))
        ids[b, sl] = torch.tensor(r, dtype=torch.long)
        mask[b, sl] = 1
    return ids, mask


def tiny_gpt2(vocab_size: int, seed: int = 0, dtype=torch.float64) -> GPT2LMHeadModel:
    """A model with absolute position embeddings: wrong position ids would change its outputs."""
    config = GPT2Config(
        vocab_size=vocab_size,
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=256,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        pad_token_id=0,
        eos_token_id=1,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GPT2LMHeadModel(config).to(dtype).eval()
