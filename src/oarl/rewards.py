"""Verifiable rewards for math: is the completion's own final answer equal to the gold answer?

Two reward functions with TRL's signature (``f(completions, **columns) -> list[float | None]``):

    accuracy(completions, answer)   1.0 if the final answer verifies against the gold ``answer`` column,
                                    0.0 if not (or if the completion has no final answer),
                                    None if the gold answer is missing (TRL treats None as unscorable)
    format(completions)             1.0 if the completion states a parsable final answer, else 0.0

The final answer is found by ``oarl.credit.answer.extract_answer`` (the same parser the credit segmentation
uses), then checked in two steps:

1. fast path, in this process: equal strings (up to spaces and ``$``), or equal plain numbers
   (``1,000`` = ``1000.0``); two plain numbers that differ are decided here too;
2. math-verify ``parse`` + ``verify`` for everything else (fractions, LaTeX, sets, intervals, ...).

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
from decimal import Decimal, InvalidOperation
from typing import Any

from oarl.credit.answer import extract_answer

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 2.0  # per item: a pathological expression costs at most this and scores 0
WORKER_START_TIMEOUT_S = 120.0  # importing sympy on a busy machine can take a while
WORKER_RETRY_AFTER_S = 60.0  # after a failed worker start, use the fast path only for this long
WORKER_MEMORY_LIMIT_BYTES = 4 * 1024**3  # address-space cap of the worker (POSIX), against runaway sympy
NUMERIC_REL_TOL = Decimal("1e-9")  # fast path: plain numbers closer than this are equal

__all__ = ["accuracy", "format", "verify", "is_correct", "normalize_gold", "completion_text", "answer_key", "shutdown_verifier"]


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
# fast path

_SPACES = re.compile(r"\s+|\\[,!;: ]")
_NUMBER = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?")


def _canonical(text: str) -> str:
    text = _SPACES.sub("", text)
    text = text.replace("\\$", "").replace("$", "").replace("\\left", "").replace("\\right", "")
    return text.rstrip(".")


def _as_number(text: str) -> Decimal | None:
    """A plain decimal number (``-1,234.50``), else None; ``canonical`` input."""
    if not text or not _NUMBER.fullmatch(text) or not any(c.isdigit() for c in text):
        return None
    try:
        return Decimal(text.replace(",", ""))
    except InvalidOperation:
        return None


# a plain number followed by a unit in words ("1,000 dollars", "18 eggs per day"): the number is the answer
_NUMBER_WITH_UNIT = re.compile(r"\s*\\?\$?\s*([+-]?[\d,]*\.?\d+)\s*((?:[A-Za-z]{2,}\.?\s*){1,4})")
_NOT_UNITS = {"pi", "sqrt", "frac", "i", "e", "and", "or", "times", "cdot"}


def _strip_unit(text: str) -> str:
    m = _NUMBER_WITH_UNIT.fullmatch(text)
    if m is None or any(w.lower().rstrip(".") in _NOT_UNITS for w in m.group(2).split()):
        return text
    return m.group(1)


def _fast_verdict(pred: str, gold: str) -> bool | None:
    """True/False when the fast path can decide, None to ask math-verify."""
    p, g = _canonical(pred), _canonical(gold)
    if p == g:
        return True
    pn, gn = _as_number(p), _as_number(g)
    if pn is None and gn is not None:
        pn = _as_number(_canonical(_strip_unit(pred)))
    if pn is None or gn is None:
        return None
    if abs(pn - gn) <= NUMERIC_REL_TOL * max(Decimal(1), abs(gn)):
        return True
    # math-verify rounds floats to 6 places: let it decide when the two agree that far
    return None if abs(pn - gn) <= Decimal("1e-6") * max(Decimal(1), abs(gn)) else False


def answer_key(answer: str) -> str:
    """A canonical form of an answer for majority voting: equal keys verify as equal (not the converse).
    Spaces, ``$``, ``\\left``/``\\right`` and a final period are dropped; plain numbers are normalised
    (``1,000.0`` -> ``1000``)."""
    text = _canonical(answer)
    number = _as_number(text)
    if number is None:
        return text
    number = number.normalize()
    return f"{number:f}" if abs(number.adjusted()) < 30 else str(number)


# ----------------------------------------------------------------------------------------------------------
# the math-verify worker subprocess

# Runs as `python -c _WORKER_CODE`: reads {"pred", "gold"} JSON lines, answers {"ok": bool} lines.
_WORKER_CODE = r"""
import functools, json, logging, sys
try:
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]), int(sys.argv[1])))
except Exception:
    pass
logging.disable(logging.WARNING)
from math_verify import parse, verify

def _wrap(answer):
    answer = answer.strip()
    if answer.startswith("\\boxed"):
        return answer
    return "\\boxed{" + answer + "}"

@functools.lru_cache(maxsize=4096)
def _parse(answer):
    return parse(_wrap(answer), parsing_timeout=None)

out = sys.stdout
out.write(json.dumps({"ready": True}) + "\n")
out.flush()
for line in sys.stdin:
    try:
        req = json.loads(line)
        gold, pred = _parse(req["gold"]), _parse(req["pred"])
        ok = bool(gold) and bool(pred) and bool(verify(gold, pred, timeout_seconds=None))
        resp = {"ok": ok}
    except BaseException as e:  # MemoryError, RecursionError, sympy errors: the item is wrong, go on
        resp = {"ok": False, "error": type(e).__name__ + ": " + str(e)[:200]}
    out.write(json.dumps(resp) + "\n")
    out.flush()
"""


class _Worker:
    """One math-verify subprocess with a reader thread; ``check`` waits for at most ``timeout_s``."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER_CODE, str(WORKER_MEMORY_LIMIT_BYTES)],
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

    def check(self, pred: str, gold: str, timeout_s: float) -> bool | None:
        """The verdict, or None if the worker timed out or died (the caller then restarts it)."""
        try:
            self.proc.stdin.write(json.dumps({"pred": pred, "gold": gold}) + "\n")  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
        except (BrokenPipeError, OSError):
            return None
        resp = self._next(timeout_s)
        return None if resp is None else bool(resp.get("ok"))

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


def _math_verify(pred: str, gold: str, timeout_s: float) -> bool:
    global _worker, _worker_pid, _worker_failed_at
    with _lock:
        if _worker is not None and _worker_pid != os.getpid():
            _worker = None  # inherited through fork: not ours to talk to
        if _worker is None:
            if _worker_failed_at is not None and time.monotonic() - _worker_failed_at < WORKER_RETRY_AFTER_S:
                return False
            try:
                _worker, _worker_pid = _Worker(), os.getpid()
                stats["worker_starts"] += 1
                _worker_failed_at = None
            except Exception as e:  # never kill the run: score what the fast path cannot decide as 0
                logger.warning("math-verify worker failed to start (%s); non-trivial answers score 0", e)
                _worker_failed_at = time.monotonic()
                return False
        stats["math_verify"] += 1
        verdict = _worker.check(pred, gold, timeout_s)
        if verdict is None:
            stats["timeouts"] += 1
            logger.warning("math-verify gave no verdict within %.1fs; scored 0: pred=%r gold=%r", timeout_s, pred[:80], gold[:80])
            _worker.close()
            _worker = None
            return False
        return verdict


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
    if use_fast_path:
        verdict = _fast_verdict(pred_text, gold)
        if verdict is not None:
            stats["fast"] += 1
            return verdict
    return _math_verify(pred_text, gold, timeout_s)


def is_correct(completion_text: str, gold: Any, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Does the completion's final answer (``extract_answer``) verify against ``gold``?"""
    gold_text = normalize_gold(gold)
    pred = extract_answer(completion_text)
    return gold_text is not None and pred is not None and verify(pred, gold_text, timeout_s)


def accuracy(completions: list, answer: list, **kwargs) -> list[float | None]:
    """TRL reward: 1.0 if the completion's final answer verifies against the ``answer`` column, 0.0 if it
    does not or has none, None if the gold answer is missing (unscorable)."""
    timeout_s = kwargs.get("verify_timeout_s", DEFAULT_TIMEOUT_S)
    rewards: list[float | None] = []
    for completion, gold in zip(completions, answer, strict=True):
        gold_text = normalize_gold(gold)
        if gold_text is None:
            rewards.append(None)
            continue
        pred = extract_answer(completion_text(completion))
        rewards.append(1.0 if pred is not None and verify(pred, gold_text, timeout_s) else 0.0)
    return rewards


def format(completions: list, **kwargs) -> list[float]:  # noqa: A001 - the reward's name in TRL's logs
    """TRL reward: 1.0 if the completion states a parsable final answer, else 0.0."""
    return [0.0 if extract_answer(completion_text(c)) is None else 1.0 for c in completions]
