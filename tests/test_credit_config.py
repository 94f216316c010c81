"""Validation of the credit settings: ValueError naming the setting and its allowed range."""

import pytest
import torch

from oarl.credit import ESTIMATORS, OUTCOMES, CreditConfig, bilevel_weights


def test_defaults_and_resolved_outcome():
    config = CreditConfig()
    assert (config.estimator, config.threshold, config.beta, config.floor) == ("gradient", 0.4, 2.0, 0.1)
    assert config.resolved_outcome() == "answer_mean"
    assert CreditConfig(estimator="perturbation").resolved_outcome() == "last"
    assert CreditConfig(estimator="entropy").resolved_outcome() == "answer_mean"
    assert CreditConfig(estimator="perturbation", outcome="answer_joint").resolved_outcome() == "answer_joint"
    assert ESTIMATORS == ("none", "perturbation", "gradient", "entropy", "grail", "rollout")
    assert (config.resolved_apply_to(), config.resolved_span()) == ("all", "token")
    assert CreditConfig(estimator="grail").resolved_apply_to() == "negative"  # GRAIL's default: wrong rollouts only
    assert CreditConfig(estimator="grail", apply_to="all").resolved_apply_to() == "all"
    assert CreditConfig(estimator="rollout").resolved_span() == "sentence"
    assert CreditConfig(estimator="rollout", span="line").resolved_span() == "line"
    grail = CreditConfig(estimator="grail")
    assert (grail.grail_scale, grail.grail_min, grail.grail_max) == (0.5, 0.5, 5.0)  # GRAIL's README and config
    assert (CreditConfig().rollouts, CreditConfig().max_steps) == (4, 8)
    assert OUTCOMES == ("last", "answer_mean", "answer_joint")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (
            "estimator",
            "random",
            r"estimator must be one of \('none', 'perturbation', 'gradient', 'entropy', 'grail', "
            r"'rollout'\)",
        ),
        ("outcome", "first", r"outcome must be one of \('last', 'answer_mean', 'answer_joint'\)"),
        ("threshold", 0.0, r"threshold must be in the open interval \(0, 1\)"),
        ("threshold", 1.0, r"threshold must be in the open interval \(0, 1\)"),
        ("threshold", float("nan"), r"threshold must be in the open interval \(0, 1\)"),
        ("beta", -0.1, r"beta must be a finite number >= 0"),
        ("beta", float("inf"), r"beta must be a finite number >= 0"),
        ("floor", -0.01, r"floor must be in the closed interval \[0, 1\]"),
        ("floor", 1.5, r"floor must be in the closed interval \[0, 1\]"),
        ("noise_std", 0.0, r"noise_std must be a finite number > 0"),
        ("noise_samples", 0, r"noise_samples must be an integer >= 1"),
        ("chunk_size", 0, r"chunk_size must be an integer >= 1"),
        ("chunk_size", 2.5, r"chunk_size must be an integer >= 1"),
        ("apply_to", "both", r"apply_to must be one of \('all', 'positive', 'negative'\)"),
        ("replace_with", -1, r"replace_with must be None or a token id >= 0"),
        ("reuse_prefix", "yes", r"reuse_prefix must be 'auto', True or False"),
        ("reuse_prefix", 1, r"reuse_prefix must be 'auto', True or False"),
        ("span", "paragraph", r"span must be one of \('token', 'line', 'sentence'\)"),
        ("rollouts", 0, r"rollouts must be an integer >= 1"),
        ("rollouts", True, r"rollouts must be an integer >= 1"),
        ("max_steps", 0, r"max_steps must be an integer >= 1"),
        ("grail_scale", -0.5, r"grail_scale must be a finite number >= 0"),
        ("grail_min", 1.5, r"grail_min must be in the closed interval \[0, 1\]"),
        ("grail_max", 0.5, r"grail_max must be a finite number >= 1"),
        ("grail_max", float("inf"), r"grail_max must be a finite number >= 1"),
        ("temperature", 0.0, r"temperature must be a finite number > 0"),
    ],
)
def test_invalid_settings_raise(field, value, message):
    with pytest.raises(ValueError, match=message):
        CreditConfig(**{field: value})


def test_edges_are_accepted():
    CreditConfig(floor=0.0, beta=0.0, threshold=0.01, chunk_size=1, replace_with=0)
    CreditConfig(floor=1.0, threshold=0.99, estimator="none", apply_to="negative")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threshold": 1.2}, "threshold"),
        ({"beta": -1.0}, "beta"),
        ({"floor": 2.0}, "floor"),
    ],
)
def test_bilevel_weights_validates(kwargs, message):
    with pytest.raises(ValueError, match=message):
        bilevel_weights(torch.ones(1, 3), torch.ones(1, 3, dtype=torch.bool), **kwargs)
