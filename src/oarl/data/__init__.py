"""Training data by name: ``load_train_dataset(name_or_path) -> datasets.Dataset`` with ``prompt``, ``answer``.

    "arithmetic"     the embedded multi-step arithmetic task (oarl.data.arithmetic), offline
    "word-problems"  short stories with small-number arithmetic (oarl.data.word_problems), offline
    "gsm-symbolic"   reasoning-gym's procedural GSM-style word problems (oarl.data.gsm), offline
    "gsm8k"          openai/gsm8k ("main") from the Hugging Face hub; gold = the number after ``####``
    "math"           DigitalLearningGmbH/MATH-lighteval from the hub; gold = the last ``\\boxed{}`` of the solution
    a .jsonl file    one problem per line, the problem and gold answer in fields named by the caller

``prompt`` is one user message (conversational, for chat models: ``[{"role": "user", "content": ...}]``) or
plain text; ``answer`` is the gold answer as a string, ready for the verifiable reward.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from pathlib import Path

from oarl.data.benchmarks import Schema
from oarl.data.gsm import INSTRUCTION as PHRASE_INSTRUCTION  # "... end with 'The answer is N.' ..."

logger = logging.getLogger(__name__)

DATASET_CHOICES = ("arithmetic", "word-problems", "gsm-symbolic", "gsm8k", "math")
# name -> (hub path, config, where the problem and gold answer are: an oarl.data.benchmarks.Schema)
HUB_DATASETS = {
    "gsm8k": ("openai/gsm8k", "main", Schema("question", "answer", gold="after_hash")),  # gold after ####
    "math": ("DigitalLearningGmbH/MATH-lighteval", None, Schema("problem", "solution", gold="boxed")),  # last \\boxed{}
}
BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
# Instruction appended to each problem when the caller gives none ("" appends nothing).
DEFAULT_INSTRUCTIONS = {
    "arithmetic": PHRASE_INSTRUCTION,
    "word-problems": PHRASE_INSTRUCTION,  # = oarl.data.word_problems.INSTRUCTION
    "gsm-symbolic": PHRASE_INSTRUCTION,
    "gsm8k": PHRASE_INSTRUCTION,
    "math": BOXED_INSTRUCTION,
    "jsonl": BOXED_INSTRUCTION,
}
_NUMBER_WITH_COMMAS = re.compile(r"-?\d{1,3}(,\d{3})+(\.\d+)?")  # "1,003" -> "1003" (GSM8K style)
_MAX_LISTED_ROWS = 10  # malformed JSONL rows listed in an error message
# procedural datasets need a size (word-problems: the SmolLM2 regime's n_rl_prompts); the others default to all rows
DEFAULT_SIZES = {"gsm-symbolic": 2000}


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
    if not conversational:  # the task's own format, "Q: (6+2)-(1+4)=?\nA: ", which the tiny model was warm-started on
        return _as_dataset([r["prompt"] for r in rows], [r["answer"] for r in rows])
    problems = [f"What is {r['expression']}?" for r in rows]
    return _dataset(problems, [r["answer"] for r in rows], instruction, True)


def _gsm_symbolic(split: str, size: int | None, seed: int, instruction: str, conversational: bool):
    from oarl.data.gsm import gsm_symbolic

    n = size if size is not None else DEFAULT_SIZES["gsm-symbolic"]
    return gsm_symbolic(n, seed, split, conversational=conversational, instruction=instruction)


def _word_problems(split: str, size: int | None, seed: int, instruction: str, conversational: bool):
    from oarl.data.word_problems import SMOLLM2_REGIME as regime
    from oarl.data.word_problems import dataset

    n = size if size is not None else regime.n_rl_prompts
    return dataset(split, n, seed, conversational=conversational, instruction=instruction, **regime.task_kwargs())


def _hub(name: str, split: str, size: int | None, seed: int, instruction: str, conversational: bool):
    from datasets import load_dataset

    from oarl.data.benchmarks import gold_answer

    path, config, schema = HUB_DATASETS[name]
    try:
        dataset = load_dataset(path, config, split=split)
    except Exception as exc:  # no network, no cache, unknown split: say which dataset and what to do instead
        reason = " ".join(str(exc).split())
        raise ValueError(
            f"cannot load dataset {name!r} ({path}, split {split!r}) from the Hugging Face hub: {reason}. It needs "
            "network access or the hub cache; 'arithmetic', 'gsm-symbolic' and local .jsonl files work offline."
        ) from exc
    dataset = _subsample(dataset, size, seed)
    problems, answers, skipped = [], [], 0
    for row in dataset:
        try:
            gold = gold_answer(row, schema)
        except ValueError:  # a handful of MATH solutions have no \boxed answer: not trainable, skip them
            skipped += 1
            continue
        problems.append(row[schema.problem])
        answers.append(gold.replace(",", "") if _NUMBER_WITH_COMMAS.fullmatch(gold) else gold)
    if skipped:
        logger.warning("%s: skipped %d row(s) without a gold answer", name, skipped)
    return _dataset(problems, answers, instruction, conversational)


def _jsonl(path: Path, size: int | None, seed: int, problem_field: str, answer_field: str, instruction: str,
           conversational: bool):
    """Rows of a local JSONL file, read by oarl.data.benchmarks: every malformed row is reported as
    file:line with its reason (strict: a training set with broken rows is an error, not a warning)."""
    from oarl.data.benchmarks import load_jsonl

    if not path.is_file():
        raise ValueError(f"dataset file {str(path)!r} does not exist. {_valid_choices_text()}.")
    try:
        rows = load_jsonl(path, problem_field=problem_field, answer_field=answer_field, strict=True)
    except ValueError as exc:  # one line per malformed row: keep the first few
        lines = str(exc).splitlines()
        if len(lines) > 1 + _MAX_LISTED_ROWS:
            lines = lines[: 1 + _MAX_LISTED_ROWS] + [f"  ... and {len(lines) - 1 - _MAX_LISTED_ROWS} more"]
        raise ValueError("\n".join(lines)) from None
    if not rows:
        raise ValueError(f"{path}: no rows")
    dataset = _dataset([r["problem"] for r in rows], [r["answer"] for r in rows], instruction, conversational)
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
    if name == "word-problems":
        return _word_problems(split, size, seed, instruction, conversational)
    if name == "gsm-symbolic":
        return _gsm_symbolic(split, size, seed, instruction, conversational)
    if name in HUB_DATASETS:
        return _hub(name, split, size, seed, instruction, conversational)
    path = Path(name).expanduser()
    if name.endswith(".jsonl") or path.is_file():
        return _jsonl(path, size, seed, problem_field, answer_field, instruction, conversational)
    close = difflib.get_close_matches(name.lower(), DATASET_CHOICES, n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown dataset {name!r}: {_valid_choices_text()}.{hint}")
