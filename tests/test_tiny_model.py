"""The tiny model, its character tokenizer, and the cached supervised warm start."""

import json

import pytest
import torch
from transformers import AutoTokenizer

from oarl.models.loading import PROBE_TEXTS, auto_tokenizer_problem
from oarl.models.tiny import (
    ALPHABET,
    TinyConfig,
    build_tiny,
    build_tokenizer,
    is_tiny_dir,
    load_tiny,
    num_parameters,
    save_tiny,
)

TEXT = "Q: 7+5*3-2=?\nA: 5*3=15. 7+15=22. 22-2=20. The answer is 20."
TEXTS = [TEXT, "Q: (6+2)-(1+4)=?\nA: 6+2=8. 1+4=5. The answer is 3.", "  two  spaces\n\n" + ALPHABET, *PROBE_TEXTS]


def assert_auto_tokenizer_ids(path):
    """AutoTokenizer (what TRL and vLLM load) reads the directory with the ids of oarl's tokenizer."""
    assert auto_tokenizer_problem(path) is None
    auto, ours = AutoTokenizer.from_pretrained(path), build_tokenizer()
    assert type(auto).__name__ == "Qwen2Tokenizer"
    for text in TEXTS:
        assert auto(text)["input_ids"] == ours(text)["input_ids"], text


def test_tokenizer_round_trip_and_special_ids():
    tok = build_tokenizer()
    ids = tok(TEXT)["input_ids"]
    assert len(ids) == len(TEXT)  # one token per character, no BOS
    assert tok.decode(ids) == TEXT
    assert tok.pad_token_id != tok.eos_token_id
    assert tok.eos_token_id not in ids and tok.pad_token_id not in ids
    assert tok(TEXT + tok.eos_token)["input_ids"][-1] == tok.eos_token_id
    assert tok.decode(ids + [tok.eos_token_id], skip_special_tokens=True) == TEXT
    # The ids the embedded models were trained with (a WordLevel vocabulary: specials, then ALPHABET in order).
    assert [tok.pad_token_id, tok.eos_token_id, tok.unk_token_id] == [0, 1, 2] and len(tok) == 3 + len(ALPHABET)
    for text in TEXTS[:3]:
        assert tok(text)["input_ids"] == [3 + ALPHABET.index(c) for c in text], text
    assert tok("Q: é€5\t")["input_ids"] == tok("Q: 5")["input_ids"]  # characters outside ALPHABET are dropped


def test_model_size_and_shapes():
    model, tok = build_tiny()
    n = num_parameters(model)
    assert n == 1_063_936, n  # the default regime's model (hidden 128, 4 layers, MLP 512, tied embeddings)
    from oarl.data.arithmetic import DEFAULT_REGIME

    regime_model, _ = build_tiny(DEFAULT_REGIME.model)
    assert num_parameters(regime_model) == n
    assert model.config.vocab_size == len(tok)
    assert model.config.pad_token_id == tok.pad_token_id and model.config.eos_token_id == tok.eos_token_id
    bigger, _ = build_tiny(TinyConfig(hidden_size=192))
    assert num_parameters(bigger) > n
    # Same seed, same weights.
    again, _ = build_tiny()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))


def test_save_load_identical(tmp_path):
    model, tok = build_tiny()
    save_tiny(model, tok, tmp_path / "m")
    assert is_tiny_dir(tmp_path / "m") and not is_tiny_dir(tmp_path)
    m2, t2 = load_tiny(tmp_path / "m")
    assert t2(TEXT)["input_ids"] == tok(TEXT)["input_ids"]
    assert t2.get_vocab() == tok.get_vocab()
    assert (t2.pad_token_id, t2.eos_token_id) == (
        tok.pad_token_id,
        tok.eos_token_id,
    ) and t2.pad_token_id != t2.eos_token_id
    assert t2.padding_side == "left"
    x = torch.tensor([tok(TEXT)["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(model(x).logits, m2(x).logits)
    cfg = json.load(open(tmp_path / "m" / "tokenizer_config.json"))
    assert cfg["tokenizer_class"] == "Qwen2Tokenizer" and cfg["padding_side"] == "left"
    assert_auto_tokenizer_ids(tmp_path / "m")


def old_format_tiny_dir(path):
    """A tiny-model directory as oarl wrote it before the Qwen2Tokenizer: a WordLevel tokenizer declared as
    PreTrainedTokenizerFast, which AutoTokenizer reads with other ids."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{c: 3 + i for i, c in enumerate(ALPHABET)}}
    old = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    old.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    old.decoder = decoders.Fuse()
    old = PreTrainedTokenizerFast(tokenizer_object=old, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    model, _ = build_tiny(TinyConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64))
    return save_tiny(model, old, path)


def test_directories_of_older_versions_still_load(tmp_path):
    old_format_tiny_dir(tmp_path)
    assert "differ" in auto_tokenizer_problem(tmp_path)
    _, loaded = load_tiny(tmp_path)  # oarl's loader reads tokenizer.json as it is
    assert loaded(TEXT)["input_ids"] == build_tokenizer()(TEXT)["input_ids"]
    build_tokenizer().save_pretrained(tmp_path)  # the upgrade the module docstring gives
    assert_auto_tokenizer_ids(tmp_path)


def test_batched_generation_left_padded():
    model, tok = build_tiny()
    enc = tok(["Q: 1+1=?\nA: ", "Q: 12+3*4=?\nA: "], return_tensors="pt", padding=True)
    assert enc["input_ids"][0, 0].item() == tok.pad_token_id  # left padding
    out = model.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape == (2, enc["input_ids"].shape[1] + 4)


def test_warm_start_trains_then_hits_cache(tmp_path, monkeypatch):
    from oarl.models import warmstart

    monkeypatch.setenv("OARL_CACHE", str(tmp_path / "cache"))
    cfg = {
        "task": {},
        "model": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64},
        "steps": 3,
        "batch_size": 4,
        "learning_rate": 1e-3,
        "seed": 0,
    }
    assert not warmstart.is_cached(cfg)
    path = warmstart.warm_start(cfg, log_every=1)
    assert path.startswith(str(tmp_path / "cache" / "warmstart"))
    info = json.load(open(f"{path}/warmstart.json"))
    assert info["config"]["steps"] == 3 and info["num_demos"] == 12
    model, tok = load_tiny(path)
    assert model.config.hidden_size == 32 and tok.pad_token_id != tok.eos_token_id
    assert_auto_tokenizer_ids(path)
    assert warmstart.is_cached(cfg)

    calls = []
    monkeypatch.setattr(warmstart, "_train", lambda *a, **k: calls.append(1) or pytest.fail("retrained"))
    assert warmstart.warm_start(cfg) == path and not calls
    # A different config is a different cache entry.
    assert warmstart.cache_path({**cfg, "steps": 4}) != warmstart.cache_path(cfg)
