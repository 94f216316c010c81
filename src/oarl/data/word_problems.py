"""Word problems: the embedded arithmetic phrased as short stories, for pretrained chat models.

    rows = problems("test", 64, seed=0, steps=(2, 2))   # dicts: question, answer, solution, num_steps
    train = dataset("train", 512)                        # datasets.Dataset: prompt (chat message), answer

A problem is a person's count of one kind of thing, changed by ``steps`` events, each one operation with
small numbers (gain: ``+``, loss: ``-``, packs: ``+ b*c``), then a question about the final count::

    Mia has 7 marbles. She buys 5 more marbles. Then she gives 3 marbles to Leo.
    How many marbles does Mia have now?                                             (answer: 9)

with a worked solution in plain English (used as a reference and for an optional supervised warm start)::

    Mia starts with 7 marbles. She buys 5 more, so she has 7 + 5 = 12 marbles. She gives away 3, so she
    has 12 - 3 = 9 marbles. The answer is 9.

Every count along the way stays in [0, ``max_value``]. Splits are disjoint by construction, as in
:mod:`oarl.data.arithmetic`: a problem belongs to the test pool when a stable hash of its question falls in
the test bucket (``TEST_FRACTION``), and ``train`` only draws questions outside it. The difficulty knob is
the number of events (``steps``); experiments/smollm2/README.md measures SmolLM2-135M-Instruct on each.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from datasets import Dataset

from oarl.data.gsm import INSTRUCTION  # "Solve the problem step by step, then end with 'The answer is N.' ..."
from oarl.data.regime import Regime

TEST_FRACTION = 0.2
SPLITS = ("train", "test")

NAMES = [
    ("Mia", "she", "her"),
    ("Leo", "he", "his"),
    ("Ava", "she", "her"),
    ("Sam", "he", "his"),
    ("Nora", "she", "her"),
    ("Ben", "he", "his"),
    ("Lily", "she", "her"),
    ("Max", "he", "his"),
    ("Emma", "she", "her"),
    ("Omar", "he", "his"),
    ("Zoe", "she", "her"),
    ("Jack", "he", "his"),
]
ITEMS = [
    "apples",
    "marbles",
    "stickers",
    "books",
    "pencils",
    "cookies",
    "coins",
    "cards",
    "shells",
    "toy cars",
    "stamps",
    "balloons",
]
CONTAINERS = ["bags", "boxes", "packs"]


@dataclass(frozen=True)
class Event:
    kind: str  # "gain" | "loss" | "packs"
    a: int  # the amount (number of packs for "packs")
    b: int = 0  # items per pack ("packs" only)

    def apply(self, count: int) -> int:
        return (
            count + self.a
            if self.kind == "gain"
            else count - self.a
            if self.kind == "loss"
            else count + self.a * self.b
        )


def _story(rng: random.Random, name, pron, other, item, event: Event) -> tuple[str, str]:
    """(sentence of the question, clause of the worked solution) for one event."""
    P = pron.capitalize()
    if event.kind == "gain":
        sentence = rng.choice(
            [
                f"{P} buys {event.a} more {item}.",
                f"{P} finds {event.a} more {item}.",
                f"{other} gives {name} {event.a} more {item}.",
            ]
        )
        return sentence, f"{P} gets {event.a} more"
    if event.kind == "loss":
        sentence = rng.choice(
            [f"{P} gives {event.a} {item} to {other}.", f"{P} loses {event.a} {item}.", f"{P} sells {event.a} {item}."]
        )
        return sentence, f"{P} gives away {event.a}"
    container = rng.choice(CONTAINERS)
    sentence = f"{P} buys {event.a} {container} with {event.b} {item} in each."
    return (
        sentence,
        f"{P} buys {event.a} {container} of {event.b}, which is {event.a} x {event.b} = {event.a * event.b} {item}",
    )


def _draw(rng: random.Random, steps: tuple[int, int], max_value: int, max_operand: int, kinds: str):
    while True:
        n = rng.randint(*steps)
        start = rng.randint(2, max_operand)
        events, count = [], start
        for _ in range(n):
            kind = {"+": "gain", "-": "loss", "*": "packs"}[rng.choice(kinds)]
            event = (
                Event(kind, rng.randint(2, 5), rng.randint(2, 5))
                if kind == "packs"
                else Event(kind, rng.randint(1, max_operand))
            )
            count = event.apply(count)
            events.append(event)
            if not 0 <= count <= max_value:
                break
        else:
            return start, events


def _render(rng: random.Random, start: int, events: list[Event]) -> tuple[str, str, int]:
    (name, pron, _), item = rng.choice(NAMES), rng.choice(ITEMS)
    other = rng.choice([n for n, _, _ in NAMES if n != name])
    sentences = [f"{name} has {start} {item}."]
    solution = [f"{name} starts with {start} {item}."]
    count = start
    for i, event in enumerate(events):
        sentence, clause = _story(rng, name, pron, other, item, event)
        if i and rng.random() < 0.5:
            sentence = "Then " + sentence[0].lower() + sentence[1:]
        sentences.append(sentence)
        new = event.apply(count)
        op = "-" if event.kind == "loss" else "+"
        amount = event.a if event.kind != "packs" else event.a * event.b
        solution.append(f"{clause}, so {pron} has {count} {op} {amount} = {new} {item}.")
        count = new
    sentences.append(f"How many {item} does {name} have now?")
    solution.append(f"The answer is {count}.")
    return " ".join(sentences), " ".join(solution), count


def in_test_split(question: str) -> bool:
    """Whether ``question`` belongs to the test pool (a stable hash bucket, not Python's ``hash``)."""
    digest = hashlib.blake2b(question.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < TEST_FRACTION


def problems(
    split: str,
    n: int,
    seed: int = 0,
    steps: tuple[int, int] = (2, 2),
    max_value: int = 50,
    max_operand: int = 20,
    ops: str = "+-",
) -> list[dict]:
    """``n`` distinct problems of ``split`` ('train' | 'test') as dicts with ``question``, ``answer`` (gold,
    str), ``solution`` (worked, ending with ``The answer is N.``) and ``num_steps``.

    steps: (min, max) events per problem; max_value: bound on every count along the way; max_operand: bound
    on the start count and on gains and losses; ops: events to draw from ('+' gain, '-' loss, '*' packs).
    Raises ValueError for an unknown split, n < 0, or a task too small to hold n distinct problems."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} for word problems; choose one of {', '.join(SPLITS)}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not ops or set(ops) - set("+-*"):
        raise ValueError(f"ops must be a non-empty subset of '+-*', got {ops!r}")
    rng = random.Random(f"oarl-word-problems/{split}/{seed}/{steps}/{max_value}/{max_operand}/{ops}")
    out, seen, attempts = [], set(), 0
    while len(out) < n:
        attempts += 1
        if attempts > 200 * n + 10_000:
            raise ValueError(f"cannot draw {n} distinct {split!r} word problems with steps={steps}; lower n")
        start, events = _draw(rng, steps, max_value, max_operand, ops)
        question, solution, answer = _render(rng, start, events)
        if in_test_split(question) != (split == "test") or question in seen:
            continue
        seen.add(question)
        out.append({"question": question, "answer": str(answer), "solution": solution, "num_steps": len(events)})
    return out


def make_prompt(question: str, instruction: str | None = INSTRUCTION, conversational: bool = True):
    content = question if not instruction else f"{question}\n{instruction}"
    return [{"role": "user", "content": content}] if conversational else content


def dataset(
    split: str, n: int, seed: int = 0, conversational: bool = True, instruction: str | None = INSTRUCTION, **task
):
    """A ``datasets.Dataset`` of ``n`` problems with columns ``prompt`` (one user message, or plain text if not
    ``conversational``) and ``answer`` (gold, str); ``task``: :func:`problems`' keyword arguments."""
    rows = problems(split, n, seed, **task)
    return Dataset.from_dict(
        {
            "prompt": [make_prompt(r["question"], instruction, conversational) for r in rows],
            "answer": [r["answer"] for r in rows],
        }
    )


# ---------------------------------------------------------------------------------------- the SmolLM2 regime


@dataclass(frozen=True)
class WordProblemTask:
    """What word problems look like (:func:`problems`' keyword arguments)."""

    steps: tuple[int, int] = (2, 2)
    ops: str = "+-"
    max_operand: int = 20
    max_value: int = 50


# The job ``oarl train --model smollm2-135m`` runs by default (oarl.jobs.SMOLLM2): task, RL and evaluation sizes
# chosen so that a step fits a laptop CPU (every value measured in experiments/smollm2/README.md). The warm start: 50
# supervised steps on worked solutions. RL: 16 problems x 4 samples at T=1.0, lr 1e-5, trained in micro-batches of 8,
# bf16 autocast where the CPU has bf16 instructions (oarl.jobs): GRPO gained +0.113 ± 0.021 and +0.115 ± 0.022 on
# seeds 0 and 1 in 20 steps (experiments/smollm2/README.md §3g). At 8 problems x 4 held-out accuracy drifted either way
# (+0.053, -0.092); at 4 x 8, T=0.7 the warm start's groups mostly agreed; lr 2e-5 lowered accuracy, 5e-6 left it
# flat (§3a-3e). Held-out: 256 problems x 2 samples (a problem's samples mostly agree, so problems, not samples,
# shrink the SE).
SMOLLM2_REGIME = Regime(
    task=WordProblemTask(),
    model="smollm2-135m",
    sft_steps=50,
    sft_batch_size=8,
    sft_lr=1e-4,
    rl_steps=20,
    rl_lr=1e-5,
    num_generations=4,
    prompts_per_step=16,
    micro_batch_size=8,
    max_completion_length=192,
    temperature=1.0,
    beta=0.0,
    n_rl_prompts=1024,
    eval_problems=256,
    eval_samples=2,
)
