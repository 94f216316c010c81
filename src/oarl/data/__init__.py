"""Training data by name: ``load_train_dataset(name_or_path) -> datasets.Dataset`` with ``prompt``, ``answer``.

    "arithmetic"     the embedded multi-step arithmetic task (oarl.data.arithmetic), offline
    "gsm-symbolic"   reasoning-gym's procedural GSM-style word problems (oarl.data.gsm), offline
    "gsm8k"          openai/gsm8k ("main") from the Hugging Face hub; gold = the number after ``####``
    "math"           DigitalLearningGmbH/MATH-lighteval from the hub; gold = the last ``\\boxed{}`` of the solution
    a .jsonl file    one problem per line, the problem and gold answer in fields named by the caller

``prompt`` is one user message (conversational, for chat models: ``[{"role": "user", "content": ...}]``) or
plain text; ``answer`` is the gold answer as a string, ready for the verifiable reward.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from oarl.data.gsm import INSTRUCTION as PHRASE_INSTRUCTION  # "... end with 'The answer is N.' ..."

DATASET_CHOICES = ("arithmetic", "gsm-symbolic", "gsm8k", "math")
HUB_DATASETS = {  # name -> (hub path, config, problem column, column holding the gold answer)
    "gsm8k": ("openai/gsm8k", "main", "question", "answer"),
    "math": ("DigitalLearningGmbH/MATH-lighteval", None, "problem", "solution"),
}
BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
# Instruction appended to each problem when the caller gives none ("" appends nothing).
DEFAULT_INSTRUCTIONS = {
    "arithmetic": PHRASE_INSTRUCTION,
    "gsm-symbolic": PHRASE_INSTRUCTION,
    "gsm8k": PHRASE_INSTRUCTION,
    "math": BOXED_INSTRUCTION,
    "jsonl": BOXED_INSTRUCTION,
}
DEFAULT_SIZES = {"gsm-symbolic": 2000}  # procedural datasets need a size; the others default to all rows


def _valid_choices_text() -> str:
    return f"valid choices: {', '.join(repr(c) for c in DATASET_CHOICES)}, or the path of a local .jsonl file"


def _prompt(problem: str, instruction: str, conversational: bool):
    content = f"{problem.strip()}\n{instruction}" if instruction else problem.strip()
    return [{"role": "user", "content": content}] if conversational else content


def _dataset(problems: list[str], answers: list[str], instruction: str, conversational: bool):
    return _as_dataset([_prompt(p, instruction, conversational) for p in problems], answers)


def _as_dataset(prompts: list, answers: list[str]):
    from datasets import Dataset

    return Dataset.from_dict({"prompt": prompts, "answer": [str(a) for a in answers]})


def _subsample(dataset, size: int | None, seed: int):
    """The first ``size`` rows after a seeded shuffle (all rows, in order, if size is None)."""
    if size is None or size >= len(dataset):
        return dataset
    return dataset.shuffle(seed=seed).select(range(size))


# ------------------------------------------------------------------------------------------------ sources


def _arithmetic(split: str, size: int | None, seed: int, instruction: str | None, conversational: bool):
    from oarl.data import arithmetic

    n = size if size is not None else arithmetic.DEFAULT_REGIME.n_rl_prompts
    rows = arithmetic.problems(split, n, seed=seed)
    if not conversational:  # the task's own format, "Q: 7+5*3-2=?\nA: ", which the tiny model was warm-started on
        return _as_dataset([r["prompt"] for r in rows], [r["answer"] for r in rows])
    problems = [f"What is {r['expression']}?" for r in rows]
    return _dataset(problems, [r["answer"] for r in rows], instruction, True)


def _gsm_symbolic(split: str, size: int | None, seed: int, instruction: str, conversational: bool):
    from oarl.data.gsm import gsm_symbolic

    n = size if size is not None else DEFAULT_SIZES["gsm-symbolic"]
    return gsm_symbolic(n, seed, split, conversational=conversational, instruction=instruction)


def gsm8k_gold(solution: str) -> str | None:
    """The gold answer of a GSM8K solution: what follows the last ``####``, without thousands separators."""
    if "####" not in solution:
        return None
    gold = solution.rsplit("####", 1)[1].strip().replace(",", "")
    return gold or None


def math_gold(solution: str) -> str | None:
    """The gold answer of a MATH solution: the content of its last ``\\boxed{}``."""
    from oarl.credit.answer import extract_answer

    return extract_answer(solution)


def _hub(name: str, split: str, size: int | None, seed: int, instruction: str, conversational: bool):
    from datasets import load_dataset

    path, config, problem_column, gold_column = HUB_DATASETS[name]
    try:
        dataset = load_dataset(path, config, split=split)
    except Exception as exc:  # no network, no cache, unknown split: say which dataset and what to do instead
        reason = " ".join(str(exc).split())
        raise ValueError(
            f"cannot load dataset {name!r} ({path}, split {split!r}) from the Hugging Face hub: {reason}. It needs "
            "network access or the hub cache; 'arithmetic', 'gsm-symbolic' and local .jsonl files work offline."
        ) from exc
    dataset = _subsample(dataset, size, seed)
    gold_of = gsm8k_gold if name == "gsm8k" else math_gold
    problems, answers = [], []
    for row in dataset:
        gold = gold_of(row[gold_column])
        if gold is not None:  # a handful of MATH solutions have no \boxed answer
            problems.append(row[problem_column])
            answers.append(gold)
    return _dataset(problems, answers, instruction, conversational)


def _read_jsonl(path: Path, problem_field: str, answer_field: str) -> list[tuple[str, str]]:
    """(problem, gold answer) pairs of a JSONL file; a malformed row raises ValueError naming file:line."""
    pairs = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
            for field, kind in ((problem_field, "problem"), (answer_field, "answer")):
                if field not in row:
                    raise ValueError(
                        f"{where}: no {kind} field {field!r} (fields: {', '.join(sorted(row)) or 'none'}); "
                        f"name the field with --{kind}_field"
                    )
            problem, answer = row[problem_field], row[answer_field]
            if not isinstance(problem, str) or not problem.strip():
                raise ValueError(f"{where}: the problem field {problem_field!r} must be a non-empty string, got {problem!r}")
            if isinstance(answer, bool) or not isinstance(answer, (str, int, float)) or not str(answer).strip():
                raise ValueError(
                    f"{where}: the answer field {answer_field!r} must be a non-empty string or a number, got {answer!r}"
                )
            pairs.append((problem, str(answer).strip()))
    if not pairs:
        raise ValueError(f"{path}: no rows")
    return pairs


def _jsonl(path: Path, size: int | None, seed: int, problem_field: str, answer_field: str, instruction: str,
           conversational: bool):
    if not path.is_file():
        raise ValueError(f"dataset file {str(path)!r} does not exist. {_valid_choices_text()}.")
    pairs = _read_jsonl(path, problem_field, answer_field)
    dataset = _dataset([p for p, _ in pairs], [a for _, a in pairs], instruction, conversational)
    return _subsample(dataset, size, seed)


# ------------------------------------------------------------------------------------------------ entry point


def load_train_dataset(
    name_or_path: str,
    *,
    split: str = "train",
    size: int | None = None,
    seed: int = 0,
    problem_field: str = "problem",
    answer_field: str = "answer",
    conversational: bool = True,
    instruction: str | None = None,
):
    """A ``datasets.Dataset`` with columns ``prompt`` and ``answer`` (gold, str).

    name_or_path:   one of DATASET_CHOICES, or a local ``.jsonl`` file.
    split:          "train" or "test" ("hard" too for arithmetic; ignored for a JSONL file).
    size:           number of rows; None = all rows (hub, JSONL), the default size of a procedural task
                    (arithmetic: the embedded regime's RL prompts; gsm-symbolic: 2000). Hub and JSONL rows
                    are subsampled after a shuffle with ``seed``; procedural tasks are generated from ``seed``.
    problem_field, answer_field: field names of a JSONL file.
    conversational: prompts as one user message (chat models) rather than plain text.
    instruction:    text appended to each problem; None = the dataset's default (DEFAULT_INSTRUCTIONS),
                    "" = nothing. Non-conversational arithmetic keeps the task's own "Q: ...=?\\nA: " format.
    Raises ValueError (listing the valid choices) for an unknown name, and naming file:line for a
    malformed JSONL row.
    """
    name = os.fspath(name_or_path)
    if size is not None and size < 0:
        raise ValueError(f"size must be >= 0 or None, got {size}")
    key = name if name in DATASET_CHOICES else "jsonl"
    instruction = DEFAULT_INSTRUCTIONS[key] if instruction is None else instruction
    if name == "arithmetic":
        return _arithmetic(split, size, seed, instruction, conversational)
    if name == "gsm-symbolic":
        return _gsm_symbolic(split, size, seed, instruction, conversational)
    if name in HUB_DATASETS:
        return _hub(name, split, size, seed, instruction, conversational)
    path = Path(name).expanduser()
    if name.endswith(".jsonl") or path.is_file():
        return _jsonl(path, size, seed, problem_field, answer_field, instruction, conversational)
    import difflib

    close = difflib.get_close_matches(name.lower(), DATASET_CHOICES, n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown dataset {name!r}: {_valid_choices_text()}.{hint}")
