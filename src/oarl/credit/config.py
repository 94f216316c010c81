"""Names of the estimators and outcome modes, and the one configuration object of the credit core."""

from __future__ import annotations

import math
from dataclasses import dataclass

ESTIMATORS = ("none", "perturbation", "gradient", "entropy")
OUTCOMES = ("last", "answer_mean", "answer_joint")
APPLY_TO = ("all", "positive", "negative")
SPANS = ("token", "line", "sentence")


def check_choice(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def check_bilevel(threshold: float, beta: float, floor: float) -> None:
    """The ranges of the Bi-Level reshaping settings (shared by CreditConfig and bilevel_weights)."""
    if not (isinstance(threshold, (int, float)) and 0.0 < threshold < 1.0):
        raise ValueError(f"threshold must be in the open interval (0, 1), got {threshold!r}")
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta >= 0.0):
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
    if not (isinstance(floor, (int, float)) and 0.0 <= floor <= 1.0):
        raise ValueError(f"floor must be in the closed interval [0, 1], got {floor!r}")


def check_chunk_size(chunk_size: int) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")


def check_noise_std(noise_std: float) -> None:
    if not (isinstance(noise_std, (int, float)) and math.isfinite(noise_std) and noise_std > 0.0):
        raise ValueError(f"noise_std must be a finite number > 0, got {noise_std!r}")


def check_noise_samples(noise_samples: int) -> None:
    if isinstance(noise_samples, bool) or not isinstance(noise_samples, int) or noise_samples < 1:
        raise ValueError(f"noise_samples must be an integer >= 1, got {noise_samples!r}")


@dataclass
class CreditConfig:
    """How completions' advantages are redistributed over their reasoning tokens (see DESIGN.md).

    estimator:    "none" (GRPO: uniform weights), "perturbation" (OAR-P), "gradient" (OAR-G) or "entropy"
                  (policy entropy of each reasoning token, a cheap GTPO-style baseline).
    outcome:      the outcome distribution p_final: "last", "answer_mean" or "answer_joint";
                  None picks "last" for perturbation and "answer_mean" otherwise.
    threshold:    quantile q of the normalised importances that splits suppression from boosting, in (0, 1).
    beta:         boost of the tokens above the threshold, >= 0.
    floor:        smallest weight of a suppressed token before the mass-preserving rescale, in [0, 1].
    noise_std:    std of the Gaussian noise on the reasoning embeddings (gradient), > 0.
    noise_samples: gradient: average the importances of this many independent noise draws (>= 1; one pass
                  over K x the rows). One draw is a half-normal sample whose spread equals its mean.
    chunk_size:   perturbed variants per forward pass (perturbation), >= 1.
    apply_to:     reshape the completions with "all" advantages, only "positive" or only "negative" ones.
    replace_with: token id that replaces a reasoning token (perturbation); None -> the tokenizer's pad id.
    reuse_prefix: perturbation: compute the shared prefix of a chunk's variants once and reuse its key/value
                  cache (same result, less compute on long prompts; the model's forward must take a cache).
    batch_size:   rows per model pass (None: all completions that need one, at once); bounds the memory of
                  the gradient and entropy passes on long completions. OAR-G with noise_samples K sends each
                  completion K times, so it takes batch_size // K completions per pass (at least one).
                  Results do not depend on it, except that OAR-G draws its noise per pass. OARTrainer sets
                  it to per_device_train_batch_size unless credit_batch_size is given: a pass then holds no
                  more rows than the training micro-batch that follows it.
    activation_checkpointing: gradient: keep only each block's input during the noisy forward and recompute
                  its activations in the backward (same result, less memory, about one more forward);
                  OARTrainer follows the training arguments' gradient (activation) checkpointing.
    span:         perturbation: replace one "token" at a time, or a whole reasoning step at once ("line" or
                  "sentence"; every token of the step gets the step's importance): one pass per step.
    refine:       perturbation with span "line" / "sentence": hierarchical OAR-P. After the steps, perturb token
                  by token inside the steps whose normalised importance reaches the Bi-Level threshold (the
                  threshold-quantile of their completion); the other steps keep their step's importance.
    """

    estimator: str = "gradient"
    outcome: str | None = None
    threshold: float = 0.4
    beta: float = 2.0
    floor: float = 0.1
    noise_std: float = 1e-3
    noise_samples: int = 1
    chunk_size: int = 32
    apply_to: str = "all"
    replace_with: int | None = None
    reuse_prefix: bool = False
    span: str = "token"
    refine: bool = False
    batch_size: int | None = None
    activation_checkpointing: bool = False

    def __post_init__(self):
        check_choice("estimator", self.estimator, ESTIMATORS)
        if self.outcome is not None:
            check_choice("outcome", self.outcome, OUTCOMES)
        check_bilevel(self.threshold, self.beta, self.floor)
        check_noise_std(self.noise_std)
        check_noise_samples(self.noise_samples)
        check_chunk_size(self.chunk_size)
        check_choice("apply_to", self.apply_to, APPLY_TO)
        if self.replace_with is not None and (
            isinstance(self.replace_with, bool) or not isinstance(self.replace_with, int) or self.replace_with < 0
        ):
            raise ValueError(f"replace_with must be None or a token id >= 0, got {self.replace_with!r}")
        check_choice("span", self.span, SPANS)
        if self.batch_size is not None and (
            isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1
        ):
            raise ValueError(f"batch_size must be None or an integer >= 1, got {self.batch_size!r}")
        for name in ("reuse_prefix", "refine", "activation_checkpointing"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.refine and self.span == "token":
            raise ValueError("refine needs reasoning steps to refine: set span to 'line' or 'sentence'")

    def resolved_outcome(self) -> str:
        """The outcome mode in use: the explicit one, else "last" for perturbation and "answer_mean" otherwise."""
        if self.outcome is not None:
            return self.outcome
        return "last" if self.estimator == "perturbation" else "answer_mean"
