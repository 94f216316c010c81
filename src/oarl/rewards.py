"""Verifiable rewards for math: is the completion's own final answer equal to the gold answer?

Two reward functions with TRL's signature (``f(completions, **columns) -> list[float | None]``):

    accuracy(completions, answer)   1.0 if the final answer verifies against the gold ``answer`` column,
                                    0.0 if not (or if the completion has no final answer),
                                    None if the gold answer is missing (TRL treats None as unscorable)
    format(completions)             1.0 if the completion states a parsable final answer, else 0.0

The final answer is found by ``oarl.credit.answer.extract_answer`` (the same parser the credit segmentation
uses). Both it and the gold go through ``normalize_answer`` (one spelling for degrees, ordinals, scientific
notation, mixed numbers, unicode operators), then are checked in two steps:

1. fast path, in this process: equal strings (up to spaces, ``$``, ``\\left``/``\\right``), or numbers
   written as integers, decimals, fractions, mixed numbers or percentages (``1,000`` = ``1000.0``,
   ``\\frac12`` = ``0.5``), decided exactly in rationals;
2. math-verify ``parse`` + ``verify`` for everything else (LaTeX expressions, sets, intervals, matrices,
   ...), with math-verify's number comparison replaced by an exact one (``oarl.mathverify_worker``).

**Numbers.** Integers and rationals compare exactly (``10000000001`` is not ``10000000000``, ``2^{-98}``
is not ``2^{-99}``). A tolerance applies only where a side is written as a decimal, which may be an
approximation: ``|a - b| <= 1e-6 * min(1, max(|a|, |b|))`` (``approximately_equal``), relative below 1
and six decimal places above, so it never equates two different integers.

Bounded time per item, from any thread. math-verify's own timeouts use ``signal.alarm``, which fails
outside the main thread (TRL may score rewards from a worker thread), so they are off and math-verify runs
in a persistent worker subprocess instead. Each item has a deadline (``timeout_s``, default 2 s); when it
passes, the worker is killed (and restarted on the next call), and the item scores 0. A pathological
expression such as ``10^{10^{10^{10}}}`` therefore costs about ``timeout_s`` and never hangs or kills the
run. The worker imports only math-verify (not torch, not oarl), so it starts in about a second.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from oarl.credit.answer import extract_answer, match_brace
from oarl.mathverify_worker import approximately_equal

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 2.0  # per item: a pathological expression costs at most this and scores 0
WORKER_START_TIMEOUT_S = 120.0  # importing sympy on a busy machine can take a while
WORKER_RETRY_AFTER_S = 60.0  # after a failed worker start, use the fast path only for this long
WORKER_MEMORY_LIMIT_BYTES = 4 * 1024**3  # address-space cap of the worker (POSIX), against runaway sympy

__all__ = ["accuracy", "format", "verify", "is_correct", "normalize_gold", "normalize_answer", "gold_answers", "matches_gold",
           "completion_text", "answer_key", "group_by_value", "value_key", "shutdown_verifier"]


# ----------------------------------------------------------------------------------------------------------
# gold answers and completions as text


def normalize_gold(value: Any) -> str | None:
    """A gold answer as a string, or None if there is none.

    Numbers (amc23 stores ``27.0``) become ``"27"``; a GSM8K solution (``"... #### 18"``) becomes the
    text after its last ``####``; surrounding ``$`` and spaces are stripped; empty means missing.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:  # NaN: a missing value in a pandas-made file
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    if not isinstance(value, str):
        return None
    text = value
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    text = text.strip()
    if len(text) >= 2 and text.startswith("$") and text.endswith("$") and not text.endswith("\\$"):
        text = text.strip("$").strip()
    return text or None


def gold_answers(value: Any) -> list[str]:
    """The acceptable gold answers of one problem, each normalised by ``normalize_gold``; [] if there is none.

    A scalar is one answer. A list or tuple (olympiad-style sets store ``["$\\frac{1}{2}$"]``) is a set of
    acceptable answers: a one-element list is that answer, and a completion is right when it matches any of
    the answers of a longer one. Missing and empty items are dropped, as are repeats.
    """
    values = value if isinstance(value, (list, tuple)) else [value]
    answers: list[str] = []
    for item in values:
        gold = None if isinstance(item, (list, tuple)) else normalize_gold(item)
        if gold is not None and gold not in answers:
            answers.append(gold)
    return answers


def completion_text(completion: Any) -> str:
    """The text of one completion: a string, or (conversational data) a list of chat messages whose
    assistant contents are joined; a content may itself be a list of ``{"type": "text", "text": ...}``."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    parts = []
    for message in completion or []:
        if not isinstance(message, dict) or message.get("role", "assistant") != "assistant":
            continue
        content = message.get("content", "")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type", "text") == "text")
    return "".join(parts)


# ----------------------------------------------------------------------------------------------------------
# notation: what both sides go through before any comparison

_DEGREES = re.compile(r"(?<=[\d})])\s*(?:\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|°|\\degree\b)")
_ORDINAL = re.compile(
    r"(?<=\d)\s*(?:\^\s*\{?\s*(?:\\(?:text|mathrm|textrm)\s*\{\s*)?(?:st|nd|rd|th)\s*\}?\s*\}?"
    r"|\\(?:text|mathrm|textsuperscript)\s*\{\s*(?:st|nd|rd|th)\s*\}|(?:st|nd|rd|th))\s*\.?\s*$"
)
_TIMES_X = re.compile(r"(?<=\d)\s+[xX]\s+(?=\d)")  # "25 x 4": times, as GSM8K-style text writes it
_SCIENTIFIC = re.compile(r"(?<![\w.\\])(\d+(?:\.\d+)?)[eE]([-+]?\d+)(?![\w.])")
_MIXED = re.compile(r"^\s*([-+]?)(\d+)\s+(\d+)\s*/\s*(\d+)\s*$")  # "1 1/4", not "1/4"
_BOLD = re.compile(r"\\(?:textbf|mathbf|boldsymbol|bm)\s*(?=\{)")
_TEXT_NUMBER = re.compile(r"\\(?:text|textrm|mathrm)\s*\{\s*(\(?\s*[-+]?\d+(?:\.\d+)?\s*\)?)\s*\}")
_PARENTHESISED_NUMBER = re.compile(r"^\(\s*([-+]?\d+(?:\.\d+)?)\s*\)$")  # AMC/AIME's "(073)"; not "(1,2)"
_PLAIN_NUMBER = re.compile(r"\s*[-+]?\d[\d,]*(?:\.\d+)?\s*")  # nothing to normalise
_SYMBOLS = {"−": "-", "×": "\\times ", "÷": "\\div ", "·": "\\cdot ", "π": "\\pi ", "∞": "\\infty ", "{,}": ","}


def normalize_answer(text: str) -> str:
    """One spelling for notations that mean the same number; both the answer and the gold go through it.

    Unicode operators (``−``, ``×``, ``π``) become LaTeX; ``1{,}000`` becomes ``1,000``; bold is dropped
    and a number in text or in parentheses is that number (AIME's ``\\textbf{(073)}`` -> ``073``); degree
    marks (``30°``, ``30^\\circ``) and an ordinal suffix at the end (``12^{\\text{th}}``, ``12th``) are
    dropped; scientific notation ``1.5e3`` becomes ``1.5\\times10^{3}``, and ``25 x 4`` ``25 \\times 4``;
    a plain mixed number ``1 1/4`` becomes ``\\frac{5}{4}`` (as MATH reads ``1\\frac{1}{4}``).
    """
    if _PLAIN_NUMBER.fullmatch(text):
        return text.strip()
    for symbol, latex in _SYMBOLS.items():
        text = text.replace(symbol, latex)
    while (bold := _BOLD.search(text)) is not None:  # bold is formatting: \textbf{(073)} -> (073)
        close = match_brace(text, bold.end())
        if close is None:
            break
        text = text[: bold.start()] + text[bold.end() + 1 : close] + text[close + 1 :]
    text = _TEXT_NUMBER.sub(r"\1", text).strip()
    text = _PARENTHESISED_NUMBER.sub(r"\1", text)
    text = _DEGREES.sub("", text)
    text = _ORDINAL.sub("", text)
    text = _SCIENTIFIC.sub(r"\1\\times10^{\2}", text)
    text = _TIMES_X.sub(r" \\times ", text)
    mixed = _MIXED.match(text)
    if mixed and int(mixed[3]) < int(mixed[4]):
        sign, whole, num, den = mixed[1], int(mixed[2]), int(mixed[3]), int(mixed[4])
        text = f"{sign}\\frac{{{whole * den + num}}}{{{den}}}"
    return text.strip()


# ----------------------------------------------------------------------------------------------------------
# fast path: equal strings, and numbers that are integers, decimals or fractions, decided in this process

_SPACES = re.compile(r"\s+|\\[,!;: ]")
_FRAC = re.compile(r"\\[dt]frac")
_EXACT = re.compile(
    r"(?P<sign>[-+]?)(?:"
    r"(?P<whole>\d+)?\\frac(?:\{(?P<fn>[-+]?\d+)\}\{(?P<fd>[-+]?\d+)\}|(?P<sn>\d)(?P<sd>\d))"  # \frac{1}{2}, 1\frac{1}{4}, \frac12
    r"|(?P<an>\d+)/(?P<ad>\d+)"  # 3/4
    r"|(?P<dec>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)"  # 1,000  3.5  .5
    r"(?:(?:\\times|\\cdot|\*)10\^(?:\{(?P<e1>[-+]?\d{1,4})\}|(?P<e2>[-+]?\d)))?"  # 1.5\times10^{3}
    r")(?P<pct>\\?%)?"
)


def _canonical(text: str) -> str:
    text = _SPACES.sub("", text)
    text = text.replace("\\$", "").replace("$", "").replace("\\left", "").replace("\\right", "")
    return _FRAC.sub(r"\\frac", text).rstrip(".")


@dataclass(frozen=True)
class _Number:
    value: Fraction
    decimal: bool  # written with a decimal point or a power of ten: may be an approximation
    percent: bool


def _as_number(text: str) -> _Number | None:
    """An integer, decimal, fraction, mixed number or percentage, exactly (``canonical`` input), else None."""
    m = _EXACT.fullmatch(text)
    if m is None:
        return None
    if m["dec"] is not None:
        digits = m["dec"].replace(",", "")
        exponent = int(m["e1"] or m["e2"] or 0)
        value = Fraction(digits) * Fraction(10) ** exponent
        decimal = "." in digits or m["e1"] is not None or m["e2"] is not None
    else:
        num, den = (m["an"], m["ad"]) if m["an"] is not None else (m["fn"] or m["sn"], m["fd"] or m["sd"])
        if int(den) == 0 or (m["whole"] is not None and (num.startswith(("-", "+")) or den.startswith(("-", "+")))):
            return None
        value = int(m["whole"] or 0) + Fraction(int(num), int(den))
        decimal = False
    return _Number(-value if m["sign"] == "-" else value, decimal, m["pct"] is not None)


def _numbers_equal(a: _Number, b: _Number) -> bool:
    """Exact, unless a side is a decimal (then ``approximately_equal``); a percentage on one side only
    matches either its number or its number / 100 (``50\\%`` = ``50`` = ``0.5``, as math-verify has it)."""
    values_a = [a.value, a.value / 100] if a.percent and not b.percent else [a.value]
    values_b = [b.value, b.value / 100] if b.percent and not a.percent else [b.value]
    pairs = [(x, y) for x in values_a for y in values_b]
    if any(x == y for x, y in pairs):
        return True
    return (a.decimal or b.decimal) and any(approximately_equal(x, y) for x, y in pairs)


# a number followed by a unit in words ("1,000 dollars", "18 eggs per day", "72\text{ clips}"): the number
_NUMBER_WITH_UNIT = re.compile(
    r"\s*(?:\\\$|\$)?\s*([+-]?[\d,]*\.?\d+)\s*(?:\\(?:text|mbox|mathrm)\s*\{\s*((?:[A-Za-z]+\.?\s*){1,4})\}"
    r"|((?:[A-Za-z]{2,}\.?\s*){1,4}))"
)
_NOT_UNITS = {"pi", "sqrt", "frac", "i", "e", "and", "or", "times", "cdot"}


def _strip_unit(text: str) -> str:
    m = _NUMBER_WITH_UNIT.fullmatch(text)
    if m is None or any(w.lower().rstrip(".") in _NOT_UNITS for w in (m[2] or m[3]).split()):
        return text
    return m[1]


def _fast_verdict(pred: str, gold: str) -> bool | None:
    """True/False when the fast path can decide (normalised input), None to ask math-verify."""
    p, g = _canonical(pred), _canonical(gold)
    if p == g:
        return True
    pn, gn = _as_number(p), _as_number(g)
    if pn is None and gn is not None:
        pn = _as_number(_canonical(_strip_unit(pred)))
    elif gn is None and pn is not None:
        gn = _as_number(_canonical(_strip_unit(gold)))
    if pn is None or gn is None:
        return None
    return _numbers_equal(pn, gn)


def answer_key(answer: str) -> str:
    """A canonical form of an answer for majority voting: equal keys verify as equal (not the converse).
    Spaces, ``$``, ``\\left``/``\\right`` and a final period are dropped, ``\\dfrac`` is ``\\frac``; numbers
    are keyed by their exact value (``1,000.0`` and ``1000`` -> ``1000``; ``0.5``, ``1/2``, ``\\frac12`` ->
    ``1/2``)."""
    text = _canonical(normalize_answer(answer))
    number = _as_number(text)
    if number is None:
        return text
    return str(number.value) + ("%" if number.percent else "")


# ----------------------------------------------------------------------------------------------------------
# the math-verify worker subprocess

WORKER_SCRIPT = Path(__file__).with_name("mathverify_worker.py")  # it imports no oarl: the worker starts fast
# run as a file, without putting its folder (oarl's modules) on the path
_RUN_WORKER = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__')"


class _Worker:
    """One math-verify subprocess with a reader thread; ``check`` waits for at most ``timeout_s``."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _RUN_WORKER, str(WORKER_SCRIPT), str(WORKER_MEMORY_LIMIT_BYTES)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True, name="oarl-verify-reader")
        self.reader.start()
        ready = self._next(WORKER_START_TIMEOUT_S)
        if ready is None or not ready.get("ready"):
            self.close()
            raise RuntimeError("the math-verify worker did not start (is math-verify installed?)")

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.lines.put(line)
        self.lines.put(None)  # EOF: the worker died

    def _next(self, timeout_s: float) -> dict | None:
        try:
            line = self.lines.get(timeout=timeout_s)
        except queue.Empty:
            return None
        return None if line is None else json.loads(line)

    def ask(self, request: dict, timeout_s: float) -> dict | None:
        """The worker's answer to one request, or None if it timed out or died (the caller then restarts it)."""
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
        except (BrokenPipeError, OSError):
            return None
        return self._next(timeout_s)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()  # type: ignore[union-attr]
            except Exception:
                pass


_lock = threading.Lock()
_worker: _Worker | None = None
_worker_pid: int | None = None  # the process that owns _worker (a forked child must start its own)
_worker_failed_at: float | None = None
stats = {"fast": 0, "math_verify": 0, "timeouts": 0, "worker_starts": 0}  # counters, for logs and tests


def shutdown_verifier() -> None:
    """Stop the worker subprocess (it is restarted on demand)."""
    global _worker
    with _lock:
        if _worker is not None and _worker_pid == os.getpid():
            _worker.close()
        _worker = None


atexit.register(shutdown_verifier)


def _ask_worker(request: dict, timeout_s: float) -> dict | None:
    """Send one request to the math-verify worker (started on demand); None if it failed, timed out or died."""
    global _worker, _worker_pid, _worker_failed_at
    with _lock:
        if _worker is not None and _worker_pid != os.getpid():
            _worker = None  # inherited through fork: not ours to talk to
        if _worker is None:
            if _worker_failed_at is not None and time.monotonic() - _worker_failed_at < WORKER_RETRY_AFTER_S:
                return None
            try:
                _worker, _worker_pid = _Worker(), os.getpid()
                stats["worker_starts"] += 1
                _worker_failed_at = None
            except Exception as e:  # never kill the run: score what the fast path cannot decide as 0
                logger.warning("math-verify worker failed to start (%s); non-trivial answers score 0", e)
                _worker_failed_at = time.monotonic()
                return None
        stats["math_verify"] += 1
        response = _worker.ask(request, timeout_s)
        if response is None:
            stats["timeouts"] += 1
            logger.warning("math-verify gave no answer within %.1fs; scored 0: %s", timeout_s, json.dumps(request)[:200])
            _worker.close()
            _worker = None
        return response


def _math_verify(pred: str, gold: str, timeout_s: float) -> bool:
    response = _ask_worker({"pred": pred, "gold": gold}, timeout_s)
    return bool(response and response.get("ok"))


def value_key(answer: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> str | None:
    """The exact value of an answer that is a real constant, as a key (equal keys: equal values), or None.

    Integers and fractions are keyed here (``q:1/2``); other constants without a decimal (``\\sqrt{2}/2``,
    ``\\pi``, ``\\sin\\frac{\\pi}{6}``) by the worker: exactly if rational, else by 30 significant digits
    of their value (``r:...``). None for decimals (approximations), percentages, expressions with variables,
    sets, text, or when the worker gives no answer.
    """
    number = _as_number(_canonical(normalize_answer(answer)))
    if number is not None:
        return None if number.decimal or number.percent else f"q:{number.value}"
    response = _ask_worker({"value": normalize_answer(answer)}, timeout_s)
    return None if response is None else response.get("value")


# ----------------------------------------------------------------------------------------------------------
# public API


def verify(pred_text: str, gold: str, timeout_s: float = DEFAULT_TIMEOUT_S, use_fast_path: bool = True) -> bool:
    """Is the answer ``pred_text`` (an extracted final answer, not a whole completion) equal to ``gold``?

    Safe from any thread; takes at most about ``timeout_s`` per call (a timeout counts as False).
    ``use_fast_path=False`` sends every pair to math-verify (used to test that math-verify parses the gold).
    """
    if pred_text is None or gold is None:
        return False
    pred_text, gold = str(pred_text).strip(), str(gold).strip()
    if not pred_text or not gold:
        return False
    if use_fast_path and pred_text == gold:
        stats["fast"] += 1
        return True
    pred_text, gold = normalize_answer(pred_text), normalize_answer(gold)
    if use_fast_path:
        verdict = _fast_verdict(pred_text, gold)
        if verdict is not None:
            stats["fast"] += 1
            return verdict
    return _math_verify(pred_text, gold, timeout_s)


def group_by_value(answers: list[str | None], timeout_s: float = DEFAULT_TIMEOUT_S) -> list[int | None]:
    """Group answers that are equal by value: the label of each answer is the index of the first answer of its
    group (None stays None). ``["\\frac12", "3", "0.5"]`` -> ``[0, 1, 0]``.

    Cost, for n answers with D distinct ``answer_key`` values: equal keys share a group for free; each
    distinct key gets its ``value_key`` (in this process for integers and fractions, one worker call for
    another constant), and keys of equal value share a group. ``verify`` is called only where a side has no
    value key (decimals, expressions in variables, sets, ...), against the first answer of each group so
    far: 64 distinct constants cost 64 worker calls, not 64 x 63 / 2.
    """
    labels: list[int | None] = [None] * len(answers)
    label_of_key: dict[str, int] = {}
    label_of_value: dict[str, int] = {}
    groups: list[tuple[str, int, str | None]] = []  # (first answer, its index, its value key)
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        key = answer_key(answer)
        if key not in label_of_key:
            value = value_key(answer, timeout_s)
            label = label_of_value.get(value) if value is not None else None
            if label is None:
                label = next((index for first, index, first_value in groups
                              if (value is None or first_value is None) and verify(answer, first, timeout_s)), None)
            if label is None:
                label = i
                groups.append((answer, i, value))
            if value is not None:
                label_of_value.setdefault(value, label)
            label_of_key[key] = label
        labels[i] = label_of_key[key]
    return labels


def matches_gold(pred: str | None, gold: Any, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Does the extracted answer ``pred`` verify against one of the acceptable answers of ``gold`` (a scalar or
    a list of them, see ``gold_answers``)? False when either side is missing."""
    return pred is not None and any(verify(pred, g, timeout_s) for g in gold_answers(gold))


def is_correct(completion_text: str, gold: Any, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Does the completion's final answer (``extract_answer``) verify against ``gold`` (a scalar or a list of
    acceptable answers)?"""
    return matches_gold(extract_answer(completion_text), gold, timeout_s)


def accuracy(completions: list, answer: list, **kwargs) -> list[float | None]:
    """TRL reward: 1.0 if the completion's final answer verifies against the ``answer`` column (a gold answer, or
    a list of acceptable ones: any match scores), 0.0 if it does not or has none, None if the gold answer is
    missing (unscorable)."""
    timeout_s = kwargs.get("verify_timeout_s", DEFAULT_TIMEOUT_S)
    rewards: list[float | None] = []
    for completion, gold in zip(completions, answer, strict=True):
        if not gold_answers(gold):
            rewards.append(None)
            continue
        pred = extract_answer(completion_text(completion))
        rewards.append(1.0 if matches_gold(pred, gold, timeout_s) else 0.0)
    return rewards


def format(completions: list, **kwargs) -> list[float]:  # noqa: A001 - the reward's name in TRL's logs
    """TRL reward: 1.0 if the completion states a parsable final answer, else 0.0."""
    return [0.0 if extract_answer(completion_text(c)) is None else 1.0 for c in completions]
