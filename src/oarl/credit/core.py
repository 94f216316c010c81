"""The entry point a trainer calls: (B,) advantages -> (B, T) per-token advantages.

    1. segment every completion (reasoning / conclusion / answer / rest, and reasoning steps);
    2. keep the rows that need importances: advantage != 0, allowed by apply_to, with a parsed answer;
    3. probe = prompt (left padded) ⊕ completion (right padded) for those rows only; the estimator
       cuts each probe after its answer and aligns the rows to end together (probe.py); rollout credit
       instead samples continuations at the step boundaries through the caller's sampler and scorer;
    4. importances -> Bi-Level weights over the reasoning tokens (GRAIL: its own z-scored weights, and w_max
       on the answer tokens); weights are 1 everywhere else;
    5. per-token advantages = advantage * weight, 0 on padding.

Tool calls and environments: with model_mask (TRL's tool_mask / env_mask), the tokens a tool or an environment
inserted are neither reasoning nor answer (segments.py): no estimator perturbs, ranks or weighs them, the Bi-Level
mass is kept over the model's own reasoning tokens, and their weight and advantage are 0 (a loss that masks them,
as TRL's does, ignores them; one that does not gets no gradient from them).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from .bilevel import bilevel_weights, nonfinite_rows
from .config import CreditConfig
from .entropy import entropy_importance
from .gradient import gradient_importance
from .grail import grail_saliency, grail_weights
from .perturbation import perturbation_importance
from .probe import eval_mode
from .rollout import Sampler, Scorer, rollout_importance
from .segments import Segments, segment_completions

STAT_KEYS = (
    "time_s",
    "skipped_frac",
    "no_answer_frac",
    "nonfinite_frac",
    "weight_std",
    "weight_max",
    "suppressed_frac",
    "boosted_frac",
)


@dataclass
class CreditOutput:
    """advantages [B, T]: advantage * weight, 0 where completion_mask is 0.
    weights [B, T]: 1 outside reasoning tokens and for skipped / unparsable / non-finite rows (GRAIL: w_max on
    the answer tokens of every completion with an answer); 0 on tool / environment tokens (segments.tool).
    importance [B, T]: raw importances (0 outside reasoning and for rows not computed; GRAIL: the saliency).
    signed [B, T] or None: rollout only, the signed step credit V(after step) - V(before step) of each reasoning
    token (importance is its absolute value).
    stats: time_s; skipped_frac (advantage exactly 0 or excluded by apply_to), no_answer_frac and
    nonfinite_frac as fractions of the B rows; weight_std, weight_max, suppressed_frac (weight < 1) and
    boosted_frac (weight > 1) over the reasoning tokens of the computed rows (0.0, 1.0, 0.0, 0.0 if none).
    """

    advantages: Tensor
    weights: Tensor
    importance: Tensor
    segments: Segments
    stats: dict[str, float]
    signed: Tensor | None = None


def _estimate(model, tokenizer, ids, attn, reasoning, answer, steps, config: CreditConfig, generator) -> Tensor:
    mode = config.resolved_outcome()
    if config.estimator == "perturbation":
        return perturbation_importance(
            model,
            ids,
            attn,
            reasoning,
            answer,
            mode=mode,
            chunk_size=config.chunk_size,
            replace_with=config.replace_with,
            pad_token_id=tokenizer.pad_token_id,
            reuse_prefix=config.reuse_prefix,
            span_ids=steps,
            refine=config.threshold if config.refine else None,
        )
    if config.estimator == "gradient":
        return gradient_importance(
            model,
            ids,
            attn,
            reasoning,
            answer,
            mode=mode,
            noise_std=config.noise_std,
            generator=generator,
            noise_samples=config.noise_samples,
            activation_checkpointing=config.activation_checkpointing,
        )
    if config.estimator == "grail":
        return grail_saliency(model, ids, attn, reasoning, answer, temperature=config.temperature)
    return entropy_importance(model, ids, attn, reasoning, answer)


def token_advantages(
    model,
    tokenizer,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    completion_ids: Tensor,
    completion_mask: Tensor,
    advantages: Tensor,
    config: CreditConfig,
    truncated: Tensor | None = None,
    generator: torch.Generator | None = None,
    sampler: Sampler | None = None,
    scorer: Scorer | None = None,
    max_completion_length: int | None = None,
    model_mask: Tensor | None = None,
) -> CreditOutput:
    """Per-token advantages [B, T] for prompts [B, P] (left padded) and completions [B, T] (right padded).

    model_mask [B, T] (optional): 1 where the model wrote the completion token, 0 where a tool or an environment
    inserted it (TRL's ``tool_mask`` / ``env_mask``); see the module doc. Rollout credit does not take it.
    Rollout credit (config.estimator "rollout") needs no model but a sampler and a scorer (rollout.py: each is
    called exactly once per call, batch_size does not split it) and, to keep continuations within the original
    length limit, max_completion_length. Raises ValueError when they are missing, or when rollout credit is given
    a model_mask.
    """
    started = time.perf_counter()
    batch, length = completion_ids.shape
    device = completion_ids.device
    if config.estimator == "rollout" and (sampler is None or scorer is None):
        raise ValueError("estimator 'rollout' needs a sampler and a scorer (see oarl.credit.rollout)")
    if config.estimator == "rollout" and model_mask is not None:
        raise ValueError(
            "rollout credit does not take a model_mask: its continuations are sampled as plain text, "
            "without the tool calls or environment turns that the masked tokens come from. Use another "
            "estimator for completions with tool or environment tokens."
        )
    span = config.resolved_span() if config.estimator in ("perturbation", "rollout") else "token"
    segments = segment_completions(
        tokenizer, completion_ids, completion_mask, truncated, span=span, model_mask=model_mask
    )

    eligible = advantages != 0  # [B]
    apply_to = config.resolved_apply_to()
    if apply_to == "positive":
        eligible = eligible & (advantages > 0)
    elif apply_to == "negative":
        eligible = eligible & (advantages < 0)
    skipped = ~eligible
    computed = eligible & segments.has_answer & segments.reasoning.any(1)
    if config.estimator == "none":
        computed = torch.zeros_like(computed)

    importance = torch.zeros(batch, length, dtype=torch.float32, device=device)  # [B, T]
    all_rows = computed.nonzero().squeeze(1)  # [N]
    signed = None
    if config.estimator == "rollout":  # no model pass: continuations through the caller's sampler and scorer
        steps = segments.steps if segments.steps is not None else segments.reasoning.long().cumsum(1) - 1
        importance, signed = rollout_importance(
            prompt_ids,
            prompt_mask,
            completion_ids,
            completion_mask,
            torch.where(segments.reasoning, steps, -1),
            all_rows,
            sampler,
            scorer,
            rollouts=config.rollouts,
            max_steps=config.max_steps,
            max_completion_length=max_completion_length,
        )
        all_rows = all_rows[:0]
    prompt_len = prompt_ids.shape[1]
    per_pass = max(all_rows.numel(), 1)  # completions per model pass; OAR-G sends each noise_samples times
    if config.batch_size is not None:
        draws = config.noise_samples if config.estimator == "gradient" else 1
        per_pass = max(config.batch_size // draws, 1)
    for rows in all_rows.split(per_pass) if all_rows.numel() else ():
        ids = torch.cat([prompt_ids[rows], completion_ids[rows]], 1)  # [n, P+T]
        attn = torch.cat([prompt_mask[rows], completion_mask[rows]], 1).bool()
        no_prompt = torch.zeros_like(prompt_mask[rows], dtype=torch.bool)
        reasoning = torch.cat([no_prompt, segments.reasoning[rows]], 1)
        answer = torch.cat([no_prompt, segments.answer[rows]], 1)
        steps = None
        if segments.steps is not None:
            steps = torch.cat([torch.full_like(prompt_ids[rows], -1), segments.steps[rows]], 1)
        with eval_mode(model):
            probe_importance = _estimate(model, tokenizer, ids, attn, reasoning, answer, steps, config, generator)
        importance[rows] = probe_importance[:, prompt_len:].float()

    reshape = segments.reasoning & computed[:, None]  # [B, T]
    nonfinite = nonfinite_rows(importance, reshape) & computed  # [B]
    if config.estimator == "grail":  # its own weights; the answer tokens of every completion get w_max
        answer = segments.answer & (advantages != 0)[:, None]
        weights = grail_weights(importance, reshape, answer, config.grail_scale, config.grail_min, config.grail_max)
    else:
        weights = bilevel_weights(importance, reshape, config.threshold, config.beta, config.floor)  # [B, T]
    weights = weights.masked_fill(segments.tool, 0.0)  # not the model's: never trained on
    importance = torch.where(reshape, importance, torch.zeros_like(importance))
    mask = completion_mask.bool()
    token_adv = advantages.float()[:, None] * weights * mask

    reasoning_weights = weights[reshape & ~nonfinite[:, None]]
    has = reasoning_weights.numel() > 0
    stats = {
        "time_s": time.perf_counter() - started,
        "skipped_frac": float(skipped.float().mean()) if batch else 0.0,
        "no_answer_frac": float((~segments.has_answer).float().mean()) if batch else 0.0,
        "nonfinite_frac": float(nonfinite.float().mean()) if batch else 0.0,
        "weight_std": float(reasoning_weights.std(unbiased=False)) if has else 0.0,
        "weight_max": float(reasoning_weights.max()) if has else 1.0,
        "suppressed_frac": float((reasoning_weights < 1).float().mean()) if has else 0.0,
        "boosted_frac": float((reasoning_weights > 1).float().mean()) if has else 0.0,
    }
    return CreditOutput(
        advantages=token_adv, weights=weights, importance=importance, segments=segments, stats=stats, signed=signed
    )
