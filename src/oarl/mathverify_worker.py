"""math-verify with exact numbers, run as a worker process by ``oarl.rewards`` (this file imports nothing
of oarl, torch or math-verify at import time, so that the worker starts in about a second).

Protocol: run as a script whose last two arguments are the parent's process id and a memory limit in bytes; it prints ``{"ready": true}``, then reads
JSON lines and answers each with one line: ``{"pred", "gold"}`` -> ``{"ok": bool}`` (math-verify's verdict),
``{"value"}`` -> ``{"value": str | null}`` (``value_key``); ``"error"`` is added when math-verify or sympy
raised: the item is wrong (or has no key), the worker goes on.

**It dies with its parent** (``die_with_parent``), whatever the parent died of (SIGKILL, the OOM killer, SIGTERM):
on a hard item it would otherwise go on for minutes, a core busy and its memory growing, reparented to init. On
Linux the kernel kills it at once (``PR_SET_PDEATHSIG``, which works while a big-integer computation holds the
interpreter); everywhere, a thread checks every ``PARENT_POLL_S`` seconds that its parent is still the process that
started it. The end of its input (the parent closed the pipe) also ends it.

**Numbers compare exactly.** math-verify (0.9) decides most number pairs in ``grader.sympy_numeric_eq``,
which rounds floats to 6 decimal places (so 1e-7 equals 2e-7) and compares any other constant expressions
by ``(a - b).evalf(chop=True, n=15) == 0`` (so 2^-98 equals 2^-99: their difference is chopped to zero).
``use_exact_numbers()`` replaces that one function by ``numeric_eq`` below and leaves the rest of
math-verify as it is (parsing, sets, intervals, matrices, relations, symbols, percentages, and the symbolic
``simplify`` comparison that follows a numeric "not equal"):

- no decimal on either side (integers, fractions, radicals, pi, ...): equal only if exactly equal. Atomic
  numbers go to math-verify's exact branch; other constants are equal when their difference is zero to
  ``EXACT_DIGITS`` significant digits (relative to their size, never chopped); otherwise ``simplify``
  decides. Two different integers or rationals are never equal.
- a decimal on either side (``0.333333``, ``1.5 \\times 10^3``): ``approximately_equal``, a relative
  tolerance that never equates two different integers.
- expressions with free symbols: exact (``simplify``) unless a decimal is involved (math-verify's own rule).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time

DECIMAL_TOLERANCE = 1e-6
EXACT_DIGITS = 50  # digits used to check that two exact constants differ by zero (not chopped)


def approximately_equal(a: float, b: float, diff: float | None = None) -> bool:
    """The tolerance for a decimal approximation: |a - b| <= 1e-6 * min(1, max(|a|, |b|)).

    Relative below 1 (so that 1e-7 and 2e-7 differ), absolute above (six decimal places, the precision of
    math-verify's rounding), hence never true for two different integers. Inclusive, with a relative slack
    of 1e-9 for binary floats: 0.333333 equals 1/3. ``diff`` = |a - b| when the caller has it exactly.
    Works on floats, Fractions and sympy numbers alike.
    """
    if diff is None:
        diff = abs(a - b)
    return diff <= DECIMAL_TOLERANCE * min(1, max(abs(a), abs(b))) * (1 + 1e-9)


def numeric_eq(a, b, float_rounding: int, numeric_precision: int) -> bool:
    """Drop-in for ``math_verify.grader.sympy_numeric_eq`` (same arguments): exact numbers compare exactly,
    decimals within ``approximately_equal`` (see the module docstring)."""
    # lazy: math-verify and sympy load in the worker process only
    from math_verify import grader
    from sympy import Basic, Float, Integer, MatrixBase, Number
    from sympy.matrices.expressions import MatrixExpr

    if isinstance(a, Integer) and isinstance(b, Integer):  # the most common pair, decided at once
        return a == b
    if isinstance(a, (MatrixBase, MatrixExpr)) and isinstance(b, (MatrixBase, MatrixExpr)):
        return _ORIGINAL(a, b, float_rounding, numeric_precision)  # element by element, through this function
    if not (isinstance(a, Basic) and isinstance(b, Basic)):
        return False
    decimal = bool(a.atoms(Float) or b.atoms(Float))
    if a.free_symbols or b.free_symbols:
        return _ORIGINAL(a, b, float_rounding, numeric_precision) if decimal else False
    if decimal:
        a, b = grader.safe_sympy_doit(a), grader.safe_sympy_doit(b)  # a percentage becomes its value / 100
        try:
            va, vb = a.evalf(30), b.evalf(30)
            return bool(approximately_equal(va, vb))
        except (TypeError, ValueError):  # not comparable as numbers (e.g. complex values)
            return False
    if grader.is_atomic_or_pct_atomic(a, Number) or grader.is_atomic_or_pct_atomic(b, Number):
        return _ORIGINAL(a, b, float_rounding, numeric_precision)  # exact ==, math-verify's percent rules
    return _exact_zero(a, b)


def _exact_zero(a, b) -> bool:
    """Two exact constants: equal when a - b is zero, or zero to EXACT_DIGITS digits relative to |a|, |b|."""
    # lazy: math-verify and sympy load in the worker process only
    from math_verify import grader

    diff = grader.safe_sympy_doit(a - b)
    if diff.is_Rational:
        return diff == 0
    try:
        size = max(abs(a.evalf(EXACT_DIGITS)), abs(b.evalf(EXACT_DIGITS)))
        return bool(abs(diff.evalf(EXACT_DIGITS)) <= size * 10 ** -(EXACT_DIGITS - 10))
    except (TypeError, ValueError):
        return False


_ORIGINAL = None


def use_exact_numbers() -> None:
    """Install ``numeric_eq`` in math-verify's grader (once; idempotent)."""
    global _ORIGINAL
    # lazy: math-verify and sympy load in the worker process only
    from math_verify import grader

    if _ORIGINAL is None:
        if not callable(getattr(grader, "sympy_numeric_eq", None)):
            raise RuntimeError(
                "math_verify.grader.sympy_numeric_eq is missing: this math-verify version is not "
                "supported (oarl needs math-verify>=0.9,<0.10)"
            )
        _ORIGINAL = grader.sympy_numeric_eq
    grader.sympy_numeric_eq = numeric_eq


def value_key(parsed: list) -> str | None:
    """Key of the exact value of a parsed answer (``math_verify.parse`` output) that is a real constant with
    no decimal in it: ``q:<p/q>`` for a rational, ``r:<30 significant digits>`` otherwise; None for anything
    else (decimals are approximations, percentages are ambiguous, variables, sets, text)."""
    from sympy import Expr, Float, UnevaluatedExpr  # lazy: in the worker process only

    if not parsed or not isinstance(parsed[0], Expr):
        return None
    # lazy: math-verify and sympy load in the worker process only
    from math_verify import grader

    expr = grader.safe_sympy_doit(parsed[0])
    if (
        not isinstance(expr, Expr)
        or expr.free_symbols
        or expr.atoms(Float)
        or expr.has(UnevaluatedExpr)
        or not expr.is_number
    ):
        return None
    if expr.is_Rational:
        return f"q:{expr}"
    value = expr.evalf(EXACT_DIGITS)
    if not (value.is_real and value.is_finite):
        return None
    return "r:" + str(value.evalf(30))


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PARENT_POLL_S = 0.5  # the portable check of the parent: a worker outlives its parent by at most about this


def die_with_parent(parent_pid: int) -> None:
    """End this process when the process ``parent_pid`` (its parent) ends: Linux's parent-death signal (SIGKILL),
    and ``watch_parent`` everywhere. The signal is sent when the *thread* that started this process ends, so the
    parent starts it from a thread that lives as long as the parent (``oarl.rewards``)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes  # lazy: Linux only

            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no libc to call: the watcher alone
            pass
    watch_parent(parent_pid)


def watch_parent(parent_pid: int, interval_s: float = PARENT_POLL_S) -> None:
    """A daemon thread that ends this process (exit status 1) once its parent is no longer ``parent_pid`` (the
    parent died and this process was reparented), checked every ``interval_s`` seconds; at once if it already is."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval_s)
        os._exit(1)

    if os.getppid() != parent_pid:  # the parent died before this process could watch it
        os._exit(1)
    threading.Thread(target=watch, daemon=True, name="watch-parent").start()


def _boxed(answer: str) -> str:
    answer = answer.strip()
    return answer if answer.startswith("\\boxed") else "\\boxed{" + answer + "}"


def main(argv: list[str]) -> None:
    die_with_parent(int(argv[-2]))  # first: the imports below take a second or more
    try:
        import resource  # lazy: POSIX only

        resource.setrlimit(resource.RLIMIT_AS, (int(argv[-1]), int(argv[-1])))
    except Exception:  # no resource module (Windows) or no limit given
        pass
    logging.disable(logging.WARNING)
    import functools  # lazy: in the worker process only (with math-verify below)

    from math_verify import parse, verify

    use_exact_numbers()
    parse_boxed = functools.lru_cache(maxsize=4096)(lambda answer: parse(_boxed(answer), parsing_timeout=None))
    # warm up before saying ready (math-verify compiles its patterns, sympy loads its parsers and simplify's
    # modules on first use), so that the first item's deadline is not spent on start-up
    for gold, pred in (("\\frac{\\sqrt{2}}{2}", "0.5\\sqrt{2}"), ("x^2 + 2x + 1", "(x+1)^2"), ("[1, 2)", "\\{1, 2\\}")):
        verify(parse_boxed(gold), parse_boxed(pred), timeout_seconds=None)
    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        try:
            req = json.loads(line)
            if "value" in req:
                resp = {"value": value_key(parse_boxed(req["value"]))}
            else:
                gold, pred = parse_boxed(req["gold"]), parse_boxed(req["pred"])
                resp = {"ok": bool(gold) and bool(pred) and bool(verify(gold, pred, timeout_seconds=None))}
        except BaseException as e:  # MemoryError, RecursionError, sympy errors: the item is wrong, go on
            resp = {"ok": False, "error": type(e).__name__ + ": " + str(e)[:200]}
        out.write(json.dumps(resp) + "\n")
        out.flush()


if __name__ == "__main__":
    main(sys.argv)
