"""The embedded arithmetic task: determinism, disjoint splits, verifier, flawed-demo ground truth."""

import re

import pytest

from oarl.answer import find_final_answer
from oarl.data.arithmetic import (
    DEFAULT_REGIME,
    DEFAULT_TASK,
    ArithmeticTask,
    as_dataset,
    demos,
    is_correct,
    problems,
    reward,
    solve,
    solve_tree,
)

STEP = re.compile(r"(-?\d+)([+\-*])(-?\d+)=(-?\d+)\.")
TREE = ArithmeticTask(form="tree", steps=(2, 2), hard_steps=(3, 3))
CHAIN = ArithmeticTask(form="chain", steps=(2, 3), hard_steps=(4, 5))


def test_generator_is_deterministic_and_seeded():
    assert problems("train", 50, seed=3) == problems("train", 50, seed=3)
    assert demos(50, seed=3) == demos(50, seed=3)
    assert problems("test", 50, seed=3) != problems("test", 50, seed=4)


def test_default_task_is_the_tree_form():
    assert DEFAULT_TASK == TREE


@pytest.mark.parametrize("task", [TREE, CHAIN], ids=["tree", "chain"])
def test_splits_are_disjoint_and_step_counts(task):
    train = problems("train", 3000, seed=0, task=task)
    test = problems("test", 300, seed=0, task=task)
    hard = problems("hard", 100, seed=0, task=task)
    train_exprs = {r["expression"] for r in train} | {r["expression"] for r in demos(2000, seed=0, task=task)}
    assert not train_exprs & {r["expression"] for r in test}
    assert not train_exprs & {r["expression"] for r in hard}
    assert len({r["expression"] for r in test}) == len(test)  # distinct problems
    lo, hi = task.steps
    assert {r["num_steps"] for r in train} == {r["num_steps"] for r in test} == set(range(lo, hi + 1))
    assert min(r["num_steps"] for r in hard) > hi


@pytest.mark.parametrize("task", [TREE, CHAIN], ids=["tree", "chain"])
def test_solutions_are_correct_and_parsable(task):
    for r in problems("test", 200, seed=1, task=task) + problems("hard", 50, seed=1, task=task):
        assert r["prompt"] == f"Q: {r['expression']}=?\nA: "
        assert int(r["answer"]) == eval(r["expression"])  # Python has the same precedence
        assert find_final_answer(r["solution"]).text == r["answer"]
        assert r["solution"].endswith(f"The answer is {r['answer']}.")
        assert is_correct(r["solution"], r["answer"])
        for a, op, b, c in STEP.findall(r["solution"]):
            assert eval(f"{a}{op}{b}") == int(c)
            assert 0 <= int(c) <= DEFAULT_TASK.max_value


def test_verifier():
    assert is_correct("2+3=5. The answer is 5.", "5")
    assert is_correct("The answer is 5.", 5)
    assert not is_correct("2+3=5. The answer is 6.", "5")
    assert not is_correct("2+3=5. The answer is", "5")  # truncated
    assert not is_correct("2+3=5.", "5")  # no final answer
    assert not is_correct("", "5")
    assert is_correct("The answer is 1. The answer is 5.", "5")  # the last statement counts
    assert reward(["The answer is 5.", "The answer is 4.", "x"], answer=["5", "5", "5"]) == [1.0, 0.0, 0.0]


@pytest.mark.parametrize("task", [TREE, CHAIN], ids=["tree", "chain"])
def test_flawed_demos_ground_truth(task):
    rows = demos(2000, seed=0, task=task)
    frac = sum(r["flawed"] for r in rows) / len(rows)
    assert abs(frac - DEFAULT_TASK.flaw_rate) < 0.05
    for r in rows:
        assert r["completion"].endswith(".") and find_final_answer(r["completion"]) is not None
        if not r["flawed"]:
            assert r["error_span"] is None and r["error_step"] is None
            assert r["completion"] == r["solution"] and is_correct(r["completion"], r["answer"])
            continue
        # The stated answer is wrong, and the recorded span is the FIRST wrong result.
        assert not is_correct(r["completion"], r["answer"])
        s, e = r["error_span"]
        steps = list(STEP.finditer(r["completion"]))
        first_wrong = next(m for m in steps if eval(f"{m.group(1)}{m.group(2)}{m.group(3)}") != int(m.group(4)))
        assert (s, e) == first_wrong.span(4)
        assert steps.index(first_wrong) == r["error_step"]
        # Everything before the error agrees with the correct solution; the error then propagates.
        assert r["completion"][:s] == r["solution"][:s]
        assert r["completion"][s:e] != r["solution"][s:e]


def test_flaw_propagates_and_precedence():
    rows = problems("test", 20, seed=0, task=ArithmeticTask(form="chain", ops="+-*", max_value=99))
    assert any("*" in r["expression"] for r in rows)
    assert all(int(r["answer"]) == eval(r["expression"]) and is_correct(r["solution"], r["answer"]) for r in rows)
    steps, ans = solve([7, 5, 3, 2], ["+", "*", "-"], flaw=(0, 1))
    assert [s.result for s in steps] == [16, 23, 21] and ans == 21
    steps, ans = solve([7, 5, 3, 2], ["+", "*", "-"])
    assert [s.text() for s in steps] == ["5*3=15.", "7+15=22.", "22-2=20."] and ans == 20


def test_task_options_and_dataset():
    task = ArithmeticTask(form="chain", ops="+-", steps=(1, 1), hard_steps=(2, 2), max_value=99)
    rows = problems("test", 5, seed=0, task=task)
    assert all("*" not in r["expression"] and r["num_steps"] == 1 for r in rows)
    ds = as_dataset(demos(10, seed=0))
    assert {"prompt", "answer", "completion", "flawed", "error_span"} <= set(ds.column_names)
    with pytest.raises(ValueError):
        problems("dev", 3)


def test_default_regime_fields():
    kw = DEFAULT_REGIME.grpo_kwargs()
    assert kw["per_device_train_batch_size"] % kw["num_generations"] == 0
    cfg = DEFAULT_REGIME.warmstart_config()
    assert cfg["task"]["flaw_rate"] == DEFAULT_TASK.flaw_rate and cfg["steps"] == DEFAULT_REGIME.sft_steps


def test_tree_form_writes_the_pairs_and_combines_them_in_the_answer():
    steps, ans = solve_tree([6, 2, 1, 4], ["+", "+", "-"])
    assert [s.text() for s in steps] == ["6+2=8.", "1+4=5."] and ans == 3
    steps, ans = solve_tree([6, 2, 1, 4], ["+", "+", "-"], flaw=(1, 1))
    assert [s.result for s in steps] == [8, 6] and ans == 2
    test, hard = problems("test", 200, seed=1, task=TREE), problems("hard", 50, seed=1, task=TREE)
    train = problems("train", 2000, seed=1, task=TREE)
    assert not {r["expression"] for r in train} & {r["expression"] for r in test + hard}
    for r in test + hard:
        pairs = re.findall(r"\((\d[+-]\d)\)", r["expression"])
        assert len(pairs) == r["num_steps"] == (2 if r in test else 3)
        assert int(r["answer"]) == eval(r["expression"]) and is_correct(r["solution"], r["answer"])
        written = STEP.findall(r["solution"])
        assert [f"{a}{op}{b}" for a, op, b, _ in written] == pairs  # one written step per pair, nothing else
        values = [int(c) for *_, c in written]
        acc = values[0]
        for op, v in zip(re.findall(r"\)([+-])\(", r["expression"]), values[1:]):
            acc = acc + v if op == "+" else acc - v
            assert 0 <= acc <= TREE.max_value  # the head computation stays in range too
        assert all(0 <= v <= TREE.max_value for v in values)


def test_tree_form_flawed_demos():
    rows = demos(1000, seed=0, task=TREE)
    assert abs(sum(r["flawed"] for r in rows) / len(rows) - TREE.flaw_rate) < 0.05
    for r in rows:
        if r["flawed"]:
            assert not is_correct(r["completion"], r["answer"])
            s, e = r["error_span"]
            a, op, b = r["completion"][s - 4 : s - 1].partition(r["completion"][s - 3])
            assert eval(f"{a}{op}{b}") != int(r["completion"][s:e])


def test_task_form_validation():
    with pytest.raises(ValueError, match="form must be one of"):
        ArithmeticTask(form="graph")
    with pytest.raises(ValueError, match="'\\+' and '-' only"):
        ArithmeticTask(form="tree", ops="+*")
