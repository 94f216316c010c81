"""OAR-G: importance from one noisy forward and one backward (gradient x input at the embeddings).

Gaussian noise (std sigma) is added to the input embeddings e of the reasoning tokens only (at zero noise
the divergence is at its minimum and its gradient vanishes), then

    J   = sum_rows KL(p_final_clean || p_final_noisy)     (or phi_clean - phi_noisy for answer_joint)
    g   = dJ / d(embeddings)                              [B, L, D]
    I_t = | sum_d g_{t,d} * e_{t,d} |

Rows do not interact in the forward pass, so summing J over rows gives each row its own gradient. The
gradient is taken with torch.autograd.grad w.r.t. the embeddings only: no parameter's .grad changes.
The noise is drawn as one [M, D] block for the M reasoning tokens in row-major order, so that it does not
depend on how the batch is padded.

At small sigma the gradient is the Fisher matrix of the outcome times the noise (g = F delta), so I_t of one
draw is |N(0, sigma^2 |(F e)_t|^2)|: a half-normal whose spread equals its mean. `noise_samples` = K > 1
averages I_t over K independent draws (the rows are repeated K times in the same pass: K x the memory and
compute of one draw, still one forward and one backward), which divides that spread by sqrt(K).

Memory: the clean forward keeps nothing (no grad). The noisy forward keeps every activation for the backward
unless `activation_checkpointing` is on: then each block keeps only its input and recomputes the rest in the
backward, as a training step with gradient checkpointing does (one more block forward per block). Mixed
precision is the caller's: under torch.autocast the passes run in its dtype, and the importances are float32.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.profiler import record_function

from .config import OUTCOMES, check_choice, check_noise_samples, check_noise_std
from .outcome import final_outcome, outcome_divergence, outcome_keep
from .probe import activation_checkpointing as checkpointed
from .probe import align_to_end, eval_mode, forward_logits


def gradient_importance(
    model,
    input_ids: Tensor,
    attention_mask: Tensor,
    reasoning_mask: Tensor,
    answer_mask: Tensor,
    mode: str = "answer_mean",
    noise_std: float = 1e-3,
    generator: torch.Generator | None = None,
    noise_samples: int = 1,
    activation_checkpointing: bool = False,
) -> Tensor:
    """[B, L] float32 importances of the reasoning tokens of probes input_ids [B, L] (0 elsewhere).

    Works inside torch.no_grad() or torch.inference_mode(), with the model in train mode (dropout is off
    during the call). activation_checkpointing: recompute the blocks' activations in the backward instead of
    keeping them (see probe.activation_checkpointing); same result, less memory, about one more forward.
    """
    check_choice("mode", mode, OUTCOMES)
    check_noise_std(noise_std)
    check_noise_samples(noise_samples)
    with torch.inference_mode(False):
        # tensors made under inference_mode cannot enter autograd: work on ordinary copies
        tensors = (input_ids, attention_mask, reasoning_mask, answer_mask)
        tensors = (t.clone() if t.is_inference() else t for t in tensors)
        if noise_samples == 1:
            return _gradient_importance(model, *tensors, mode, noise_std, generator, activation_checkpointing)
        # K draws per row: the rows repeated K times, draw k of row b at row b * K + k
        repeated = (t.repeat_interleave(noise_samples, dim=0) for t in tensors)
        importance = _gradient_importance(model, *repeated, mode, noise_std, generator, activation_checkpointing)
        return importance.view(input_ids.shape[0], noise_samples, -1).mean(1)  # [B, L]


def _gradient_importance(
    model, input_ids, attention_mask, reasoning_mask, answer_mask, mode, noise_std, generator, activation_checkpointing
):
    probe = align_to_end(input_ids, attention_mask, reasoning_mask, answer_mask, through_answer=mode != "last")
    importance = torch.zeros(probe.input_ids.shape, dtype=torch.float32, device=input_ids.device)  # [B, L']
    where = probe.reasoning.nonzero()  # [M, 2]
    if where.shape[0] == 0:
        return probe.to_original(importance)

    keep = outcome_keep(probe.n_answer[probe.reasoning.any(1)])
    with eval_mode(model), torch.enable_grad():
        with torch.no_grad(), record_function("oarl.gradient.clean_forward"):
            # detached: transformers' enable_input_require_grads (on with its checkpointing) marks the output as a leaf
            embeds = model.get_input_embeddings()(probe.input_ids).detach()  # [B, L', D]
            clean = final_outcome(
                forward_logits(model, probe.attention_mask, keep, inputs_embeds=embeds),
                probe.input_ids,
                probe.n_answer,
                mode,
            )  # [B, V] or [B]
            noise_device = generator.device if generator is not None else embeds.device
            noise = (
                torch.randn(
                    (where.shape[0], embeds.shape[-1]), generator=generator, device=noise_device, dtype=torch.float32
                ).to(embeds)
                * noise_std
            )  # [M, D]
            noisy = embeds.clone()
            noisy[where[:, 0], where[:, 1]] += noise
        noisy.requires_grad_(True)
        with checkpointed(model, activation_checkpointing):
            with record_function("oarl.gradient.noisy_forward"):
                perturbed = final_outcome(
                    forward_logits(model, probe.attention_mask, keep, inputs_embeds=noisy),
                    probe.input_ids,
                    probe.n_answer,
                    mode,
                )
                objective = outcome_divergence(clean, perturbed, mode, clamp=False).sum()
            with record_function("oarl.gradient.backward"):
                (grad,) = torch.autograd.grad(objective, [noisy])  # [B, L', D]; parameters' .grad untouched
    dtype = torch.promote_types(grad.dtype, torch.float32)  # the sum over d cancels: at least float32
    importance = ((grad.to(dtype) * embeds.to(dtype)).sum(-1).abs() * probe.reasoning).float()
    return probe.to_original(importance)
