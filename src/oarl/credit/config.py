"""Names of the estimators and outcome modes, and the one configuration object of the credit core."""

from __future__ import annotations

import math
from dataclasses import dataclass

ESTIMATORS = ("none", "perturbation", "gradient", "entropy", "grail", "rollout")
OUTCOMES = ("last", "answer_mean", "answer_joint")
APPLY_TO = ("all", "positive", "negative")
SPANS = ("token", "line", "sentence")


class SettingError(ValueError):
    """A setting out of its range: ``setting`` (its name) and ``problem`` (the rest of the message, e.g. "must be
    an integer >= 1, got 0"); str() is "<setting> <problem>". A caller that spells the setting differently (an
    OARConfig field, a command-line flag) re-raises it as ``SettingError(its_name, error.problem)``."""

    def __init__(self, setting: str, problem: str):
        super().__init__(f"{setting} {problem}")
        self.setting, self.problem = setting, problem


def check_choice(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise SettingError(name, f"must be one of {allowed}, got {value!r}")


def check_bilevel(threshold: float, beta: float, floor: float) -> None:
    """The ranges of the Bi-Level reshaping settings (shared by CreditConfig and bilevel_weights)."""
    if not (isinstance(threshold, (int, float)) and 0.0 < threshold < 1.0):
        raise SettingError("threshold", f"must be in the open interval (0, 1), got {threshold!r}")
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta >= 0.0):
        raise SettingError("beta", f"must be a finite number >= 0, got {beta!r}")
    if not (isinstance(floor, (int, float)) and 0.0 <= floor <= 1.0):
        raise SettingError("floor", f"must be in the closed interval [0, 1], got {floor!r}")


def check_chunk_size(chunk_size: int) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise SettingError("chunk_size", f"must be an integer >= 1, got {chunk_size!r}")


def check_reuse_prefix(reuse_prefix) -> None:
    if not (isinstance(reuse_prefix, bool) or reuse_prefix == "auto"):
        raise SettingError("reuse_prefix", f"must be 'auto', True or False, got {reuse_prefix!r}")


def check_noise_std(noise_std: float) -> None:
    if not (isinstance(noise_std, (int, float)) and math.isfinite(noise_std) and noise_std > 0.0):
        raise SettingError("noise_std", f"must be a finite number > 0, got {noise_std!r}")


def check_noise_samples(noise_samples: int) -> None:
    check_count("noise_samples", noise_samples)


def check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SettingError(name, f"must be an integer >= 1, got {value!r}")


def check_grail(scale: float, w_min: float, w_max: float) -> None:
    """The ranges of GRAIL's weight settings (shared by CreditConfig and grail_weights)."""
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale >= 0.0):
        raise SettingError("grail_scale", f"must be a finite number >= 0, got {scale!r}")
    if not (isinstance(w_min, (int, float)) and math.isfinite(w_min) and 0.0 <= w_min <= 1.0):
        raise SettingError("grail_min", f"must be in the closed interval [0, 1], got {w_min!r}")
    if not (isinstance(w_max, (int, float)) and math.isfinite(w_max) and w_max >= 1.0):
        raise SettingError("grail_max", f"must be a finite number >= 1, got {w_max!r}")


@dataclass
class CreditConfig:
    """How completions' advantages are redistributed over their reasoning tokens (see DESIGN.md).

    estimator:    "none" (GRPO: uniform weights), "perturbation" (OAR-P), "gradient" (OAR-G), "entropy"
                  (policy entropy of each reasoning token, a cheap GTPO-style baseline), "grail" (GRAIL:
                  gradient saliency of the answer's likelihood, z-scored weights instead of Bi-Level; grail.py)
                  or "rollout" (Monte-Carlo step credit |V(after step) - V(before step)|; rollout.py; needs a
                  sampler and a scorer, see token_advantages).
    outcome:      the outcome distribution p_final: "last", "answer_mean" or "answer_joint";
                  None picks "last" for perturbation and "answer_mean" otherwise.
    threshold:    quantile q of the normalised importances that splits suppression from boosting, in (0, 1).
    beta:         boost of the tokens above the threshold, >= 0.
    floor:        smallest weight of a suppressed token before the mass-preserving rescale, in [0, 1].
    noise_std:    std of the Gaussian noise on the reasoning embeddings (gradient), > 0.
    noise_samples: gradient: average the importances of this many independent noise draws (>= 1; one pass
                  over K x the rows). One draw is a half-normal sample whose spread equals its mean.
    chunk_size:   perturbed variants per forward pass (perturbation), >= 1.
    apply_to:     reshape the completions with "all" advantages, only "positive" or only "negative" ones;
                  None: "negative" for grail (GRAIL's default, non-positive advantages only), else "all".
    replace_with: token id that replaces a reasoning token (perturbation); None -> the tokenizer's pad id.
    reuse_prefix: perturbation: "auto" (default) or True: each variant starts from the clean forward's key/value
                  cache at its first replaced token, when the model's cache keeps every column (else every variant
                  is recomputed, with a note logged once); False: always recompute. Same result.
    batch_size:   rows per model pass (None: all completions that need one, at once); bounds the memory of
                  the gradient and entropy passes on long completions. OAR-G with noise_samples K sends each
                  completion K times, so it takes batch_size // K completions per pass (at least one).
                  Results do not depend on it, except that OAR-G draws its noise per pass. OARTrainer sets
                  it to per_device_train_batch_size unless credit_batch_size is given: a pass then holds no
                  more rows than the training micro-batch that follows it.
    activation_checkpointing: gradient: keep only each block's input during the noisy forward and recompute
                  its activations in the backward (same result, less memory, about one more forward);
                  OARTrainer follows the training arguments' gradient (activation) checkpointing.
    span:         the reasoning steps: one "token", a "line" or a "sentence". perturbation replaces one step
                  at a time (every token of the step gets the step's importance: one pass per step); rollout
                  samples continuations at each step boundary. None: "token" for perturbation, "sentence" for
                  rollout.
    refine:       perturbation with span "line" / "sentence": hierarchical OAR-P. After the steps, perturb token
                  by token inside the steps whose normalised importance reaches the Bi-Level threshold (the
                  threshold-quantile of their completion); the other steps keep their step's importance.
    rollouts:     rollout: continuations sampled per step boundary (K), >= 1.
    max_steps:    rollout: at most this many steps per completion (>= 1); beyond it, consecutive steps are
                  merged into that many groups of as equal a number of steps as possible (a group's tokens
                  share its credit). Cost: (max_steps + 1) x rollouts continuations per completion at most.
    grail_scale:  GRAIL's sigma_w (spread of the weights around 1), >= 0. Default 0.5 (GRAIL's README and
                  training config).
    grail_min, grail_max: GRAIL's weight range [w_min, w_max]; w_min in [0, 1], w_max >= 1. Defaults 0.5 and
                  5.0 (GRAIL's README and training config).
    temperature:  grail: the answer's log-probabilities are taken at the sampling temperature (logits / T),
                  as GRAIL's code does; > 0. The trainer passes its own temperature.
    """

    estimator: str = "gradient"
    outcome: str | None = None
    threshold: float = 0.4
    beta: float = 2.0
    floor: float = 0.1
    noise_std: float = 1e-3
    noise_samples: int = 1
    chunk_size: int = 32
    apply_to: str | None = None
    replace_with: int | None = None
    reuse_prefix: bool | str = "auto"
    span: str | None = None
    batch_size: int | None = None
    rollouts: int = 4
    max_steps: int = 8
    grail_scale: float = 0.5
    grail_min: float = 0.5
    grail_max: float = 5.0
    temperature: float = 1.0
    refine: bool = False
    activation_checkpointing: bool = False

    def __post_init__(self):
        check_choice("estimator", self.estimator, ESTIMATORS)
        if self.outcome is not None:
            check_choice("outcome", self.outcome, OUTCOMES)
        check_bilevel(self.threshold, self.beta, self.floor)
        check_noise_std(self.noise_std)
        check_noise_samples(self.noise_samples)
        check_chunk_size(self.chunk_size)
        if self.apply_to is not None:
            check_choice("apply_to", self.apply_to, APPLY_TO)
        if self.replace_with is not None and (
            isinstance(self.replace_with, bool) or not isinstance(self.replace_with, int) or self.replace_with < 0
        ):
            raise SettingError("replace_with", f"must be None or a token id >= 0, got {self.replace_with!r}")
        if self.span is not None:
            check_choice("span", self.span, SPANS)
        if self.batch_size is not None and (
            isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1
        ):
            raise SettingError("batch_size", f"must be None or an integer >= 1, got {self.batch_size!r}")
        check_reuse_prefix(self.reuse_prefix)
        for name in ("refine", "activation_checkpointing"):
            if not isinstance(getattr(self, name), bool):
                raise SettingError(name, f"must be True or False, got {getattr(self, name)!r}")
        if self.refine and (self.estimator != "perturbation" or self.resolved_span() == "token"):
            raise SettingError("refine", "needs reasoning steps to refine: use it with the perturbation estimator "
                               "and span 'line' or 'sentence'")
        check_count("rollouts", self.rollouts)
        check_count("max_steps", self.max_steps)
        check_grail(self.grail_scale, self.grail_min, self.grail_max)
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature) and self.temperature > 0):
            raise SettingError("temperature", f"must be a finite number > 0, got {self.temperature!r}")

    def resolved_outcome(self) -> str:
        """The outcome mode in use: the explicit one, else "last" for perturbation and "answer_mean" otherwise."""
        if self.outcome is not None:
            return self.outcome
        return "last" if self.estimator == "perturbation" else "answer_mean"

    def resolved_apply_to(self) -> str:
        """The completions reshaped: the explicit setting, else "negative" for grail and "all" otherwise."""
        if self.apply_to is not None:
            return self.apply_to
        return "negative" if self.estimator == "grail" else "all"

    def resolved_span(self) -> str:
        """The reasoning steps: the explicit span, else "sentence" for rollout and "token" otherwise."""
        if self.span is not None:
            return self.span
        return "sentence" if self.estimator == "rollout" else "token"
