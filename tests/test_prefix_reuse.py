"""OAR-P's prefix reuse is on by default ("auto") wherever the model's cache keeps every column, in token, span and
hierarchical modes, with the importances of recomputation; a sliding-window model recomputes, with one note."""

import logging

import pytest
import torch
from test_credit_estimators import PAD, batch, make_rows
from test_credit_fixtures import pad_rows, tiny_gpt2, tiny_qwen2
from transformers import Qwen2Config, Qwen2ForCausalLM

import oarl.credit.perturbation as perturbation
from oarl.credit import OUTCOMES, CreditConfig, perturbation_importance

pytestmark = pytest.mark.usefixtures("one_thread")
VOCAB = 97


class CacheCounter:
    """For every forward call of the model: (input columns, whether a key/value cache was passed in)."""

    def __init__(self, model):
        self.calls = []
        self.handle = model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        cache = kwargs.get("past_key_values", kwargs.get("cache"))
        self.calls.append((kwargs["input_ids"].shape[1], cache is not None))


def sliding_qwen2(window: int = 4):
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        use_sliding_window=True,
        sliding_window=window,
        max_window_layers=0,
        pad_token_id=PAD,
        bos_token_id=None,
        eos_token_id=1,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return Qwen2ForCausalLM(config).double().eval()


def inputs(seed: int = 5):
    rows = make_rows(seed=seed)
    ids, attn, reasoning, answer = batch(rows, "right")
    span_ids, _ = pad_rows([[t // 2 for t in range(len(r[0]))] for r in rows], -1, "right")  # steps of 2 tokens
    return ids, attn, reasoning, answer, span_ids


KINDS = {"token": {}, "span": {"span": True}, "hierarchical": {"span": True, "refine": 0.5}}


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("mode", OUTCOMES)
@pytest.mark.parametrize("architecture", ["qwen2", "gpt2"])
def test_auto_reuses_the_prefix_with_the_same_importances(kind, mode, architecture):
    model = tiny_qwen2(VOCAB) if architecture == "qwen2" else tiny_gpt2(VOCAB)
    ids, attn, reasoning, answer, span_ids = inputs()
    options = dict(
        mode=mode,
        chunk_size=3,
        pad_token_id=PAD,
        span_ids=span_ids if KINDS[kind] else None,
        refine=KINDS[kind].get("refine"),
    )
    recomputed = perturbation_importance(model, ids, attn, reasoning, answer, reuse_prefix=False, **options)
    counter = CacheCounter(model)
    try:
        reused = perturbation_importance(model, ids, attn, reasoning, answer, **options)  # the default: "auto"
    finally:
        counter.handle.remove()
    assert recomputed.abs().sum() > 0
    torch.testing.assert_close(reused, recomputed, rtol=0, atol=1e-9)
    clean_columns = counter.calls[0][0]
    variants = counter.calls[1:]
    # every variant pass after the clean one starts from the cache, and recomputes fewer columns than the probe
    assert variants and all(cached and columns < clean_columns for columns, cached in variants)


def test_sliding_window_model_recomputes_with_one_note(caplog):
    model = sliding_qwen2()
    ids, attn, reasoning, answer, span_ids = inputs(seed=2)
    assert ids.shape[1] > 4  # longer than the window: the cache does not hold every column
    perturbation._NOTED.discard(type(model).__name__)
    expected = perturbation_importance(model, ids, attn, reasoning, answer, pad_token_id=PAD, reuse_prefix=False)
    for reuse_prefix in ("auto", True, "auto"):  # True is accepted, and falls back the same way
        counter = CacheCounter(model)
        with caplog.at_level(logging.WARNING, logger=perturbation.__name__):
            got = perturbation_importance(
                model, ids, attn, reasoning, answer, pad_token_id=PAD, reuse_prefix=reuse_prefix
            )
        counter.handle.remove()
        assert not any(cached for _, cached in counter.calls)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-9)
    notes = [r for r in caplog.records if "recomputes every perturbed variant" in r.message]
    assert len(notes) == 1 and "Qwen2ForCausalLM" in notes[0].message


def test_config_default_and_the_trainer_flag():
    from oarl import OARConfig

    assert CreditConfig(estimator="perturbation").reuse_prefix == "auto"
    common = dict(output_dir="unused", use_cpu=True, bf16=False, report_to="none", credit="perturbation")
    assert OARConfig(**common).credit_config().reuse_prefix == "auto"
    assert OARConfig(**common, credit_reuse_prefix=False).credit_config().reuse_prefix is False
    assert OARConfig(**common, credit_reuse_prefix=True).credit_config().reuse_prefix is True
