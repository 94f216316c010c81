"""Rollout credit on constructed cases whose values are known: a reward that depends on one step only, and
samplers that are deterministic or seeded."""

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_credit_fixtures import pad_rows

from oarl.credit import CreditConfig, token_advantages
from oarl.credit.rollout import rollout_importance, step_groups
from oarl.models.tiny import build_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

TOK = build_tokenizer()
PROMPT = "Q: a, b, c?\nA: "
RIGHT = ["a=1.", "b=2.", "c=3."]  # the reward depends on the second step only
WRONG_B = "b=5."


def encode(text: str) -> list[int]:
    return TOK(text, add_special_tokens=False)["input_ids"]


def decode(ids) -> str:
    return TOK.decode(list(ids), skip_special_tokens=True)


def batch(completions: list[str], prompts: list[str] | None = None):
    prompts = prompts or [PROMPT] * len(completions)
    prompt_ids, prompt_mask = pad_rows([encode(p) for p in prompts], TOK.pad_token_id, "left")
    completion_ids, completion_mask = pad_rows(
        [encode(c) + [TOK.eos_token_id] for c in completions], TOK.pad_token_id, "right"
    )
    return prompt_ids, prompt_mask, completion_ids, completion_mask


def reward(text: str) -> float:
    """1 when the second written step is right: nothing else matters."""
    steps = text.split(" ")
    return float(len(steps) > 1 and steps[1] == RIGHT[1])


class Sampler:
    """Writes the steps a prefix still lacks, then the answer. The second step is right in the continuations
    whose index is even (half of them for an even K) or drawn with probability 1/2 from a seeded stream."""

    def __init__(self, seed: int | None = None):
        self.calls, self.prefixes = 0, []
        self.rng = None if seed is None else random.Random(seed)

    def __call__(self, prefixes, k):
        self.calls += 1
        self.prefixes += [decode(p) for p in prefixes]
        out = []
        for prefix in prefixes:
            written = decode(prefix).split("A: ", 1)[1]
            done = len([s for s in written.split(" ") if s.endswith(".")])
            conts = []
            for j in range(k):
                right = (j % 2 == 0) if self.rng is None else self.rng.random() < 0.5
                steps = [RIGHT[0], RIGHT[1] if right else WRONG_B, RIGHT[2]][done:]
                rest = (" " if written and not written.endswith(" ") else "") + " ".join(steps + ["The answer is 6."])
                conts.append(encode(rest.lstrip() if not written else rest) + [TOK.eos_token_id])
            out.append(conts)
        return out


def scorer_of(rows_seen: list):
    def scorer(rows, completions):
        rows_seen.append(list(rows))
        return [reward(decode(c)) for c in completions]

    return scorer


def step_values(out, b: int) -> list[float]:
    """The signed credit of each sentence of row b (tokens of a sentence share it)."""
    steps, signed = out.segments.steps[b], out.signed[b]
    values = []
    for s in range(int(steps.max()) + 1):
        v = signed[steps == s]
        assert (v == v[0]).all(), "the tokens of a step must share its credit"
        values.append(float(v[0]))
    return values


def test_the_step_the_reward_depends_on_gets_all_the_credit():
    completions = [" ".join(RIGHT) + " The answer is 6.", " ".join([RIGHT[0], WRONG_B, RIGHT[2]]) + " The answer is 9."]
    sampler, rows_seen = Sampler(), []
    out = token_advantages(
        None,
        TOK,
        *batch(completions),
        torch.tensor([1.0, -1.0]),
        CreditConfig(estimator="rollout", rollouts=4),
        sampler=sampler,
        scorer=scorer_of(rows_seen),
    )
    # V(h0) = V(after a=1.) = 1/2 (half the continuations write b=2.); after b: 1 (right) or 0 (wrong); after c: same.
    assert step_values(out, 0) == [0.0, 0.5, 0.0]
    assert step_values(out, 1) == [0.0, -0.5, 0.0]
    torch.testing.assert_close(out.importance, out.signed.abs())
    assert sampler.calls == 1 and len(rows_seen) == 1  # one batched call each
    # h0 (nothing written) and h1 ("a=1. ") are shared by both rows: 2 + 2 x 2 distinct prefixes, K = 4 each.
    assert len(sampler.prefixes) == 6 and len(rows_seen[0]) == 24
    assert sampler.prefixes[0] == PROMPT and sampler.prefixes[-1] == PROMPT + "a=1. b=5. c=3. "
    for b in range(2):  # Bi-Level on |delta|: the second step boosted, the others suppressed, mass kept
        reasoning, steps, w = out.segments.reasoning[b], out.segments.steps[b], out.weights[b]
        assert (w[steps == 1] > 1).all() and (w[(steps != 1) & reasoning] < 1).all()
        torch.testing.assert_close(w[reasoning].sum(), reasoning.sum().float())
        assert (w[~reasoning] == 1).all()
    assert out.advantages[1][out.segments.reasoning[1]].min() < -1  # the blamed step of the wrong one


def test_seeded_random_sampler_converges_to_the_true_values():
    completion = " ".join(RIGHT) + " The answer is 6."
    out = token_advantages(
        None,
        TOK,
        *batch([completion]),
        torch.tensor([1.0]),
        CreditConfig(estimator="rollout", rollouts=400),
        sampler=Sampler(seed=0),
        scorer=scorer_of([]),
    )
    first, second, third = step_values(out, 0)
    assert first == pytest.approx(0.0, abs=0.1) and third == 0.0  # V(h0) and V(h1): two estimates of 1/2
    assert second == pytest.approx(0.5, abs=0.1)  # 1 - V(h1); the standard error of V(h1) is 0.025


def test_token_steps_and_the_cap_on_steps():
    completion = " ".join(RIGHT) + " The answer is 6."
    sampler = Sampler()
    out = token_advantages(
        None,
        TOK,
        *batch([completion]),
        torch.tensor([1.0]),
        CreditConfig(estimator="rollout", span="token", max_steps=3),
        sampler=sampler,
        scorer=scorer_of([]),
    )
    reasoning = out.segments.reasoning[0]
    n = int(reasoning.sum())  # "a=1. b=2. c=3. " = 15 tokens, 5 per group
    assert n == 15 and len(sampler.prefixes) == 4  # 3 groups: 4 boundaries
    cuts = [len(p) - len(PROMPT) for p in sampler.prefixes]
    assert cuts == [0, 5, 10, 15]
    signed = out.signed[0][reasoning]
    assert signed.tolist() == [0.0] * 5 + [0.5] * 5 + [0.0] * 5  # the group holding "b=2." (chars 5-9)


def test_continuations_are_cut_at_the_original_budget():
    completion = " ".join(RIGHT) + " The answer is 6."
    seen = []

    def long_sampler(prefixes, k):
        return [[encode(" b=2. c=3. The answer is 6." * 3)] * k for _ in prefixes]

    def scorer(rows, completions):
        seen.extend(len(c) for c in completions)
        return [1.0] * len(completions)

    budget = len(encode(completion)) + 1
    token_advantages(
        None,
        TOK,
        *batch([completion]),
        torch.tensor([1.0]),
        CreditConfig(estimator="rollout"),
        sampler=long_sampler,
        scorer=scorer,
        max_completion_length=budget,
    )
    assert seen and max(seen) == budget


def test_called_once_even_with_nothing_to_do_and_errors_are_clear():
    sampler, rows_seen = Sampler(), []
    completions = [" ".join(RIGHT) + " The answer is 6."] * 2
    out = token_advantages(
        None,
        TOK,
        *batch(completions),
        torch.zeros(2),
        CreditConfig(estimator="rollout"),
        sampler=sampler,
        scorer=scorer_of(rows_seen),
    )
    assert sampler.calls == 1 and rows_seen == [[]] and (out.weights == 1).all()
    with pytest.raises(ValueError, match="needs a sampler and a scorer"):
        token_advantages(None, TOK, *batch(completions), torch.ones(2), CreditConfig(estimator="rollout"))
    with pytest.raises(ValueError, match="must return 4 continuations"):
        token_advantages(
            None,
            TOK,
            *batch(completions),
            torch.ones(2),
            CreditConfig(estimator="rollout"),
            sampler=lambda p, k: [[[1]]] * len(p),
            scorer=scorer_of([]),
        )
    with pytest.raises(ValueError, match="one reward per completion"):
        token_advantages(
            None,
            TOK,
            *batch(completions),
            torch.ones(2),
            CreditConfig(estimator="rollout"),
            sampler=Sampler(),
            scorer=lambda rows, comps: [1.0],
        )


def test_unscorable_rows_fall_back_to_uniform():
    completions = [" ".join(RIGHT) + " The answer is 6."]
    out = token_advantages(
        None,
        TOK,
        *batch(completions),
        torch.ones(1),
        CreditConfig(estimator="rollout"),
        sampler=Sampler(),
        scorer=lambda rows, comps: [None] * len(comps),
    )
    assert out.stats["nonfinite_frac"] == 1.0 and (out.weights == 1).all()


def test_rollout_importance_other_layouts():
    """Right-padded prompts and a row left out: the same values, zeros for the row not asked for."""
    completions = [" ".join(RIGHT) + " The answer is 6.", "a=1. The answer is 1."]
    prompt_ids, prompt_mask, completion_ids, completion_mask = batch(completions, [PROMPT, "Q: a?\nA: "])
    right_ids, right_mask = pad_rows([encode(p) for p in (PROMPT, "Q: a?\nA: ")], TOK.pad_token_id, "right")
    steps = torch.full_like(completion_ids, -1)
    steps[0, :15] = torch.arange(15) // 5
    for ids, mask in ((prompt_ids, prompt_mask), (right_ids, right_mask)):
        magnitude, signed = rollout_importance(
            ids, mask, completion_ids, completion_mask, steps, torch.tensor([0]), Sampler(), scorer_of([]), rollouts=2
        )
        assert signed[0, :15].tolist() == [0.0] * 5 + [0.5] * 5 + [0.0] * 5
        assert (signed[1] == 0).all() and torch.equal(magnitude, signed.abs())


def test_step_groups_by_hand():
    steps = torch.tensor([[0, 0, 1, 1, 2, 4, 4, -1], [-1, 3, 3, 3, 7, -1, -1, -1]])
    assert step_groups(steps, 2).tolist() == [[0, 0, 0, 0, 1, 1, 1, -1], [-1, 0, 0, 0, 1, -1, -1, -1]]
    assert step_groups(steps, 8).tolist() == [[0, 0, 1, 1, 2, 3, 3, -1], [-1, 0, 0, 0, 1, -1, -1, -1]]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=1, max_size=12), st.integers(1, 6))
def test_step_groups_merge_consecutive_steps_evenly(sizes, max_steps):
    steps = torch.tensor([[s for s, n in enumerate(sizes) for _ in range(n)] + [-1]])
    groups = step_groups(steps, max_steps)[0]
    assert groups[-1] == -1
    groups = groups[:-1]
    expected = min(len(sizes), max_steps)
    assert groups.unique().tolist() == list(range(expected))  # every group used, numbered in order
    assert (groups[1:] >= groups[:-1]).all()  # consecutive
    per_group = [len({s for s, g in zip(steps[0].tolist(), groups.tolist()) if g == k}) for k in range(expected)]
    assert max(per_group) - min(per_group) <= 1  # as equal a number of steps as possible
    first_of_step = {s: g for s, g in zip(steps[0].tolist(), groups.tolist())}
    assert all(g == first_of_step[s] for s, g in zip(steps[0].tolist(), groups.tolist()))  # a step is never split
