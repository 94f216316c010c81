"""Rollout credit outside a trainer: a sampler from a Hugging Face model's ``generate`` and a scorer from gold
answers (the sampler / scorer interface of ``oarl.credit.rollout``). ``OARTrainer`` builds its own from TRL's
generation path and the run's reward functions."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from oarl.rewards import accuracy


def generate_sampler(
    model,
    tokenizer,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 256,
):
    """sampler(prefixes, K): K continuations of each token-id prefix by ``model.generate`` (left padded,
    batch_size sequences per call), sampled at `temperature` (0: greedy), cut after the first end-of-sequence
    token. Seeded per call and batch, without touching the caller's random state."""
    eos = model.generation_config.eos_token_id if model.generation_config is not None else None
    eos = set([eos] if isinstance(eos, int) else list(eos or [])) | (
        {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos, default=0)
    device = next(model.parameters()).device
    calls = [0]

    def sampler(prefixes: list[list[int]], k: int) -> list[list[list[int]]]:
        sequences = [p for p in prefixes for _ in range(k)]
        out: list[list[int]] = []
        was_training = model.training
        model.eval()
        try:
            for start in range(0, len(sequences), batch_size):
                chunk = sequences[start : start + batch_size]
                width = max(len(s) for s in chunk)
                ids = torch.tensor([[pad] * (width - len(s)) + s for s in chunk], device=device)
                mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in chunk], device=device)
                kwargs = dict(
                    do_sample=temperature > 0,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=pad,
                    eos_token_id=sorted(eos) or None,
                )
                if temperature > 0:
                    kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
                    torch.manual_seed(seed + 1_000_003 * calls[0] + start)
                    new = model.generate(input_ids=ids, attention_mask=mask, **kwargs)[:, width:].tolist()
                for row in new:
                    end = next((j + 1 for j, t in enumerate(row) if t in eos), len(row))
                    out.append(row[:end])
        finally:
            model.train(was_training)
        calls[0] += 1
        return [out[i * k : (i + 1) * k] for i in range(len(prefixes))]

    return sampler


def gold_scorer(tokenizer, golds: Sequence[str | None]):
    """scorer(rows, completions): 1.0 when the completion's final answer verifies against golds[row]
    (``oarl.rewards.accuracy``, math-verify), 0.0 otherwise, None (unscorable) without a gold answer."""

    def scorer(rows: list[int], completions: list[list[int]]) -> list[float | None]:
        texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
        return accuracy(texts, [golds[r] for r in rows])

    return scorer
