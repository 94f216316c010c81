"""Rollout credit: the Monte-Carlo value of the prefix at each reasoning-step boundary, as VinePPO estimates
values instead of training a value network (Kazemnejad et al., "VinePPO", arXiv 2410.01679).

A completion y of prompt x has reasoning steps s_1 .. s_S (lines or sentences, segments.py); h_0 is x followed by
the completion tokens before s_1, h_k is h_0 followed by s_1 .. s_k. With K continuations c_1 .. c_K sampled from
the policy after a prefix h and scored by the run's reward r,

    V(h_k)   = mean_j r(h_k ⊕ c_j)                       (the continuation writes the rest, answer included)
    delta_k  = V(h_k) - V(h_{k-1})                        signed credit of step k: < 0 where the step loses reward
    I_t      = |delta_k|                                   raw importance of every token t of step k

so a step is credited by how much the outcome, re-generated from there on, changes across it: blame, where OAR
measures influence with the rest of the completion held fixed. I_t then goes through Bi-Level reshaping like
every other estimator's importances.

Cost and batching: every distinct prefix of the batch is sampled once (h_0 is shared by the completions of a
prompt whose reasoning starts at the first token), K continuations each, in ONE call of the sampler; the scorer is
called once for all continuations, each with the first batch row that asked for its prefix (rows with the same
prompt are taken to be the same problem). A completion with more than max_steps steps has its consecutive steps merged
into max_steps groups (step k of S goes to group floor(k * G / S), G = max_steps), so it costs at most
(max_steps + 1) x K continuations. With max_completion_length, a continuation is cut where the original completion's
budget ends, so that V is the value under the same length limit as training's completions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .config import check_count

# sampler(prefixes, K) -> for each prefix (token ids: prompt then partial completion), K continuations (token ids,
# an end-of-sequence token included or not: the scorer decodes them).
Sampler = Callable[[list[list[int]], int], Sequence[Sequence[Sequence[int]]]]
# scorer(rows, completions) -> one reward per completion (NaN for "unscorable"): completions[i] is the whole completion
# (partial completion ⊕ continuation, token ids) of the problem of batch row rows[i].
Scorer = Callable[[list[int], list[list[int]]], Sequence[float]]


def step_groups(steps: Tensor, max_steps: int) -> Tensor:
    """[B, T] long: group 0..G-1 of every token of steps [B, T] (step id per token, -1 outside the reasoning,
    non-decreasing along a row, as Segments.steps), -1 elsewhere. A row's S distinct steps are numbered 0..S-1 in
    order and step k goes to group floor(k * G / S), G = min(S, max_steps): consecutive steps merge, evenly."""
    check_count("max_steps", max_steps)
    valid = steps >= 0
    last = torch.where(valid, steps, -1).cummax(1).values  # the latest step id seen so far
    previous = torch.cat([torch.full_like(last[:, :1], -1), last[:, :-1]], 1)
    new = valid & (steps != previous)  # the first token of each step
    index = new.long().cumsum(1) - 1  # [B, T] dense step number
    count = new.sum(1, keepdim=True)  # [B, 1] S
    groups = count.clamp(max=max_steps)
    return torch.where(valid, index * groups // count.clamp_min(1), -1)


def rollout_importance(
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    completion_ids: Tensor,
    completion_mask: Tensor,
    steps: Tensor,
    rows: Tensor,
    sampler: Sampler,
    scorer: Scorer,
    rollouts: int = 4,
    max_steps: int = 8,
    max_completion_length: int | None = None,
) -> tuple[Tensor, Tensor]:
    """(|delta|, delta): two [B, T] float32 tensors of the step credit of every reasoning token of the rows in
    rows [N] (0 elsewhere; NaN in a row whose every continuation at some boundary was unscorable).

    prompt_ids / prompt_mask [B, P] (any padding), completion_ids / completion_mask [B, T] (right padded); steps
    [B, T] the reasoning step of each token (-1 outside the reasoning; Segments.steps, or one step per token).
    sampler and scorer are each called exactly once (with empty lists when rows is empty), so that an
    implementation spread over processes can synchronise in them. Raises ValueError when the sampler does not
    return K continuations per prefix or the scorer not one reward per completion.
    """
    check_count("rollouts", rollouts)
    batch, length = completion_ids.shape
    groups = step_groups(steps, max_steps)  # [B, T]
    cols = torch.arange(length, device=steps.device)
    prefix_of: dict[tuple, int] = {}  # (prompt ids, partial completion) -> index into `prefixes`
    prefixes: list[tuple[int, list[int], list[int]]] = []  # (row to score with, prompt ids, partial completion)
    boundaries: list[list[int]] = []  # per row of `rows`: prefix index of h_0 .. h_G
    rows_list = rows.tolist()
    for b in rows_list:  # building token lists for the sampler: Python work per row
        prompt = prompt_ids[b][prompt_mask[b].bool()].tolist()
        completion = completion_ids[b][completion_mask[b].bool()].tolist()
        group = groups[b]
        n_groups = int(group.max()) + 1
        # h_k ends before the first token of group k; h_G after the last reasoning token.
        starts = torch.where(group[None, :] == torch.arange(n_groups, device=group.device)[:, None], cols, length)
        cuts = starts.amin(1).tolist() + [int(torch.where(group >= 0, cols, -1).max()) + 1]
        indices = []
        for cut in cuts:
            key = (tuple(prompt), tuple(completion[:cut]))
            if key not in prefix_of:
                prefix_of[key] = len(prefixes)
                prefixes.append((b, prompt, completion[:cut]))
            indices.append(prefix_of[key])
        boundaries.append(indices)

    continuations = sampler([p + c for _, p, c in prefixes], rollouts)
    if len(continuations) != len(prefixes) or any(len(c) != rollouts for c in continuations):
        raise ValueError(
            f"the sampler must return {rollouts} continuations for each of the {len(prefixes)} prefixes, "
            f"got {[len(c) for c in continuations]}"
        )
    score_rows, completions = [], []
    for (b, _, partial), conts in zip(prefixes, continuations):
        for cont in conts:
            cont = list(cont)
            if max_completion_length is not None:
                cont = cont[: max(max_completion_length - len(partial), 0)]
            score_rows.append(b)
            completions.append(partial + cont)
    rewards = scorer(score_rows, completions)
    if len(rewards) != len(completions):
        raise ValueError(f"the scorer must return one reward per completion ({len(completions)}), got {len(rewards)}")
    rewards = torch.tensor(
        [float("nan") if r is None else float(r) for r in rewards], dtype=torch.float64, device=steps.device
    )
    values = rewards.view(len(prefixes), rollouts).nanmean(1)  # [U] V(h) of each distinct prefix (NaN: unscorable)

    signed = torch.zeros(batch, length, dtype=torch.float64, device=steps.device)
    for b, indices in zip(rows_list, boundaries):
        v = values[indices]  # [G + 1]
        delta = v[1:] - v[:-1]  # [G]
        group = groups[b]
        signed[b] = torch.where(group >= 0, delta[group.clamp_min(0)], torch.zeros_like(delta[:1]))
    signed = signed.float()
    return signed.abs(), signed
