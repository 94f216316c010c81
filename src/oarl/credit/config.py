"""Names of the estimators and outcome modes, and the one configuration object of the credit core.

Each CreditConfig field's metadata (:func:`setting`) is the one source of that setting: OARConfig's ``credit_*``
fields (:func:`trainer_field`) and ``oarl explain``'s flags (:func:`add_credit_flags`) are made from it. A value out
of range raises :class:`SettingError`, which names the setting apart from the problem, so that each caller can name
it as its user spells it.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from typing import get_args, get_type_hints

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


def setting(
    default,
    help: str,
    *,
    trainer: str,
    choices: tuple | None = None,
    grpo: bool = False,
    trainer_default=MISSING,
    trainer_none: str | None = None,
    flag: str | None = None,
    flag_default=None,
    flag_help: str | None = None,
):
    """A CreditConfig field whose metadata is the one source of the setting everywhere it is exposed.

    help:            what the setting does, for every reader; ``{name}`` stands for another setting's name as the
                     reader spells it (``{span}``: span here, credit_span in OARConfig, --span in ``oarl explain``).
    choices:         the allowed values (None too, where the default is None).
    trainer:         its OARConfig field. OARConfig declares it with :func:`trainer_field`, unless ``grpo``: then it
                     is GRPOConfig's own (temperature, activation checkpointing) and only read from there.
    trainer_default: OARConfig's default, where it differs. A None there stands for CreditConfig's default, or for
                     the value of the OARConfig field ``trainer_none``.
    flag:            its ``oarl explain`` flag, if any; ``flag_default`` (None: CreditConfig's) and ``flag_help`` (a
                     sentence added to the help) are the command's own.
    """
    metadata = {
        "help": help,
        "trainer": trainer,
        "choices": choices,
        "grpo": grpo,
        "trainer_none": trainer_none,
        "flag": flag,
        "flag_default": flag_default,
        "flag_help": flag_help,
    }
    if trainer_default is not MISSING:
        metadata["trainer_default"] = trainer_default
    return field(default=default, metadata=metadata)


@dataclass
class CreditConfig:
    """How completions' advantages are redistributed over their reasoning tokens (docs/architecture.md, the method).

    Each field's metadata (see :func:`setting`) is the one source of its description, its choices and its names in
    OARConfig and ``oarl explain``; the list below is rendered from it.
    """

    estimator: str = setting(
        "gradient",
        "Token-importance estimator: 'none' (plain GRPO: uniform weights), 'perturbation' (OAR-P, one "
        "forward per reasoning token), 'gradient' (OAR-G, one forward + one backward), 'entropy' (policy entropy of "
        "each reasoning token, a cheap GTPO-style baseline), 'grail' (GRAIL: gradient saliency of the answer's "
        "likelihood, z-scored weights instead of Bi-Level, on non-positive advantages by default) or 'rollout' "
        "(Monte-Carlo step credit |V(after step) - V(before step)|: {rollouts} continuations sampled at each "
        "reasoning-step boundary, the reference credit; expensive, and token_advantages needs a sampler and a scorer "
        "for it).",
        choices=ESTIMATORS,
        trainer="credit",
    )
    outcome: str | None = setting(
        None,
        "Outcome distribution p_final: 'last' (next-token distribution before the first answer token), "
        "'answer_mean' (softmax of the mean answer logits) or 'answer_joint' (mean log-probability of the answer "
        "tokens). Default: 'last' for perturbation, 'answer_mean' otherwise.",
        choices=OUTCOMES,
        trainer="credit_outcome",
        flag="--outcome",
    )
    threshold: float = setting(
        0.4,
        "Bi-Level threshold quantile q in (0, 1): tokens below the q-quantile of a completion's normalised "
        "importance are suppressed, the others boosted.",
        trainer="credit_threshold",
        flag="--threshold",
    )
    beta: float = setting(
        2.0,
        "Bi-Level boost beta >= 0: the most important token gets weight 1 + beta before the mass-preserving rescale.",
        trainer="credit_beta",
        flag="--beta",
    )
    floor: float = setting(
        0.1,
        "Bi-Level floor w_min in [0, 1]: the smallest weight of a suppressed token before the mass-preserving rescale.",
        trainer="credit_floor",
        flag="--floor",
    )
    noise_std: float = setting(
        1e-3,
        "OAR-G: std of the Gaussian noise added to the reasoning embeddings (> 0).",
        trainer="credit_noise_std",
        flag="--noise-std",
    )
    noise_samples: int = setting(
        1,
        "OAR-G: average the importances of this many independent noise draws (>= 1); one pass over that many "
        "copies of the rows. One draw's importance is as noisy as it is large (a half-normal sample: its spread "
        "equals its mean).",
        trainer="credit_noise_samples",
        flag="--noise-samples",
    )
    chunk_size: int = setting(
        32,
        "OAR-P: perturbed variants per forward pass (>= 1); bounds peak memory.",
        trainer="credit_chunk_size",
        flag="--chunk-size",
    )
    apply_to: str | None = setting(
        None,
        "Reshape completions with 'all' advantages, only 'positive' or only 'negative' ones; the others keep "
        "GRPO's uniform advantage. Default: 'negative' for grail (GRAIL's own default: non-positive advantages "
        "only), 'all' otherwise.",
        choices=APPLY_TO,
        trainer="credit_apply_to",
    )
    replace_with: int | None = setting(
        None,
        "OAR-P: token id that replaces a reasoning token (default: the tokenizer's pad id).",
        trainer="credit_replace_with",
    )
    reuse_prefix: bool | str = setting(
        "auto",
        "OAR-P: reuse the unperturbed forward's key/value cache before each variant's first replaced token "
        "(same importances; each variant recomputes only the tokens after it). Default ('auto'; None in OARConfig) "
        "or True: on wherever the model's cache keeps every column (not with sliding-window layers: they "
        "recompute, with a note logged once); False: always recompute.",
        trainer="credit_reuse_prefix",
        trainer_default=None,
    )
    span: str | None = setting(
        None,
        "Reasoning steps: OAR-P perturbs one 'token' at a time, or a whole 'line' / 'sentence' (one pass per "
        "step instead of one per token; every token of the step gets the step's importance); rollout samples "
        "continuations at each step boundary. Default: 'token' for perturbation, 'sentence' for rollout.",
        choices=SPANS,
        trainer="credit_span",
        flag="--span",
        flag_help="Also the steps that the benchmark scores every estimator on.",
    )
    batch_size: int | None = setting(
        None,
        "Rows per credit pass: bounds the memory of the OAR-G and entropy passes on long completions. OAR-G "
        "with {noise_samples} K sends each completion K times, so it takes {batch_size} // K completions per pass "
        "(at least one). Results do not depend on it, except that OAR-G draws its noise per pass. Default: all "
        "completions that need one in one pass; OARTrainer's: per_device_train_batch_size, so that a pass never "
        "holds more rows than the training micro-batch that follows it.",
        trainer="credit_batch_size",
        trainer_none="per_device_train_batch_size",
    )
    rollouts: int = setting(
        4,
        "Rollout credit: continuations sampled per step boundary (K >= 1); V(prefix) is their mean reward (under "
        "the run's reward functions in training, against the gold answer in `oarl explain`).",
        trainer="credit_rollouts",
        flag="--rollouts",
        flag_default=16,
        flag_help="More than training's 4 by default, since here it is the reference.",
    )
    max_steps: int = setting(
        8,
        "Rollout credit: at most this many steps per completion (>= 1); more are merged into this many groups of "
        "consecutive steps, as equal in size as possible (a group's tokens share its credit). A completion costs at "
        "most ({max_steps} + 1) x {rollouts} continuations.",
        trainer="credit_max_steps",
        flag="--max-steps",
    )
    grail_scale: float = setting(
        0.5,
        "GRAIL: spread sigma_w of the weights, w = clip(1 + sigma_w * z, w_min, w_max), >= 0. The default is "
        "GRAIL's (its README and training config).",
        trainer="credit_grail_scale",
    )
    grail_min: float = setting(
        0.5,
        "GRAIL: smallest weight w_min in [0, 1]. The default is GRAIL's (its README and training config).",
        trainer="credit_grail_min",
    )
    grail_max: float = setting(
        5.0,
        "GRAIL: largest weight w_max >= 1, also the weight of the answer tokens. The default is GRAIL's (its "
        "README and training config).",
        trainer="credit_grail_max",
    )
    temperature: float = setting(
        1.0,
        "GRAIL: the answer's log-probabilities are taken at the sampling temperature (logits / T), as GRAIL's "
        "code does; > 0. OARTrainer passes its own temperature.",
        trainer="temperature",
        grpo=True,
    )
    refine: bool = setting(
        False,
        "OAR-P with {span} 'line' or 'sentence': hierarchical perturbation. Steps first, then token by token "
        "inside the steps whose normalised importance reaches the Bi-Level threshold (the {threshold}-quantile of "
        "their completion; the other steps keep their step's importance); about (1 - {threshold}) of token-level's "
        "cost.",
        trainer="credit_refine",
    )
    activation_checkpointing: bool = setting(
        False,
        "OAR-G: keep only each block's input during the noisy forward and recompute its activations in the "
        "backward (same result, less memory, about one more forward). OARTrainer follows the training arguments' "
        "activation (gradient) checkpointing.",
        trainer="activation_checkpointing",
        grpo=True,
    )

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
            raise SettingError(
                "refine",
                "needs reasoning steps to refine: use it with the perturbation estimator and span 'line' or 'sentence'",
            )
        check_count("rollouts", self.rollouts)
        check_count("max_steps", self.max_steps)
        check_grail(self.grail_scale, self.grail_min, self.grail_max)
        if not (
            isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature) and self.temperature > 0
        ):
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


# ------------------------------------------------------------------------------------- where each setting is exposed

SETTINGS = {f.name: f for f in fields(CreditConfig)}


def trainer_name(setting: str) -> str:
    """The OARConfig field of a setting (``threshold`` -> ``credit_threshold``); any other name as it is."""
    return SETTINGS[setting].metadata["trainer"] if setting in SETTINGS else setting


def flag_name(setting: str) -> str:
    """The ``oarl explain`` flag of a setting (``noise_std`` -> ``--noise-std``); any other name as it is."""
    flag = SETTINGS[setting].metadata["flag"] if setting in SETTINGS else None
    return flag or setting


def help_text(setting: str, name_of: Callable[[str], str] = lambda name: name) -> str:
    """The help of a setting, the other settings it mentions named by ``name_of`` (e.g. :func:`trainer_name`)."""
    return SETTINGS[setting].metadata["help"].format_map({name: name_of(name) for name in SETTINGS})


def trainer_field(setting: str):
    """OARConfig's dataclass field of a setting: its default, help and choices, the metadata that TRL's parser
    (HfArgumentParser) hands to argparse."""
    f = SETTINGS[setting]
    metadata = {"help": help_text(setting, trainer_name)}
    if f.metadata["choices"]:
        metadata["choices"] = list(f.metadata["choices"])
    return field(default=f.metadata.get("trainer_default", f.default), metadata=metadata)


def add_credit_flags(parser) -> None:
    """Declare the ``oarl explain`` flag of each setting that has one on an argparse parser: type, choices and help
    from its metadata; default None (CreditConfig's applies) unless the command has its own."""
    types = get_type_hints(CreditConfig)
    for f in fields(CreditConfig):
        flag, default = f.metadata["flag"], f.metadata["flag_default"]
        if flag is None:
            continue
        kind = next(t for t in get_args(types[f.name]) or (types[f.name],) if t is not type(None))
        text = " ".join(filter(None, (help_text(f.name, flag_name), f.metadata["flag_help"])))
        shown = f.default if default is None else default
        text += "" if shown is None else f" (default: {shown})"
        parser.add_argument(
            flag, dest=f.name, type=kind, default=default, choices=f.metadata["choices"], help=text.replace("%", "%%")
        )


def credit_overrides(args) -> dict:
    """The settings given by ``oarl explain``'s flags (parsed ``args``), as CreditConfig keyword arguments."""
    return {
        f.name: getattr(args, f.name)
        for f in fields(CreditConfig)
        if f.metadata["flag"] and getattr(args, f.name) is not None
    }


def _fields_doc() -> str:
    """The list of CreditConfig's fields for its docstring, rendered from their metadata."""
    parts = []
    for f in fields(CreditConfig):
        where = [f"OARConfig: {trainer_name(f.name)}" + (" (GRPOConfig's)" if f.metadata["grpo"] else "")]
        if f.metadata["flag"]:
            where.append(f"oarl explain: {f.metadata['flag']}")
        parts.append(
            f"    {f.name} = {f.default!r} ({'; '.join(where)})\n"
            + textwrap.fill(help_text(f.name), 110, initial_indent=" " * 8, subsequent_indent=" " * 8)
        )
    return "\n".join(parts)


if CreditConfig.__doc__:  # not under python -OO
    CreditConfig.__doc__ += "\n" + _fields_doc() + "\n"
