"""Training data by name: ``load_train_dataset(name_or_path) -> datasets.Dataset`` with ``prompt``, ``answer``.

    "arithmetic"     the embedded multi-step arithmetic task (oarl.data.arithmetic), offline
    "word-problems"  short stories with small-number arithmetic (oarl.data.word_problems), offline
    "gsm-symbolic"   reasoning-gym's procedural GSM-style word problems (oarl.data.gsm), offline
    "gsm8k"          openai/gsm8k ("main") from the Hugging Face hub; gold = the number after ``####``
    "math"           DigitalLearningGmbH/MATH-lighteval from the hub; gold = the last ``\\boxed{}`` of the solution
    a .jsonl file    one problem per line, its fields detected as ``oarl eval`` does (or named by the caller)

``prompt`` is one user message (conversational, for chat models: ``[{"role": "user", "content": ...}]``) or
plain text; ``answer`` is the gold answer as a string (or a list of acceptable answers), ready for the
verifiable reward.
"""

from __future__ import annotations

import difflib
import functools
import logging
import os
import random
import re
from pathlib import Path

import datasets
from datasets import Dataset

from oarl.data import arithmetic, word_problems
from oarl.data.benchmarks import Schema, gold_answer, load_jsonl
from oarl.data.gsm import INSTRUCTION as PHRASE_INSTRUCTION  # "... end with 'The answer is N.' ..."
from oarl.data.gsm import gsm_symbolic_rows
from oarl.data.template import PromptTemplate

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
HOLDOUT_SEED = 0  # the shuffle that picks the held-out rows of a JSONL file (independent of the training seed)
# procedural datasets need a size (word-problems: the SmolLM2 regime's n_rl_prompts); the others default to all rows
DEFAULT_SIZES = {"gsm-symbolic": 2000}


def _valid_choices_text() -> str:
    return f"valid choices: {', '.join(repr(c) for c in DATASET_CHOICES)}, or the path of a local .jsonl file"


def _dataset(rows: list[dict], instruction: str, conversational: bool, template: str | None, source: str):
    """A Dataset of ``prompt`` and ``answer`` from rows ``{"problem", "answer", "fields"?}``: the prompt is the
    template filled from the row's fields and ``problem`` (``oarl.data.template``) if one is given, else the
    problem followed by the instruction; one user message if conversational, else plain text."""
    fill = None
    if template is not None:
        fill = PromptTemplate(template, _fields(rows[0]) if rows else None, source=source).fill
    prompts = []
    for row in rows:
        problem = row["problem"].strip()
        content = fill(_fields(row), source) if fill else f"{problem}\n{instruction}" if instruction else problem
        prompts.append([{"role": "user", "content": content}] if conversational else content)
    return _as_dataset(prompts, [r["answer"] for r in rows])


def _fields(row: dict) -> dict:
    return {**(row.get("fields") or {}), "problem": row["problem"]}


def _as_dataset(prompts: list, answers: list):
    """``answer`` holds strings, or lists of acceptable answers in every row when some row has several (a
    column has one type); ``oarl.rewards.accuracy`` takes both."""
    if any(isinstance(a, list) for a in answers):
        answers = [a if isinstance(a, list) else [str(a)] for a in answers]
    else:
        answers = [str(a) for a in answers]
    return Dataset.from_dict({"prompt": prompts, "answer": answers})


def _subsample(dataset, size: int | None, seed: int):
    """The first ``size`` rows after a seeded shuffle (all rows, in order, if size is None)."""
    if size is None or size >= len(dataset):
        return dataset
    return dataset.shuffle(seed=seed).select(range(size))


# ------------------------------------------------------------------------------------------------ sources


def _arithmetic(
    split: str, size: int | None, seed: int, instruction: str | None, conversational: bool, template: str | None
):
    n = size if size is not None else arithmetic.DEFAULT_REGIME.n_rl_prompts
    rows = arithmetic.problems(split, n, seed=seed)
    if not conversational and template is None:  # the task's own "Q: (6+2)-(1+4)=?\nA: " of the tiny model
        return _as_dataset([r["prompt"] for r in rows], [r["answer"] for r in rows])
    rows = [{"problem": f"What is {r['expression']}?", "answer": r["answer"], "fields": r} for r in rows]
    return _dataset(rows, instruction, conversational, template, "arithmetic")


def _gsm_symbolic(
    split: str, size: int | None, seed: int, instruction: str, conversational: bool, template: str | None
):
    n = size if size is not None else DEFAULT_SIZES["gsm-symbolic"]
    rows = [{"problem": r["question"], "answer": r["answer"], "fields": r} for r in gsm_symbolic_rows(n, seed, split)]
    return _dataset(rows, instruction, conversational, template, "gsm-symbolic")


def _word_problems(
    split: str, size: int | None, seed: int, instruction: str, conversational: bool, template: str | None
):
    regime = word_problems.SMOLLM2_REGIME
    n = size if size is not None else regime.n_rl_prompts
    rows = [
        {"problem": r["question"], "answer": r["answer"], "fields": r}
        for r in word_problems.problems(split, n, seed, **regime.task_kwargs())
    ]
    return _dataset(rows, instruction, conversational, template, "word-problems")


def _hub(
    name: str, split: str, size: int | None, seed: int, instruction: str, conversational: bool, template: str | None
):
    path, config, schema = HUB_DATASETS[name]
    try:
        dataset = datasets.load_dataset(path, config, split=split)  # a module attribute: tests replace it
    except Exception as exc:  # no network, no cache, unknown split: say which dataset and what to do instead
        reason = " ".join(str(exc).split())
        raise ValueError(
            f"cannot load dataset {name!r} ({path}, split {split!r}) from the Hugging Face hub: {reason}. It needs "
            "network access or the hub cache; 'arithmetic', 'gsm-symbolic' and local .jsonl files work offline."
        ) from exc
    dataset = _subsample(dataset, size, seed)
    rows, skipped = [], 0
    for row in dataset:
        try:
            gold = gold_answer(row, schema)
        except ValueError:  # a handful of MATH solutions have no \boxed answer: not trainable, skip them
            skipped += 1
            continue
        gold = gold.replace(",", "") if isinstance(gold, str) and _NUMBER_WITH_COMMAS.fullmatch(gold) else gold
        rows.append({"problem": row[schema.problem], "answer": gold, "fields": row})
    if skipped:
        logger.warning("%s: skipped %d row(s) without a gold answer", name, skipped)
    return _dataset(rows, instruction, conversational, template, name)


@functools.lru_cache(maxsize=4)
def _read_jsonl(path: Path, mtime_ns: int, problem_field: str | None, answer_field: str | None):
    """Rows of a local JSONL file, read (and its fields detected and reported) once per file version; strict:
    a training set with broken rows is an error naming file:line, not a warning."""
    return tuple(load_jsonl(path, problem_field=problem_field, answer_field=answer_field, strict=True))


def _jsonl(
    path: Path,
    split: str,
    size: int | None,
    seed: int,
    problem_field: str | None,
    answer_field: str | None,
    instruction: str,
    conversational: bool,
    template: str | None,
    holdout: int | float | None,
):
    if not path.is_file():
        raise ValueError(f"dataset file {str(path)!r} does not exist. {_valid_choices_text()}.")
    rows = list(_read_jsonl(path.resolve(), path.stat().st_mtime_ns, problem_field, answer_field))
    if holdout:  # a held-out part, the same for every training seed, so that runs compare on the same problems
        n_held = holdout if isinstance(holdout, int) else round(holdout * len(rows))
        if not 1 <= n_held < len(rows):
            raise ValueError(
                f"{path}: cannot hold out {holdout} of its {len(rows)} row(s) for evaluation and train "
                "on the rest; give --eval_size N (problems) or --eval_fraction F with something left"
            )
        order = random.Random(HOLDOUT_SEED).sample(range(len(rows)), len(rows))
        held = set(order[:n_held])
        rows = [r for i, r in enumerate(rows) if (i in held) == (split == "test")]
    dataset = _dataset(rows, instruction, conversational, template, path.name)
    return _subsample(dataset, size, seed)


# ------------------------------------------------------------------------------------------------ entry point


def load_train_dataset(
    name_or_path: str,
    *,
    split: str = "train",
    size: int | None = None,
    seed: int = 0,
    problem_field: str | None = None,
    answer_field: str | None = None,
    conversational: bool = True,
    instruction: str | None = None,
    prompt_template: str | None = None,
    holdout: int | float | None = None,
):
    """A ``datasets.Dataset`` with columns ``prompt`` and ``answer`` (gold: a string, or a list of acceptable
    answers in every row when some row of the source has several).

    name_or_path:   one of DATASET_CHOICES, or a local ``.jsonl`` file.
    split:          "train" or "test" ("hard" too for arithmetic). A JSONL file is one split unless
                    ``holdout`` splits it.
    size:           number of rows; None = all rows (hub, JSONL), the default size of a procedural task
                    (arithmetic: the embedded regime's RL prompts; gsm-symbolic: 2000). Hub and JSONL rows
                    are subsampled after a shuffle with ``seed``; procedural tasks are generated from ``seed``.
    problem_field, answer_field: fields of a JSONL file; None = detected as ``oarl eval`` does
                    (``oarl.data.benchmarks``: a context field such as ``Body`` is kept before the question).
    conversational: prompts as one user message (chat models) rather than plain text.
    instruction:    text appended to each problem; None = the dataset's default (DEFAULT_INSTRUCTIONS),
                    "" = nothing. Non-conversational arithmetic keeps the task's own "Q: ...=?\\nA: " format.
    prompt_template: the whole prompt from the row's fields instead (``"{Body} {Question}"``; ``{problem}`` is
                    the detected problem; see ``oarl.data.template``); no instruction is appended.
    holdout:        JSONL only: hold out this many rows (int) or this fraction of them (float in (0, 1)) for
                    evaluation, picked by a fixed-seed shuffle (HOLDOUT_SEED): split "test" is the held-out
                    rows, "train" the others (disjoint).
    Raises ValueError (listing the valid choices) for an unknown name, naming file:line for a malformed JSONL
    row, and listing the fields for a template that names an unknown one.
    """
    name = os.fspath(name_or_path)
    if size is not None and size < 0:
        raise ValueError(f"size must be >= 0 or None, got {size}")
    key = name if name in DATASET_CHOICES else "jsonl"
    instruction = DEFAULT_INSTRUCTIONS[key] if instruction is None else instruction
    if name == "arithmetic":
        return _arithmetic(split, size, seed, instruction, conversational, prompt_template)
    if name == "word-problems":
        return _word_problems(split, size, seed, instruction, conversational, prompt_template)
    if name == "gsm-symbolic":
        return _gsm_symbolic(split, size, seed, instruction, conversational, prompt_template)
    if name in HUB_DATASETS:
        return _hub(name, split, size, seed, instruction, conversational, prompt_template)
    path = Path(name).expanduser()
    if name.endswith(".jsonl") or path.is_file():
        return _jsonl(
            path, split, size, seed, problem_field, answer_field, instruction, conversational, prompt_template, holdout
        )
    close = difflib.get_close_matches(name.lower(), DATASET_CHOICES, n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown dataset {name!r}: {_valid_choices_text()}.{hint}")
