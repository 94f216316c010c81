"""Math benchmarks as rows ``{"problem", "answer", "id", "source"}``, whatever the file's own schema.

    load_benchmark("math500")                      a known name, read from the data directory
    load_benchmark("path/to/set.jsonl")            a local JSON Lines file (fields auto-detected or given)
    load_benchmark("HuggingFaceH4/MATH-500")       a Hugging Face dataset (needs network), or a local
                                                   dataset directory that ``datasets.load_dataset`` reads

Known names and where their gold answer is (see ``../shared/data/benchmarks/README.md``):

    math500   problem / answer (LaTeX)
    gsm8k     question / the text after ``####`` in answer
    aime24    problem / answer (string of an integer)
    amc23     problem / answer (a float such as 27.0, normalised to "27")
    minerva   problem / the last ``\\boxed{}`` in solution        (file minerva_math.jsonl)

Data directory: the ``data_dir`` argument, else the ``OARL_DATA_DIR`` environment variable, else
``../shared/data/benchmarks`` relative to the current directory if it exists.

Fields of a file with another schema are detected from its first row: the problem is the first of
``PROBLEM_FIELDS`` present, preceded by a context field (``CONTEXT_FIELDS``: ``Body``, ``context``, ``passage``,
...) when there is one, so that a word problem split into a story and a question keeps both
(``Body`` then ``Question``); the gold is the first of ``ANSWER_FIELDS``. What was chosen, and every field left
out, is logged once per file. Each row keeps its raw record under ``fields``, so that a prompt template can
name any of them (``oarl.data.template``).

A gold answer may be a list (olympiad-style sets): a one-element list is that answer, a longer one a set of
acceptable answers (any match scores, ``oarl.rewards.gold_answers``); ``answer`` is then a list of strings.

Malformed rows (invalid JSON, text that is not UTF-8, no problem, no gold answer that can be extracted, a gold
answer that is an infinite number such as JSON's ``Infinity`` or ``1e400``, or longer than the verifier reads,
``oarl.notation.MAX_ANSWER_CHARS``) are never scored as wrong:
with ``strict=False`` (the default) each is skipped, logged as a warning and listed in the returned list's
``skipped`` attribute as ``(source, reason)`` with source ``file:line``; with ``strict=True`` the load
raises ``ValueError`` listing them. A file whose every row is malformed is an error either way.

A row is at most ``MAX_ROW_BYTES`` (1 MiB) of JSON: a longer one is malformed, skipped unread. The longest row of the
five benchmarks is 11 KB (aime24); a 50 MB row made the model's prompt millions of tokens long and stalled
``oarl eval`` with no output. A file of more than ``PROGRESS_BYTES`` shows a bar while it is read.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
from tqdm.auto import tqdm

from oarl.answer import find_final_answer
from oarl.notation import MAX_ANSWER_CHARS, too_long
from oarl.rewards import gold_answers

logger = logging.getLogger(__name__)

PROBLEM_FIELDS = ("problem", "question", "Problem", "Question", "prompt")  # auto-detected, in this order
# A story or context that comes before the question in word-problem sets (SVAMP's Body, reading sets' passage).
CONTEXT_FIELDS = (
    "Body",
    "body",
    "context",
    "Context",
    "passage",
    "Passage",
    "story",
    "Story",
    "background",
    "Background",
)
ANSWER_FIELDS = ("answer", "Answer", "final_answer", "solution", "Solution")
SOLUTION_FIELDS = ("solution", "Solution")  # a gold taken from these is the last \boxed{} in the text
ID_FIELDS = ("unique_id", "id", "idx", "ID")
MAX_LISTED_ROWS = 10  # malformed rows listed in a warning or an error; the others are counted
MAX_ROW_BYTES = 1 << 20  # a longer row is malformed, skipped unread (module docstring)
PROGRESS_BYTES = 16 << 20  # a file larger than this shows a bar while it is read


@dataclass(frozen=True)
class Schema:
    """Where a benchmark file keeps its problem and its gold answer.

    gold: "field" (the answer field, normalised: numbers to strings, text after ``####`` if present; a list
    is a set of acceptable answers), "after_hash" (the text after ``####``, which must be there), "boxed" (last
    ``\\boxed{}`` of the field). context: a field whose text comes before the problem's (a word problem's
    story, ``Body`` before ``Question``); a row with an empty context is the problem alone.
    """

    problem: str
    answer: str
    gold: str = "field"
    id: str | None = None
    file: str | None = None  # file name in the data directory, for known benchmarks
    hub: tuple[str, str | None, str] | None = None  # (dataset, config, split) on the Hugging Face hub
    context: str | None = None


BENCHMARKS: dict[str, Schema] = {
    "math500": Schema(
        "problem", "answer", "field", "unique_id", "math500.jsonl", ("HuggingFaceH4/MATH-500", None, "test")
    ),
    "gsm8k": Schema("question", "answer", "after_hash", "idx", "gsm8k.jsonl", ("openai/gsm8k", "main", "test")),
    "aime24": Schema("problem", "answer", "field", "id", "aime24.jsonl", ("HuggingFaceH4/aime_2024", None, "train")),
    "amc23": Schema("problem", "answer", "field", "id", "amc23.jsonl", ("math-ai/amc23", None, "test")),
    "minerva": Schema(
        "problem", "solution", "boxed", "idx", "minerva_math.jsonl", ("math-ai/minervamath", None, "test")
    ),
}
ALIASES = {"math-500": "math500", "math_500": "math500", "minerva_math": "minerva", "aime": "aime24", "amc": "amc23"}


class BenchmarkRows(list):
    """A list of row dicts, with ``name`` and ``skipped`` (``[(source, reason), ...]``) attributes."""

    def __init__(self, rows=(), name: str = "", skipped: list[tuple[str, str]] | None = None):
        super().__init__(rows)
        self.name = name
        self.skipped = skipped or []


def default_data_dir() -> Path | None:
    """``OARL_DATA_DIR``, else ``../shared/data/benchmarks`` from the current directory if it exists."""
    env = os.environ.get("OARL_DATA_DIR")
    if env:
        return Path(env)
    candidate = Path.cwd().parent / "shared" / "data" / "benchmarks"
    return candidate if candidate.is_dir() else None


def gold_answer(row: dict, schema: Schema) -> str | list[str]:
    """The gold answer of a raw row as a string, or a list of acceptable answers (a field holding a list of
    more than one); raises ValueError with the reason when there is none."""
    if schema.answer not in row or row[schema.answer] is None:
        raise ValueError(f"no {schema.answer!r} field")
    value = row[schema.answer]
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"{schema.answer!r} is an empty list")
        items = [_one_gold(v, schema, f"{schema.answer!r}[{i}]") for i, v in enumerate(value)]
        golds = [g for g in items if g is not None]
        if not golds:
            raise ValueError(f"no answer in the list {schema.answer!r}: {_short(value)}")
        return golds[0] if len(golds) == 1 else golds
    gold = _one_gold(value, schema, repr(schema.answer))
    if gold is None:
        raise ValueError(f"empty gold answer in {schema.answer!r}")
    return gold


def _one_gold(value: Any, schema: Schema, where: str) -> str | None:
    if isinstance(value, (dict, list, tuple)):
        raise ValueError(f"{where} is a {type(value).__name__}, not an answer: {_short(value)}")
    if isinstance(value, float) and math.isinf(value):
        raise ValueError(
            f"{where} is infinite (JSON's Infinity, or a number too large for a float such as 1e400): "
            'write a gold answer that large as text, e.g. "1e400"'
        )
    if schema.gold == "boxed":
        if not isinstance(value, str):
            raise ValueError(f"{where} is not text")
        final = find_final_answer(value)
        if final is None or final.style != "boxed":
            raise ValueError(f"no closed \\boxed{{}} at the end of {where}")
        value = final.text
    elif schema.gold == "after_hash" and (not isinstance(value, str) or "####" not in value):
        raise ValueError(f"no '####' in {where}")
    golds = gold_answers(value)
    if golds and too_long(golds[0]):
        raise ValueError(
            f"{where} is {len(golds[0])} characters long: the verifier reads answers of at most "
            f"{MAX_ANSWER_CHARS} (oarl.notation.MAX_ANSWER_CHARS)"
        )
    return golds[0] if golds else None


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _row(raw: Any, schema: Schema, name: str, index: int, source: str) -> dict:
    """One benchmark row from a raw record; raises ValueError with the reason if it is malformed."""
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    problem = raw.get(schema.problem)
    if not isinstance(problem, str) or not problem.strip():
        raise ValueError(f"no {schema.problem!r} text")
    context = raw.get(schema.context) if schema.context else None
    if isinstance(context, str) and context.strip():
        problem = f"{context.strip()} {problem.strip()}"
    raw_id = raw.get(schema.id) if schema.id else None
    return {
        "problem": problem,
        "answer": gold_answer(raw, schema),
        "id": f"{name}/{raw_id if raw_id is not None else index}",
        "source": source,
        "fields": raw,
    }


def _detect_schema(first: dict, problem_field: str | None, answer_field: str | None) -> Schema:
    problem = problem_field or next((f for f in PROBLEM_FIELDS if f in first), PROBLEM_FIELDS[0])
    answer = answer_field or next((f for f in ANSWER_FIELDS if f in first), ANSWER_FIELDS[0])
    context = None if problem_field else next((f for f in CONTEXT_FIELDS if f in first and f != problem), None)
    return Schema(
        problem,
        answer,
        "boxed" if answer in SOLUTION_FIELDS else "field",
        next((f for f in ID_FIELDS if f in first), None),
        context=context,
    )


def _report_schema(name: str, schema: Schema, first: dict) -> None:
    """Say once which fields make the problem and the gold, and which fields are left out."""
    problem = [schema.context, schema.problem] if schema.context else [schema.problem]
    left = [f for f in first if f not in {*problem, schema.answer, schema.id}]
    logger.info(
        "%s: problem = %s, gold answer = %s%s%s",
        name,
        " + ".join(problem),
        schema.answer,
        " (its last \\boxed{})" if schema.gold == "boxed" else "",
        f"; not used: {', '.join(left)} (a prompt template can name any field)" if left else "",
    )


def _collect(
    records,
    schema: Schema | None,
    problem_field: str | None,
    answer_field: str | None,
    name: str,
    limit: int | None,
    strict: bool,
) -> BenchmarkRows:
    """Rows from (index, source, raw record or the ValueError that reading it raised), the schema detected on
    the first record that is an object unless given; malformed records are skipped with their reason."""
    rows: list[dict] = []
    skipped: list[tuple[str, str]] = []
    for index, source, raw in records:
        if schema is None and isinstance(raw, dict):
            schema = _detect_schema(raw, problem_field, answer_field)
            _report_schema(name, schema, raw)
        try:
            if isinstance(raw, ValueError):
                raise raw
            rows.append(_row(raw, schema or _detect_schema({}, problem_field, answer_field), name, index, source))
        except ValueError as e:
            skipped.append((source, str(e)))
            continue
        if limit is not None and len(rows) >= limit:
            break
    return _finish(rows, skipped, name, strict)


def _finish(rows: list[dict], skipped: list[tuple[str, str]], name: str, strict: bool) -> BenchmarkRows:
    seen: set[str] = set()
    for i, row in enumerate(rows):  # ids key the samples of a resumable evaluation: make them unique
        if row["id"] in seen:
            row["id"] = f"{row['id']}#{i}"
        seen.add(row["id"])
    if not rows and not skipped:
        raise ValueError(f"{name}: no rows")
    if skipped:
        listing = "\n".join(f"  {src}: {reason}" for src, reason in skipped[:MAX_LISTED_ROWS])
        if len(skipped) > MAX_LISTED_ROWS:
            listing += f"\n  ... and {len(skipped) - MAX_LISTED_ROWS} more"
        if not rows:  # one line: the commonest reason, with the first row that has it
            reason, count = Counter(why for _, why in skipped).most_common(1)[0]
            first = next(src for src, why in skipped if why == reason)
            raise ValueError(
                f"{name}: none of its {len(skipped)} row(s) can be used; {count} of them: {reason} (first: {first})"
            )
        if strict:
            if len(skipped) == 1:
                raise ValueError(f"{name}: a malformed row, {skipped[0][0]}: {skipped[0][1]}")
            raise ValueError(f"{name}: {len(skipped)} malformed row(s):\n{listing}")
        logger.warning("%s: skipped %d malformed row(s):\n%s", name, len(skipped), listing)
    return BenchmarkRows(rows, name=name, skipped=skipped)


def load_jsonl(
    path: str | Path,
    name: str | None = None,
    schema: Schema | None = None,
    problem_field: str | None = None,
    answer_field: str | None = None,
    limit: int | None = None,
    strict: bool = False,
) -> BenchmarkRows:
    """Rows of a JSON Lines file; ``schema`` or the fields given, else auto-detected from the first row."""
    path = Path(path)
    name = name or path.stem

    def records():
        size = path.stat().st_size
        with (
            path.open("rb") as f,
            tqdm(
                total=size, unit="B", unit_scale=True, desc=f"reading {path.name}", disable=size <= PROGRESS_BYTES
            ) as bar,
        ):
            line_no = 0
            while line := f.readline(MAX_ROW_BYTES + 2):
                line_no += 1
                bar.update(len(line))
                record = _record(line, f, bar, bom=line_no == 1)
                if record is not None:
                    yield line_no, f"{path}:{line_no}", record

    return _collect(records(), schema, problem_field, answer_field, name, limit, strict)


def _record(line: bytes, f, bar, bom: bool = False) -> Any:
    """The JSON record of one line of a file (its first ``MAX_ROW_BYTES + 2`` bytes, the rest still in ``f``), the
    ValueError that says why it is none, or None for a blank line."""
    if len(line.rstrip(b"\r\n")) > MAX_ROW_BYTES:
        size = len(line)
        while line and not line.endswith(b"\n"):  # the rest of the row, unread
            line = f.readline(MAX_ROW_BYTES)
            size += len(line)
            bar.update(len(line))
        return ValueError(
            f"a row of {size / 2**20:.1f} MiB, over the {MAX_ROW_BYTES >> 20} MiB limit of a row "
            "(oarl.data.benchmarks.MAX_ROW_BYTES)"
        )
    try:
        text = line.decode("utf-8-sig" if bom else "utf-8")
    except UnicodeDecodeError as e:
        return ValueError(
            f"not UTF-8 text: byte 0x{line[e.start]:02x} at byte {e.start + 1} of the line (save the file as UTF-8)"
        )
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        return ValueError(f"invalid JSON ({e.msg})")
    except ValueError:  # an integer longer than Python reads (4,300 digits)
        return ValueError("a number of more than 4,300 digits, more than Python reads: write it as text")


def load_hf(
    name: str,
    config: str | None = None,
    split: str = "test",
    schema: Schema | None = None,
    problem_field: str | None = None,
    answer_field: str | None = None,
    limit: int | None = None,
    strict: bool = False,
) -> BenchmarkRows:
    """Rows of a Hugging Face dataset (hub name, or a local folder ``datasets.load_dataset`` reads)."""
    ds = datasets.load_dataset(name, config, split=split)
    short = name.rstrip("/").split("/")[-1]
    records = ((i, f"hf:{name}:{split}:{i}", raw) for i, raw in enumerate(ds))
    return _collect(records, schema, problem_field, answer_field, short, limit, strict)


def load_benchmark(
    name_or_path: str,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    problem_field: str | None = None,
    answer_field: str | None = None,
    strict: bool = False,
    split: str = "test",
    config: str | None = None,
) -> BenchmarkRows:
    """Benchmark rows ``{"problem", "answer", "id", "source"}`` (first ``limit`` valid rows if given).

    ``name_or_path``: a known name (math500, gsm8k, aime24, amc23, minerva), a ``.jsonl`` file, or a
    Hugging Face dataset name / local dataset folder (``split``, ``config``). A known name whose file is not
    in the data directory is fetched from the hub. See the module docstring for malformed rows.
    """
    key = ALIASES.get(name_or_path.lower(), name_or_path.lower())
    path = Path(name_or_path).expanduser()
    fields = dict(problem_field=problem_field, answer_field=answer_field, limit=limit, strict=strict)
    if path.is_file():
        return load_jsonl(path, **fields)
    if key in BENCHMARKS:
        schema = BENCHMARKS[key]
        directory = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
        if directory is not None and not directory.is_dir():  # named by the user: a typo, not a reason to go online
            origin = "--data-dir" if data_dir is not None else "OARL_DATA_DIR"
            raise FileNotFoundError(
                f"benchmark data dir {directory} ({origin}) does not exist: give the folder that "
                f"holds {schema.file}, or leave {origin} unset to fetch {key} from the hub"
            )
        if directory is not None and (directory / schema.file).is_file():
            return load_jsonl(directory / schema.file, name=key, schema=schema, limit=limit, strict=strict)
        hub_name, hub_config, hub_split = schema.hub
        try:
            return load_hf(hub_name, hub_config, hub_split, limit=limit, strict=strict)
        except Exception as e:
            raise FileNotFoundError(
                f"benchmark {key!r}: no {schema.file} in data dir {directory} (set --data-dir or OARL_DATA_DIR) "
                f"and the hub dataset {hub_name} could not be loaded ({type(e).__name__}: {e})"
            ) from e
    if path.suffix in (".jsonl", ".json"):
        raise FileNotFoundError(f"no such benchmark file: {path}")
    if path.is_dir() or "/" in name_or_path:
        return load_hf(name_or_path, config, split, **fields)
    raise FileNotFoundError(
        f"unknown benchmark {name_or_path!r}: expected one of {sorted(BENCHMARKS)}, a .jsonl path or a hub dataset name"
    )
