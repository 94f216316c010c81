"""Shared fixtures: a tiny character-level Qwen2 language model, built and briefly trained in-process.

The model learns the format ``Q: a+b=?\nA: a+b=c. The answer is c.`` (with some wrong sums) in a few
seconds, so that sampled completions are parsable and a group of them has mixed rewards: exactly what
the trainer and estimator tests need, with no download.
"""

from __future__ import annotations

import random
import re

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

CHARS = [chr(c) for c in range(32, 127)] + ["\n"]


def char_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    vocab.update({c: i + 3 for i, c in enumerate(CHARS)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def addition_example(rng: random.Random, wrong_frac: float = 0.2) -> tuple[str, str, str]:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    c = a + b
    shown = c + rng.choice([-1, 1]) if rng.random() < wrong_frac else c
    return f"Q: {a}+{b}=?\nA: ", f"{a}+{b}={shown}. The answer is {shown}.", str(c)


def train_tiny_lm(steps: int = 300, seed: int = 0):
    torch.manual_seed(seed)
    rng = random.Random(seed)
    tokenizer = char_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
        tie_word_embeddings=True,
    )
    model = Qwen2ForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        texts = [p + c for p, c, _ in (addition_example(rng) for _ in range(32))]
        batch = tokenizer([t + tokenizer.eos_token for t in texts], return_tensors="pt", padding=True)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, tokenizer


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory):
    """Directory of a saved tiny trained model and its tokenizer (load the tokenizer as PreTrainedTokenizerFast)."""
    path = tmp_path_factory.mktemp("tiny_lm")
    model, tokenizer = train_tiny_lm()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def load_tiny_lm(path):
    return Qwen2ForCausalLM.from_pretrained(path), PreTrainedTokenizerFast.from_pretrained(path)


def addition_prompts(n: int, seed: int = 1) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt": p, "answer": gold} for p, _, gold in (addition_example(rng) for _ in range(n))]


_ANSWER = re.compile(r"The answer is (-?\d+)")


def addition_reward(completions, answer, **kwargs):
    out = []
    for completion, gold in zip(completions, answer):
        m = _ANSWER.findall(completion)
        out.append(float(bool(m) and m[-1] == gold))
    return out
