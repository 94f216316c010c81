"""The word-problems task (oarl.data.word_problems) and the SmolLM2 job that `oarl train --model smollm2-135m`
picks by default: problems are right by construction, splits disjoint, the regime's settings reach the config."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oarl.credit.answer import extract_answer
from oarl.data import load_train_dataset
from oarl.data.word_problems import INSTRUCTION, SMOLLM2_REGIME, Regime, in_test_split, problems
from oarl.rewards import is_correct


def _evaluate_solution(solution: str) -> int:
    """The worked solution's arithmetic, re-done from its written equations ('a + b = c', 'a x b = c')."""
    last = None
    for a, op, b, c in re.findall(r"(\d+) ([-+x]) (\d+) = (\d+)", solution):
        a, b, c = int(a), int(b), int(c)
        assert c == (a + b if op == "+" else a - b if op == "-" else a * b), solution
        last = c
    return last


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), steps=st.integers(1, 3), ops=st.sampled_from(["+", "-", "+-", "+-*"]))
def test_problems_are_right_by_construction(seed, steps, ops):
    for row in problems("train", 5, seed=seed, steps=(steps, steps), ops=ops):
        assert row["num_steps"] == steps
        assert _evaluate_solution(row["solution"]) == int(row["answer"])
        assert 0 <= int(row["answer"]) <= 50
        assert extract_answer(row["solution"]) == row["answer"]
        assert is_correct(row["solution"], row["answer"])
        assert row["question"].endswith("have now?")


def test_splits_are_disjoint_and_seeded():
    train = problems("train", 400, seed=0)
    test = problems("test", 100, seed=0)
    assert len({r["question"] for r in test}) == 100 and all(in_test_split(r["question"]) for r in test)
    assert not any(in_test_split(r["question"]) for r in train)
    assert not {r["question"] for r in train} & {r["question"] for r in test}
    assert problems("test", 100, seed=0) == test and problems("test", 100, seed=1) != test
    with pytest.raises(ValueError, match="split"):
        problems("validation", 1)
    with pytest.raises(ValueError, match="ops"):
        problems("train", 1, ops="/")


def test_dataset_by_name_is_the_regime_task():
    ds = load_train_dataset("word-problems", size=6, seed=0)
    assert ds.column_names == ["prompt", "answer"] and len(ds) == 6
    content = ds[0]["prompt"][0]["content"]
    assert content.endswith(INSTRUCTION)
    rows = problems("train", 6, seed=0, **SMOLLM2_REGIME.task_kwargs())
    assert [r["answer"] for r in rows] == ds["answer"] and content.startswith(rows[0]["question"])


def test_regime_batches():
    kw = SMOLLM2_REGIME.grpo_kwargs()
    per_step = SMOLLM2_REGIME.prompts_per_step * SMOLLM2_REGIME.num_generations
    assert kw["per_device_train_batch_size"] * kw["gradient_accumulation_steps"] == per_step
    with pytest.raises(ValueError, match="multiple of micro_batch_size"):
        Regime(prompts_per_step=3, num_generations=3, micro_batch_size=2).grpo_kwargs()


def test_smollm2_picks_its_regime_and_flags_win():
    from oarl.train import parse_args

    train_args, config = parse_args(["--model", "smollm2-135m"])
    assert train_args.dataset == "word-problems"
    for key, value in SMOLLM2_REGIME.grpo_kwargs().items():
        got = getattr(config, key)
        assert (got.value if hasattr(got, "value") else got) == value, key
    assert config.max_completion_length <= 256  # a laptop CPU budget, not a GPU one
    _, config = parse_args(["--model", "smollm2-135m", "--learning_rate", "3e-6", "--max_steps", "2"])
    assert config.learning_rate == 3e-6 and config.max_steps == 2
    train_args, config = parse_args(["--model", "smollm2-135m", "--dataset", "gsm-symbolic"])
    assert train_args.dataset == "gsm-symbolic" and config.max_steps != SMOLLM2_REGIME.rl_steps
