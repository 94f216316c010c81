"""Verifiable rewards for math: is the completion's own final answer equal to the gold answer?

Reward functions with TRL's signature (``f(completions, **columns) -> list[float | None]``):

    accuracy(completions, answer)   1.0 if the final answer verifies against the gold ``answer`` column,
                                    0.0 if not (or if the completion has no final answer),
                                    None if the gold answer is missing (TRL treats None as unscorable)
    format(completions)             1.0 if the completion states a parsable final answer, else 0.0
    think_format(completions)       1.0 if it is ``<think>...</think><answer>...</answer>`` (R1-Zero, TinyZero,
                                    open-r1 recipes), else 0.0

The final answer is found by ``oarl.answer.extract_answer`` (the same parser the credit segmentation
uses). Both it and the gold go through ``oarl.notation.normalize_answer`` (one spelling for degrees,
ordinals, scientific notation, mixed numbers, unicode operators, number words, ``-1i``, a qualifier after
the answer), then are checked in steps:

1. fast path, in this process (``oarl.notation.fast_verdict``): equal strings (up to spaces, ``$``,
   ``\\left``/``\\right``), or numbers written as integers, decimals, fractions, mixed numbers, percentages
   or with a scale word (``1,000`` = ``1000.0``, ``\\frac12`` = ``0.5``), decided exactly in rationals; and
   the forms that must not be confused: an open list (``2, 4, 6, ...``) is not its first items, a list
   (``45, 210``) is not a number, numbers with base subscripts compare by value (``1011_3`` is not
   ``1011_2``);
2. a multiple-choice option (``(B) 2,025``, ``C: The enzyme is inhibited``): against a gold letter the
   letters decide, against another gold the option's text;
3. math-verify ``parse`` + ``verify`` for everything else (LaTeX expressions, sets, intervals, matrices,
   ...), with math-verify's number comparison replaced by an exact one (``oarl.mathverify_worker``). A list
   compares as a set: one that restates a single answer is that answer (MATH's ``\\boxed{15\\frac{39}{40}},
   or \\boxed{\\frac{639}{40}}`` against ``\\frac{639}{40}``), ``2, 4`` against ``2`` is wrong.

**Length.** An answer (or gold) longer than ``MAX_ANSWER_CHARS`` (1,000 characters, ``oarl.notation``) is not
read: it is wrong, unless it is the very same text as the gold. A degenerate completion (a repetition loop inside
``\\boxed{}``) gets a verdict at the cost of a normal one, and never raises.

**Numbers.** Integers and rationals compare exactly (``10000000001`` is not ``10000000000``, ``2^{-98}``
is not ``2^{-99}``). A tolerance applies only where a side is written as a decimal, which may be an
approximation: ``|a - b| <= 1e-6 * min(1, max(|a|, |b|))`` (``approximately_equal``), relative below 1
and six decimal places above, so it never equates two different integers.

Bounded time per item, from any thread. math-verify's own timeouts use ``signal.alarm``, which fails
outside the main thread (TRL may score rewards from a worker thread), so they are off and math-verify runs
in a persistent worker subprocess instead, which dies with this process whatever it died of (SIGKILL, the OOM
killer, SIGTERM: ``oarl.mathverify_worker.die_with_parent``). Each item has a deadline (``timeout_s``, default 2 s); when it
passes, the worker is killed (and restarted on the next call), and the item scores 0. A pathological
expression such as ``10^{10^{10^{10}}}`` therefore costs about ``timeout_s`` and never hangs or kills the
run. The worker imports only math-verify (not torch, not oarl), so it starts in about a second.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from oarl.answer import extract_answer
from oarl.notation import answer_key, as_number, canonical, fast_verdict, normalize_answer, option, too_long

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 2.0  # per item: a pathological expression costs at most this and scores 0
WORKER_START_TIMEOUT_S = 120.0  # importing sympy on a busy machine can take a while
WORKER_RETRY_AFTER_S = 60.0  # after a failed worker start, use the fast path only for this long
WORKER_MEMORY_LIMIT_BYTES = 4 * 1024**3  # address-space cap of the worker (POSIX), against runaway sympy

__all__ = [
    "accuracy",
    "format",
    "think_format",
    "verify",
    "is_correct",
    "normalize_gold",
    "normalize_answer",
    "gold_answers",
    "matches_gold",
    "completion_text",
    "answer_key",
    "group_by_value",
    "value_key",
    "shutdown_verifier",
]


# ----------------------------------------------------------------------------------------------------------
# gold answers and completions as text


def normalize_gold(value: Any) -> str | None:
    """A gold answer as a string, or None if there is none.

    Numbers (amc23 stores ``27.0``) become ``"27"``, a float that is not finite (NaN, infinity) is missing; a
    GSM8K solution (``"... #### 18"``) becomes the text after its last ``####``; surrounding ``$`` and spaces are
    stripped; empty means missing.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):  # NaN: a missing value in a pandas-made file; inf: JSON's Infinity or 1e400
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
# the math-verify worker subprocess

WORKER_SCRIPT = Path(__file__).with_name("mathverify_worker.py")  # it imports no oarl: the worker starts fast
# run as a file, without putting its folder (oarl's modules) on the path
_RUN_WORKER = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__')"


_spawner: tuple[int, queue.Queue] | None = None  # (process id, requests) of the thread that starts workers


def _popen(args: list[str], **kwargs) -> subprocess.Popen:
    """``subprocess.Popen(args, **kwargs)``, run by one thread that lives as long as this process. The worker dies
    with its parent through Linux's parent-death signal, and Linux sends it when the *thread* that started the
    worker ends: a worker started from a short-lived thread (TRL may score rewards in one) would die with it."""
    global _spawner
    if _spawner is None or _spawner[0] != os.getpid():  # none yet, or inherited through fork (its thread is not)
        _spawner = (os.getpid(), queue.Queue())
        threading.Thread(target=_spawn_forever, args=(_spawner[1],), daemon=True, name="oarl-verify-spawner").start()
    reply: queue.Queue = queue.Queue()
    _spawner[1].put((args, kwargs, reply))
    proc = reply.get()
    if isinstance(proc, BaseException):
        raise proc
    return proc


def _spawn_forever(requests: queue.Queue) -> None:
    while True:
        args, kwargs, reply = requests.get()
        try:
            reply.put(subprocess.Popen(args, **kwargs))
        except BaseException as e:  # given to the caller
            reply.put(e)


class _Worker:
    """One math-verify subprocess with a reader thread; ``check`` waits for at most ``timeout_s``."""

    def __init__(self) -> None:
        self.proc = _popen(
            [sys.executable, "-c", _RUN_WORKER, str(WORKER_SCRIPT), str(os.getpid()), str(WORKER_MEMORY_LIMIT_BYTES)],
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
stats = {"fast": 0, "math_verify": 0, "timeouts": 0, "worker_starts": 0, "too_long": 0}  # counters, for logs and tests


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
            logger.warning(
                "math-verify gave no answer within %.1fs; scored 0: %s", timeout_s, json.dumps(request)[:200]
            )
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
    sets, text, an answer that is ``too_long``, or when the worker gives no answer.
    """
    if too_long(answer):
        return None
    number = as_number(canonical(normalize_answer(answer)))
    if number is not None:
        return None if number.decimal or number.percent or number.scale != 1 else f"q:{number.value}"
    response = _ask_worker({"value": normalize_answer(answer)}, timeout_s)
    return None if response is None else response.get("value")


# ----------------------------------------------------------------------------------------------------------
# public API


def verify(pred_text: str, gold: str, timeout_s: float = DEFAULT_TIMEOUT_S, use_fast_path: bool = True) -> bool:
    """Is the answer ``pred_text`` (an extracted final answer, not a whole completion) equal to ``gold``?

    Safe from any thread; takes at most about ``timeout_s`` per call (a timeout counts as False). The steps
    are those of the module docstring. ``use_fast_path=False`` sends every pair to math-verify alone, without
    oarl's steps 1 and 2 (used to test that math-verify parses the gold).
    """
    if pred_text is None or gold is None:
        return False
    pred_text, gold = str(pred_text).strip(), str(gold).strip()
    if not pred_text or not gold:
        return False
    if use_fast_path and pred_text == gold:
        stats["fast"] += 1
        return True
    if too_long(pred_text) or too_long(gold):  # not read: wrong (module docstring)
        stats["too_long"] += 1
        return False
    pred_text, gold = normalize_answer(pred_text), normalize_answer(gold)
    if not use_fast_path:
        return _math_verify(pred_text, gold, timeout_s)
    verdict = fast_verdict(pred_text, gold)
    if verdict is not None:
        stats["fast"] += 1
        return verdict
    pred_option, gold_option = option(pred_text), option(gold)
    if pred_option is not None and gold_option is not None:  # "(B) 2,025" against "B": the letters decide
        return pred_option[0] == gold_option[0]
    chosen = pred_option or gold_option  # "(B) 2,025" against "2025": the option's text decides
    if chosen is not None and chosen[1]:
        return verify(chosen[1], gold if pred_option else pred_text, timeout_s)
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
                label = next(
                    (
                        index
                        for first, index, first_value in groups
                        if (value is None or first_value is None) and verify(answer, first, timeout_s)
                    ),
                    None,
                )
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


_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def _think_then_answer(text: str) -> bool:
    text = text.strip()
    if text.startswith("<think>"):  # else the prompt opened it (DeepSeek-R1's chat template, TinyZero's prompt)
        text = text[len("<think>") :]
    think, closed, rest = text.partition("</think>")
    rest = rest.strip()
    if not closed or any(tag in think for tag in _TAGS):
        return False
    if not (rest.startswith("<answer>") and rest.endswith("</answer>")):
        return False
    answer = rest[len("<answer>") : -len("</answer>")]
    return bool(answer.strip()) and not any(tag in answer for tag in _TAGS)


def think_format(completions: list, **kwargs) -> list[float]:
    """TRL reward of the R1-Zero recipes: 1.0 if the completion is ``<think> ... </think>`` then ``<answer> ...
    </answer>`` and nothing else, else 0.0. The opening ``<think>`` may be in the prompt; spaces and newlines
    around the tags are free, the answer must not be empty, and no tag may repeat. As open-r1's ``format_reward``
    (``^<think>\\n.*?\\n</think>\\n<answer>\\n.*?\\n</answer>$``) and DeepSeek-R1-Zero's format reward, with the
    newlines not required; ``accuracy`` reads the answer inside ``<answer>`` (``oarl.answer``)."""
    return [1.0 if _think_then_answer(completion_text(c)) else 0.0 for c in completions]
