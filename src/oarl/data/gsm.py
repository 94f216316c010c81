"""GSM-style word problems, generated offline by reasoning-gym's ``gsm_symbolic`` task.

    train = gsm_symbolic(2000, seed=0, split="train")   # datasets.Dataset: prompt, answer
    test = gsm_symbolic(200, seed=0, split="test")

reasoning-gym instantiates about a hundred GSM8K templates (names, objects and numbers drawn from a seeded
RNG; item ``i`` of a dataset with seed ``s`` is drawn from ``Random(s + i)``); every row has a question,
a gold answer (an integer, sometimes a negative number or a decimal) and a worked solution.

Splits are disjoint by construction, whatever the sizes and seeds: a question belongs to the test split
when a stable hash of its text falls in the test bucket (``TEST_FRACTION`` of all questions), and each
split draws from its own seeded stream (seed offsets far apart), keeping only the questions of its
bucket, without duplicates. Both splits share the templates: the test split measures generalisation to
new numbers and names, not to new kinds of problems.
"""

from __future__ import annotations

import hashlib

from datasets import Dataset

INSTRUCTION = "Solve the problem step by step, then end with 'The answer is N.', where N is the final number."
TEST_FRACTION = 0.2
SPLITS = ("train", "test")
_SPLIT_SEED_OFFSET = {"train": 0, "test": 1 << 30}  # streams Random(seed + offset + i) never meet


def in_test_split(question: str) -> bool:
    """Whether ``question`` belongs to the test split (a stable hash bucket, not Python's ``hash``)."""
    digest = hashlib.sha256(question.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < TEST_FRACTION


def make_prompt(question: str, instruction: str | None = INSTRUCTION, conversational: bool = True):
    """The question followed by the instruction, as one user message (conversational) or as plain text."""
    content = question.strip() if not instruction else f"{question.strip()}\n{instruction}"
    return [{"role": "user", "content": content}] if conversational else content


def gsm_symbolic_rows(n: int, seed: int = 0, split: str = "train") -> list[dict]:
    """``n`` distinct problems of ``split`` as dicts with ``question``, ``answer`` (gold, str),
    ``solution`` (reasoning-gym's worked solution, ending with ``#### answer``) and ``template`` (its index)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} for gsm-symbolic; choose one of {', '.join(SPLITS)}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    try:
        import reasoning_gym  # lazy: an optional dependency (oarl[gsm])
    except ImportError as exc:
        raise ImportError(
            "the gsm-symbolic dataset needs reasoning-gym: install it with `pip install 'oarl[gsm]'` "
            "(or `pip install reasoning-gym`)"
        ) from exc

    want_test = split == "test"
    # The stream is drawn in blocks; a block holds about 1/TEST_FRACTION times more than the test split needs.
    stream_seed = seed + _SPLIT_SEED_OFFSET[split]
    block = max(64, int(n / (TEST_FRACTION if want_test else 1 - TEST_FRACTION)) + 32)
    max_draws = 50 * block + 10_000
    rows, seen, start = [], set(), 0
    while len(rows) < n:
        if start >= max_draws:
            raise ValueError(f"cannot draw {n} distinct gsm-symbolic {split!r} problems (got {len(rows)})")
        dataset = reasoning_gym.create_dataset("gsm_symbolic", size=block, seed=stream_seed + start)
        for i in range(block):
            item = dataset[i]
            question = item["question"]
            if in_test_split(question) != want_test or question in seen:
                continue
            seen.add(question)
            rows.append(
                {
                    "question": question,
                    "answer": str(item["answer"]).strip(),
                    "solution": item["metadata"].get("answer_cot", ""),
                    "template": int(dataset.task_indices[i]),
                }
            )
            if len(rows) == n:
                break
        start += block
    return rows


def gsm_symbolic(
    n: int,
    seed: int = 0,
    split: str = "train",
    *,
    conversational: bool = True,
    instruction: str | None = INSTRUCTION,
):
    """A ``datasets.Dataset`` of ``n`` gsm-symbolic problems with columns ``prompt`` (one user message:
    question + ``instruction``; plain text if not ``conversational``) and ``answer`` (gold, str)."""
    rows = gsm_symbolic_rows(n, seed, split)
    return Dataset.from_dict(
        {
            "prompt": [make_prompt(r["question"], instruction, conversational) for r in rows],
            "answer": [r["answer"] for r in rows],
        }
    )
