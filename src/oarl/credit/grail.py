"""GRAIL: token weights from the gradient saliency of the answer's likelihood at the input embeddings.

Pala, Toh, Poria, "GRAIL: Gradient-Reweighted Advantages for Reinforcement Learning with Verifiable Rewards",
arXiv 2606.04889. Its abstract gives the idea (weights from "gradient-activation saliency ... on tokens that are
more locally sensitive to the final answer"); the definitions below come from the authors' public code,
declare-lab/grail at commit 749aa4c (src/train/grail_trainer.py, `compute_grail_weights`), and the defaults from its
README and training config (src/train/training_configs/qwen3_grail.yaml). The paper's full text was not available
to us; where it and the code differ, the code is what we follow.

    L     = -sum_{a in answer} log softmax(logits_a / T)[y_a]     the answer's negative log-likelihood at the
                                                                   sampling temperature T (code: logits / temperature)
    g_t   = dL / d e_t                                             gradient at the input embedding e_t (the
                                                                   embeddings are the only leaf: no parameter .grad)
    s_t   = || g_t * e_t ||_2                                      saliency: L2 norm of gradient times input
    l_t   = log(s_t + 1e-8)
    z_t   = (l_t - mean l) / sqrt(var l + 1e-8)                    per completion, population statistics
    w_t   = clip(w_mean + sigma_w * z_t, w_min, w_max)             w_mean = 1, sigma_w = 0.5, [w_min, w_max] = [0.5, 5]
            (code: grail_mean 1.0, grail_std 0.5, grail_w_min 0.5, grail_w_max 5.0 in the README and config)
    answer tokens: w = w_max, on every completion with an answer (code: weights[content_mask] = grail_w_max, set
            after the rollout-symmetry fallback, so correct completions get it too); lead-in and later tokens: 1
    only completions with a non-positive advantage are reweighted (config: grail_rollout_symmetry "wrong"); the
            others, and completions without an answer, keep w = 1 on their reasoning
    no renormalisation: unlike Bi-Level reshaping, the advantage mass of a completion changes

Where oarl differs from the code, and why:
- the answer is oarl's own parse of the final answer (the last statement, in any style: \\boxed{}, ####, "The
  answer is"); the code takes the first complete \\boxed{...} span, marker and braces included, and leaves a
  completion without one unweighted (every completion of the embedded arithmetic task would be).
- the statistics of l are taken over the reasoning tokens (before the final-answer statement), and only those are
  reweighted; the code takes them over every completion token, among them the last answer token and everything
  after it, whose saliency is exactly 0 (l = log 1e-8 = -18.4): outliers that lower the mean and widen the spread.
- the weights are computed once per generation batch, with the policy that generated it, like the other
  estimators; the code recomputes them in each loss call (the same when num_iterations is 1).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .bilevel import nonfinite_rows
from .config import check_grail
from .outcome import final_outcome, outcome_keep
from .probe import align_to_end, eval_mode, forward_logits

LOG_EPS = 1e-8  # inside the log of the saliency (GRAIL's code)
VAR_EPS = 1e-8  # inside the square root of the variance (GRAIL's code)


def grail_saliency(
    model,
    input_ids: Tensor,
    attention_mask: Tensor,
    reasoning_mask: Tensor,
    answer_mask: Tensor,
    temperature: float = 1.0,
) -> Tensor:
    """[B, L] float32 saliencies ||dL/de_t * e_t||_2 of the reasoning tokens of probes input_ids [B, L] (0
    elsewhere), L the answer's negative log-likelihood at `temperature`. One forward and one backward; works
    inside torch.no_grad() / inference_mode(), and with the model in train mode (dropout is off during the call)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    with torch.inference_mode(False):
        tensors = [
            t.clone() if t.is_inference() else t for t in (input_ids, attention_mask, reasoning_mask, answer_mask)
        ]
        probe = align_to_end(*tensors, through_answer=True)
        saliency = torch.zeros(probe.input_ids.shape, dtype=torch.float32, device=input_ids.device)  # [B, L']
        if not probe.reasoning.any():
            return probe.to_original(saliency)
        keep = outcome_keep(probe.n_answer[probe.reasoning.any(1)])
        with eval_mode(model), torch.enable_grad():
            with torch.no_grad():
                embeds = model.get_input_embeddings()(probe.input_ids)  # [B, L', D]
            embeds.requires_grad_(True)
            logits = forward_logits(model, probe.attention_mask, keep, inputs_embeds=embeds) / temperature
            mean_logp = final_outcome(logits, probe.input_ids, probe.n_answer, "answer_joint")  # [B]
            nll = -(mean_logp * probe.n_answer).sum()  # rows do not interact: each gets its own gradient
            (grad,) = torch.autograd.grad(nll, [embeds])  # [B, L', D]
        dtype = torch.promote_types(grad.dtype, torch.float32)
        saliency = ((grad.to(dtype) * embeds.detach().to(dtype)).norm(dim=-1) * probe.reasoning).float()
        return probe.to_original(saliency)


def grail_weights(
    saliency: Tensor,
    mask: Tensor,
    answer_mask: Tensor | None = None,
    scale: float = 0.5,
    w_min: float = 0.5,
    w_max: float = 5.0,
) -> Tensor:
    """[B, T] weights from saliencies [B, T] over the tokens of mask [B, T]: clip(1 + scale * z, w_min, w_max),
    z the z-score of log(saliency + 1e-8) within the row's masked tokens; 1 elsewhere and in rows with a NaN or
    inf saliency; w_max on the tokens of answer_mask [B, T] (optional)."""
    check_grail(scale, w_min, w_max)
    mask = mask.bool() & ~nonfinite_rows(saliency, mask)[:, None]
    dtype = torch.promote_types(saliency.dtype, torch.float32)
    log_s = torch.log(
        torch.where(mask, saliency.to(dtype), torch.ones((), dtype=dtype, device=saliency.device)) + LOG_EPS
    )
    count = mask.sum(1, keepdim=True).clamp_min(1)  # [B, 1]
    mean = (log_s * mask).sum(1, keepdim=True) / count
    var = (((log_s - mean) ** 2) * mask).sum(1, keepdim=True) / count
    z = (log_s - mean) / torch.sqrt(var + VAR_EPS)  # [B, T]
    weights = torch.where(mask, (1.0 + scale * z).clamp(w_min, w_max), torch.ones_like(z))
    if answer_mask is not None:
        weights = torch.where(answer_mask.bool(), torch.full_like(weights, w_max), weights)
    return weights
