"""The embedded arithmetic task: integer arithmetic with a chain-of-thought answer, in two forms.

``tree`` (the default): bracketed pairs; the solution writes one step per pair and the final-answer
statement (parsed by :func:`oarl.answer.find_final_answer`) combines the written results in the head::

    prompt:      "Q: (6+2)-(1+4)=?\\nA: "
    completion:  "6+2=8. 1+4=5. The answer is 3."                   (the trainer appends EOS)

``chain``: one written step per operation, evaluated with the usual precedence (every ``*`` first, left to
right, then ``+``/``-`` left to right); the answer restates the last written result::

    prompt:      "Q: 7+5*3-2=?\\nA: "
    completion:  "5*3=15. 7+15=22. 22-2=20. The answer is 20."

Why the default is ``tree``: OAR credits a token by how much it moves the model's answer with the rest of
the completion held fixed. In a chain the answer copies the last written result, so an earlier result
moves it hardly at all, even when it is the error that made the answer wrong; in ``tree`` every written
result feeds the answer directly, so the tokens that decide the answer are the ones OAR can see
(experiments/regime/README.md, section 4, measures both).

Every value of a correct solution (written results and, for ``tree``, the head computation) lies in
[0, max_value]. The default task (:data:`DEFAULT_TASK`) is the one a 1M-parameter model learns within the
CPU budget: ``+`` and ``-`` only, operands 1..9, every value in 0..9 (so each result is exactly one
character token), 2 pairs for train/test and 3 for hard, e.g. ``Q: (7+2)-(5-3)=?`` ->
``7+2=9. 5-3=2. The answer is 7.`` (``*``, two-digit values and the chain form are options; a 1M model
learns ``*`` and two-digit values several times slower, see experiments/regime/README.md).

Splits are disjoint by construction: a problem belongs to the test pool when a stable hash of its
expression falls in the test bucket (``test_fraction`` of all expressions), and ``train`` only ever draws
expressions outside that pool. ``test`` has the same step counts as ``train``; ``hard`` has more steps
(``hard_steps``) than the warm-up saw, and also draws from the test pool.

Flawed demonstrations (``demos``): a fraction ``flaw_rate`` of the supervised warm-up demonstrations
carries ONE wrong written result (off by a small amount) that propagates to the stated answer. The gold
``answer`` field is still the true answer; ``error_span`` is the character span, in the completion, of the
first wrong result (the pivotal tokens), ``error_step`` its step index.

The default regime of the embedded job (task, warm start, RL and evaluation sizes) is
:data:`DEFAULT_REGIME`; its numbers are measured in ``experiments/regime/README.md``.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field, replace

from datasets import Dataset

from oarl.answer import extract_answer
from oarl.data.regime import Regime

PROMPT_TEMPLATE = "Q: {expr}=?\nA: "
FORMS = ("chain", "tree")
ANSWER_TEMPLATE = "The answer is {answer}."


@dataclass(frozen=True)
class ArithmeticTask:
    """What problems look like. Everything downstream (splits, demos) is a pure function of it and a seed."""

    steps: tuple[int, int] = field(
        default=(2, 2), metadata={"help": "Min and max steps per train/test problem (operations, or pairs for 'tree')."}
    )
    hard_steps: tuple[int, int] = field(default=(3, 3), metadata={"help": "Min and max steps of the hard split."})
    ops: str = field(default="+-", metadata={"help": "Operators to draw from (subset of '+-*')."})
    max_operand: int = field(default=9, metadata={"help": "Operands are drawn from 1..max_operand."})
    max_value: int = field(
        default=9, metadata={"help": "Every correct intermediate result lies in [0, max_value] (9: one token each)."}
    )
    test_fraction: float = field(default=0.1, metadata={"help": "Fraction of expressions reserved for test/hard."})
    flaw_rate: float = field(default=0.3, metadata={"help": "Fraction of warm-up demos with one wrong step."})
    max_error: int = field(default=3, metadata={"help": "A flawed step is off by 1..max_error."})
    form: str = field(
        default="tree",
        metadata={
            "help": "'chain': one written step per operation, the answer copies the last result. 'tree': "
            "bracketed pairs '(a+b)-(c+d)', one written step per pair, the answer combines the written "
            "results in the head (steps / hard_steps then count pairs)."
        },
    )

    def __post_init__(self):
        if self.form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {self.form!r}")
        if self.form == "tree" and "*" in self.ops:
            raise ValueError("form 'tree' takes the operators '+' and '-' only")


@dataclass(frozen=True)
class Step:
    left: int
    op: str
    right: int
    result: int  # as written in the solution (wrong for the flawed step)

    def text(self) -> str:
        return f"{self.left}{self.op}{self.right}={self.result}."


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def solve(operands: list[int], ops: list[str], flaw: tuple[int, int] | None = None) -> tuple[list[Step], int]:
    """The step-by-step solution of ``operands[0] ops[0] operands[1] ...`` and its (stated) answer.

    ``flaw = (step_index, delta)`` adds ``delta`` to the result written at that step; later steps use the
    wrong value, so the error propagates to the stated answer.
    """
    vals, ops = list(operands), list(ops)
    steps: list[Step] = []

    def step(a: int, op: str, b: int) -> int:
        c = _apply(a, op, b)
        if flaw is not None and flaw[0] == len(steps):
            c += flaw[1]
        steps.append(Step(a, op, b, c))
        return c

    while "*" in ops:  # multiplications first, left to right
        i = ops.index("*")
        vals[i : i + 2] = [step(vals[i], "*", vals[i + 1])]
        del ops[i]
    acc = vals[0]
    for op, b in zip(ops, vals[1:]):
        acc = step(acc, op, b)
    return steps, acc


def solve_tree(operands: list[int], ops: list[str], flaw: tuple[int, int] | None = None) -> tuple[list[Step], int]:
    """The solution of the pairs ``(operands[0] ops[0] operands[1]) ops[k] (operands[2] ops[1] operands[3]) ...``
    (k pairs: ``ops[:k]`` inside the pairs, ``ops[k:]`` between them): one written step per pair, and the
    answer combines the written results left to right without writing that step. ``flaw`` as in :func:`solve`
    (the step index is a pair's); the wrong result propagates to the answer."""
    k = len(operands) // 2
    steps = []
    for i in range(k):
        c = _apply(operands[2 * i], ops[i], operands[2 * i + 1])
        if flaw is not None and flaw[0] == i:
            c += flaw[1]
        steps.append(Step(operands[2 * i], ops[i], operands[2 * i + 1], c))
    return steps, ([steps[0].result] + _tree_partials(steps, ops))[-1]


def _tree_partials(steps: list[Step], ops: list[str]) -> list[int]:
    """The values the answer's head computation passes through (left to right)."""
    k = len(steps)
    acc, out = steps[0].result, []
    for op, s in zip(ops[k:], steps[1:]):
        acc = _apply(acc, op, s.result)
        out.append(acc)
    return out


def _solve(task: ArithmeticTask, operands: list[int], ops: list[str], flaw=None) -> tuple[list[Step], int]:
    return (solve_tree if task.form == "tree" else solve)(operands, ops, flaw)


def expression(operands: list[int], ops: list[str], form: str = "chain") -> str:
    if form == "tree":
        k = len(operands) // 2
        pairs = [f"({operands[2 * i]}{ops[i]}{operands[2 * i + 1]})" for i in range(k)]
        return pairs[0] + "".join(op + p for op, p in zip(ops[k:], pairs[1:]))
    return "".join(f"{a}{op}" for a, op in zip(operands, ops)) + str(operands[-1])


def format_solution(steps: list[Step], answer: int) -> tuple[str, list[tuple[int, int]]]:
    """The completion text and, per step, the character span of its written result."""
    parts, spans, pos = [], [], 0
    for s in steps:
        t = s.text()
        start = pos + t.index("=") + 1
        spans.append((start, start + len(str(s.result))))
        parts.append(t)
        pos += len(t) + 1  # the joining space
    text = " ".join(parts + [ANSWER_TEMPLATE.format(answer=answer)])
    return text, spans


def _in_test_pool(expr: str, task: ArithmeticTask) -> bool:
    h = int.from_bytes(hashlib.blake2b(expr.encode(), digest_size=8).digest(), "big")
    return (h % 1_000_003) < task.test_fraction * 1_000_003


def _valid(steps: list[Step], task: ArithmeticTask, ops: list[str] | None = None) -> bool:
    values = [s.result for s in steps] + (_tree_partials(steps, ops) if task.form == "tree" else [])
    return all(0 <= v <= task.max_value for v in values)


def _chain_in_range(operands: list[int], ops: list[str], max_value: int) -> bool:
    acc = operands[0]
    for op, b in zip(ops, operands[1:]):
        acc = acc + b if op == "+" else acc - b
        if not 0 <= acc <= max_value:
            return False
    return True


def _sample_problem(rng: random.Random, task: ArithmeticTask, steps: tuple[int, int]):
    tree = task.form == "tree"
    while True:
        n = rng.randint(*steps)
        operands = [rng.randint(1, task.max_operand) for _ in range(2 * n if tree else n + 1)]
        ops = [rng.choice(task.ops) for _ in range(2 * n - 1 if tree else n)]
        if not tree and "*" not in ops and not _chain_in_range(operands, ops, task.max_value):
            continue  # fast rejection (same draws, same result as the full check below)
        sol, answer = _solve(task, operands, ops)
        if _valid(sol, task, ops):
            return operands, ops, sol, answer


def _problems(task: ArithmeticTask, n: int, seed: int, split: str, unique: bool) -> list[dict]:
    """``n`` problems of ``split`` ('train' | 'test' | 'hard'), from a stream seeded by (seed, split)."""
    rng = random.Random(f"oarl-arithmetic/{split}/{seed}")
    steps = task.hard_steps if split == "hard" else task.steps
    want_test_pool = split != "train"
    out, seen = [], set()
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 200 * n + 10_000:
            raise ValueError(f"cannot draw {n} distinct {split!r} problems from {task}; lower n or widen the task")
        operands, ops, sol, answer = _sample_problem(rng, task, steps)
        expr = expression(operands, ops, task.form)
        if _in_test_pool(expr, task) != want_test_pool or (unique and expr in seen):
            continue
        seen.add(expr)
        completion, _ = format_solution(sol, answer)
        out.append(
            {
                "prompt": PROMPT_TEMPLATE.format(expr=expr),
                "answer": str(answer),
                "expression": expr,
                "num_steps": len(sol),
                "solution": completion,  # the correct chain of thought (reference only)
                "_operands": operands,
                "_ops": ops,
            }
        )
    return out


def _public(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]


def problems(
    split: str, n: int, seed: int = 0, task: ArithmeticTask | None = None, unique: bool | None = None
) -> list[dict]:
    """``n`` problems of a split as dicts with ``prompt``, ``answer`` (gold, str), ``expression``,
    ``num_steps``, ``solution``. ``test``/``hard`` problems are distinct within the split (``unique``
    defaults to True for them, False for ``train``, which is a stream of draws)."""
    if split not in ("train", "test", "hard"):
        raise ValueError(f"unknown split {split!r}; choose train, test or hard")
    task = task or DEFAULT_TASK
    unique = split != "train" if unique is None else unique
    return _public(_problems(task, n, seed, split, unique))


def demos(n: int, seed: int = 0, task: ArithmeticTask | None = None) -> list[dict]:
    """``n`` warm-up demonstrations from the train split: the problem fields plus ``completion`` (the
    demonstrated chain of thought, without EOS), ``flawed`` (bool), ``error_step`` (int or None) and
    ``error_span`` ((start, end) characters of the first wrong result in ``completion``, or None).
    ``answer`` stays the true answer even when the demo states a wrong one."""
    task = task or DEFAULT_TASK
    rng = random.Random(f"oarl-arithmetic/flaws/{seed}")
    out = []
    for row in _problems(task, n, seed, "train", unique=False):
        sol, answer = _solve(task, row["_operands"], row["_ops"])
        flaw = None
        if rng.random() < task.flaw_rate:
            for _ in range(100):  # a wrong result that keeps every written value in range
                cand = (
                    rng.randrange(len(sol)),
                    rng.choice([d for d in range(-task.max_error, task.max_error + 1) if d]),
                )
                fsol, fans = _solve(task, row["_operands"], row["_ops"], flaw=cand)
                if _valid(fsol, task, row["_ops"]) and fans != answer:
                    flaw, sol, answer = cand, fsol, fans
                    break
        completion, spans = format_solution(sol, answer)
        r = {k: v for k, v in row.items() if not k.startswith("_")}
        r.update(
            completion=completion,
            flawed=flaw is not None,
            error_step=None if flaw is None else flaw[0],
            error_span=None if flaw is None else list(spans[flaw[0]]),
        )
        out.append(r)
    return out


def as_dataset(rows: list[dict]):
    """A ``datasets.Dataset`` of the rows (the format TRL trainers take)."""
    return Dataset.from_list(rows)


# ---------------------------------------------------------------------------------------------- verifier


def _to_int(text: str | None) -> int | None:
    if text is None:
        return None
    text = text.strip().rstrip(".").replace(" ", "")
    try:
        return int(text)
    except ValueError:
        return None


def is_correct(completion: str, answer: str | int) -> bool:
    """Whether the completion's own final answer (``The answer is N.``) equals the gold answer."""
    got = _to_int(extract_answer(completion))
    return got is not None and got == _to_int(str(answer))


def reward(completions: list, answer: list, **kwargs) -> list[float]:
    """TRL reward function: 1.0 for a correct final answer, else 0.0 (``answer`` is the dataset column)."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [float(is_correct(t, a)) for t, a in zip(texts, answer)]


# ---------------------------------------------------------------------------------------- default regime


# The embedded default job (oarl.jobs.EMBEDDED): task, model, warm start, RL and evaluation sizes, measured in
# experiments/regime/README.md. RL: each optimizer step takes 8 prompts x 8 completions; one generation call samples
# the completions of 4 steps at once (cheaper per completion on a CPU).
DEFAULT_REGIME = Regime(
    task=ArithmeticTask(),
    model={"hidden_size": 128, "num_layers": 4, "num_heads": 4, "intermediate_size": 512},  # TinyConfig fields
    sft_steps=600,
    sft_batch_size=64,
    sft_lr=2e-3,
    rl_steps=40,
    rl_lr=1e-4,
    num_generations=8,
    prompts_per_step=8,
    steps_per_generation=4,
    max_completion_length=48,
    temperature=1.0,
    beta=0.0,
    n_rl_prompts=4096,
    # evaluation: avg@4 at the sampling temperature; the hard split's longer problems need longer completions
    eval_problems=256,
    eval_samples=4,
    hard_eval_problems=128,
    hard_max_new_tokens=72,
)
DEFAULT_TASK = DEFAULT_REGIME.task
# The embedded regimes by task form: "chain" is the first default (experiments/regime/README.md, sections 1-3), kept
# so that its measurements can be reproduced (`oarl train --task chain`).
REGIMES = {
    "tree": DEFAULT_REGIME,
    "chain": replace(DEFAULT_REGIME, task=ArithmeticTask(form="chain", steps=(2, 3), hard_steps=(4, 5)), sft_steps=300),
}
