"""Where the mathematical expression that starts an answer statement ends, in plain text or a formula.

Pure string code (it imports nothing of oarl), used by ``oarl.answer`` (rule 3 of its docstring) and
``oarl.notation``: ``leading_expression`` reads ``The answer is 72 clips, altogether.`` as ``72``, ``2, 3 and 5``
as a list, ``$x = 5$`` as its formula's content, ``2 500 000`` and ``3.2 million`` as numbers, ``seven`` (a small
number in words, ``NUMBER_WORDS``) when nothing but punctuation follows it, and ``2, 4, 6, ...`` whole (an open
list keeps its ellipsis).
Each scan is bounded (``MAX_EXPRESSION_CHARS``, ``MAX_FORMULA_CHARS``).
"""

from __future__ import annotations

import re

MAX_EXPRESSION_CHARS = 400  # a plain-text answer is never longer; bounds the cost of degenerate completions
MAX_FORMULA_CHARS = 4000  # nor is a $...$ / \[...\] answer

_SKIP = re.compile(
    r"(?:[ \t]+|\n|\*\*?|__|(?:therefore|thus|hence|simply|just|exactly|clearly)\b,?|[:=](?!=))", re.IGNORECASE
)
_LINE_TAIL = re.compile(r"[\s.*_$]*")  # what may follow an answer on its own line: a period, emphasis, a "$"
_CURRENCY = re.compile(r"(?:\\\$|\$)(?=[ \t]*[-+]?[\d.])")  # "$18", "\$1,000": a currency sign, not a formula
_FORMULAS = (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$"))
# 1,000 and (in prose) 2 500 000 with spaces between groups of three; not the "1 1/4" of a mixed number
_NUMBER = re.compile(
    r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d{1,3}(?:[ \u00a0\u2009\u202f]\d{3})+(?![\d/])|\d+)(?:\.\d+)?|\.\d+"
)
_EXPONENT = re.compile(r"[eE][-+]?\d+(?![A-Za-z\d])")
_MIXED_FRACTION = re.compile(r"\d+/\d+(?!\d|\.\d)")  # "1/4" of the mixed number "1 1/4"
_COMMAND = re.compile(r"\\(?:[A-Za-z]+|[,;:! ])")
_WORD = re.compile(r"[A-Za-z]+")
_MATH_WORDS = {"pi", "sqrt", "infinity", "inf", "infty", "mod"}
_JOINERS = {"and", "or"}
_SCALES = {"thousand", "million", "billion", "trillion"}  # "3.2 million": part of the number
# small numbers in words, a bounded table (0-99): "seven", "twenty-five"
_UNITS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen"
).split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
NUMBER_WORDS = {w: n for n, w in enumerate(_UNITS)} | {w: 20 + 10 * n for n, w in enumerate(_TENS)}
_TENS_RE, _ONES_RE = "|".join(_TENS), "|".join(_UNITS[1:10])
_UNITS_RE = "|".join(sorted(_UNITS, key=len, reverse=True))
_NUMBER_WORD = re.compile(rf"(?:(?:{_TENS_RE})(?:[- ](?:{_ONES_RE}))?|{_UNITS_RE})(?![A-Za-z])", re.IGNORECASE)
_ELLIPSIS = ("...", "…")
# LaTeX commands after which an operand is expected (an operator or spacing), and spacing that changes nothing
_LATEX_OPERATORS = {
    "\\times",
    "\\cdot",
    "\\div",
    "\\pm",
    "\\mp",
    "\\le",
    "\\leq",
    "\\ge",
    "\\geq",
    "\\ne",
    "\\neq",
    "\\approx",
    "\\to",
    "\\in",
    "\\cup",
    "\\cap",
    "\\setminus",
    "\\left",
    "\\right",
    "\\quad",
    "\\qquad",
    "\\,",
    "\\;",
    "\\:",
    "\\!",
    "\\ ",
    "\\frac",
    "\\dfrac",
    "\\tfrac",
    "\\sqrt",
}
_OPERATORS = set("+-*/^_=<>|×÷·±∓−≤≥≠≈√")
_POSTFIX = set("!%°'′")
_CONSTANTS = set("π∞")
_OPEN, _CLOSE = "([{", ")]}"


def match_brace(text: str, open_idx: int, end: int | None = None) -> int | None:
    """Index of the '}' closing the '{' at open_idx, or None if it is not closed before ``end``."""
    depth = 0
    i = open_idx
    n = len(text) if end is None else end
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n:  # an escaped brace \{ or \} does not count
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def strip_span(text: str, start: int, end: int, chars: str = "") -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and (text[end - 1].isspace() or text[end - 1] in chars):
        end -= 1
    return start, end


def skip_spaces(text: str, i: int, end: int) -> int:
    while i < end and text[i] in " \t":
        i += 1
    return i


def _starts_expression(text: str, i: int, end: int, look_past_joiner: bool = True) -> bool:
    """Does an operand start at i (a number, a command, a bracket, a formula, a variable that is no word)?"""
    if i >= end:
        return False
    c = text[i]
    if c.isdigit() or c in "\\$(['" or c in _CONSTANTS or c == "√" or text.startswith(_ELLIPSIS, i):
        return True
    if c in "+-−" and i + 1 < end and (text[i + 1].isdigit() or text[i + 1] == "\\"):
        return True
    word = _WORD.match(text, i, end)
    if word is None:
        return c == "." and i + 1 < end and text[i + 1].isdigit()
    if word.group(0).lower() in _MATH_WORDS:
        return True
    return len(word.group(0)) == 1 and not _word_follows(text, word.end(), end, look_past_joiner)


def _word_follows(text: str, i: int, end: int, look_past_joiner: bool = True) -> bool:
    """Is the next thing after i (past spaces) an English word, i.e. was the letter before it a word too?"""
    j = skip_spaces(text, i, end)
    if j == i or j >= end:
        return False
    word = _WORD.match(text, j, end)
    if word is None:
        return False
    if word.group(0).lower() in _JOINERS:  # "x and y": look one word further, no more (a loop of "a and a
        # and ..." in a degenerate completion must not recurse)
        return not (look_past_joiner and _starts_expression(text, skip_spaces(text, word.end(), end), end, False))
    return word.group(0).lower() not in _MATH_WORDS


def formula_at(text: str, i: int, end: int) -> tuple[int, int, int] | None:
    """(content start, closing position, position after the closing) of a formula opening at i, the closing
    and the position after it -1 if it is never closed; None if no formula opens at i."""
    for opening, closing in _FORMULAS:
        if text.startswith(opening, i):
            start = i + len(opening)
            # an inline formula ends on its line; a display one may span lines
            stop = text.find("\n", start, end) if opening in ("$", "\\(") else -1
            close = start
            while True:
                close = text.find(closing, close, end if stop < 0 else stop)
                if close < 0 or text[close - 1] != "\\":
                    return start, close, close + len(closing) if close >= 0 else -1
                close += 1  # an escaped \$ inside the formula
    return None


def _plain_expression_end(text: str, i: int, end: int) -> int:
    """End of the expression that starts at i (i itself if none): see rule 3 of the module docstring."""
    j = last = i
    depth = 0
    prev = None  # kind of the last token: "operand" | "operator" | None (start)
    integer_operand = False  # the last operand is a bare integer (the whole part of a mixed number)
    while j < end:
        if depth > 0:  # inside brackets everything belongs to the expression, up to the line end
            c = text[j]
            if c == "\n":
                return last
            if c == "\\":  # \{ and \} count as brackets, any other escaped character does not
                depth += text.startswith("\\{", j)
                depth -= text.startswith("\\}", j)
                j += 2
                if depth == 0:
                    last, prev, integer_operand = j, "operand", False
                continue
            depth += c in _OPEN
            depth -= c in _CLOSE
            j += 1
            if depth == 0:
                last, prev, integer_operand = j, "operand", False
            continue
        k = skip_spaces(text, j, end)
        spaced = k > j
        if k >= end:
            break
        c = text[k]
        number = _NUMBER.match(text, k, end)
        if number:
            if spaced and prev == "operand":
                # only the fraction of a mixed number ("1 1/4") may follow an operand after a space
                if not (integer_operand and _MIXED_FRACTION.match(text, k, end)):
                    break
                j = last = _MIXED_FRACTION.match(text, k, end).end()
                prev, integer_operand = "operand", False
                continue
            j = number.end()
            exponent = _EXPONENT.match(text, j, end)
            if exponent:
                j = exponent.end()
            integer_operand = exponent is None and prev != "operand" and number.group(0).replace(",", "").isdigit()
            last, prev = j, "operand"
            continue
        integer_operand = False
        if prev == "operator" and (currency := _CURRENCY.match(text, k, end)):  # "2 * $800 = $1600"
            j = currency.end()
            continue
        if text.startswith("\\{", k):  # a set \{1, 2\}
            if spaced and prev == "operand":
                break
            depth, j = 1, k + 2
            continue
        if text.startswith("\\begin{", k):  # an environment (matrix): up to its \end
            close = match_brace(text, k + 6, end)
            stop = -1 if close is None else text.find("\\end" + text[k + 6 : close + 1], close, end)
            if stop < 0 or (spaced and prev == "operand"):
                break
            j = last = stop + len("\\end") + close + 1 - (k + 6)
            prev = "operand"
            continue
        if c == "\\":
            command = _COMMAND.match(text, k, end)
            if command is None:
                break
            name = command.group(0)
            if name in ("\\boxed", "\\fbox", "\\end") and prev is not None:
                break
            j = command.end()
            while j < end and text[j] == "{":  # the command's arguments
                close = match_brace(text, j, end)
                if close is None:
                    return last
                j = close + 1
            if name in _LATEX_OPERATORS and j == command.end():
                prev = "operator" if name not in ("\\,", "\\;", "\\:", "\\!", "\\ ", "\\quad", "\\qquad") else prev
            else:
                last, prev = j, "operand"
            continue
        if c in _OPEN:
            if spaced and prev == "operand":
                break  # "42 (in dollars)"
            depth, j = 1, k + 1
            continue
        if prev is None and c.isalpha() and (spelled := _NUMBER_WORD.match(text, k, end)) is not None:
            if not _WORD.match(text, skip_spaces(text, spelled.end(), end), end):  # "seven.", not "one of them"
                j = last = spelled.end()
                prev = "operand"
                continue
        if prev == "operator" and c in ".…" and text.startswith(_ELLIPSIS, k):  # "2, 4, 6, ...": an open list
            j = last = k + (3 if c == "." else 1)
            prev = "operand"
            continue
        word = _WORD.match(text, k, end)
        if word:
            lower = word.group(0).lower()
            if lower in _SCALES and prev == "operand":  # "3.2 million"
                j = last = word.end()
                continue
            if lower in _JOINERS and spaced and prev == "operand":
                nxt = skip_spaces(text, word.end(), end)
                if _starts_expression(text, nxt, end):
                    j, prev = nxt, "operator"
                    continue
                break
            if (
                lower == "x"
                and spaced
                and prev == "operand"
                and _NUMBER.match(text, skip_spaces(text, word.end(), end), end)
            ):
                j, prev = word.end(), "operator"  # "25 x 100": times
                continue
            attached = not spaced and prev == "operand"  # "2x", "5cm", "12th"
            variable = len(lower) == 1 and prev != "operand" and not _word_follows(text, word.end(), end)
            if attached or variable or lower in _MATH_WORDS:
                j = last = word.end()
                prev = "operand"
                continue
            break
        if c in ",;":
            nxt = skip_spaces(text, k + 1, end)
            joiner = _WORD.match(text, nxt, end)
            if joiner and joiner.group(0).lower() in _JOINERS:  # "2, 3, and 5"
                nxt = skip_spaces(text, joiner.end(), end)
            if prev == "operand" and _starts_expression(text, nxt, end):
                j, prev = nxt, "operator"
                continue
            break
        if c == "*":
            if text.startswith("**", k) or prev != "operand":
                break  # emphasis
            nxt = skip_spaces(text, k + 1, end)
            if not _starts_expression(text, nxt, end):
                break
            j, prev = nxt, "operator"
            continue
        if c == "!" and (k + 1 >= end or text[k + 1].isspace() or text[k + 1] in "*_\"'"):
            break  # "The answer is 72!" is an exclamation, "5!/3!" a factorial
        if c in _POSTFIX and prev == "operand" and not spaced or c == "%" and prev == "operand":
            j = last = k + 1
            continue
        if c in _CONSTANTS:
            j = last = k + 1
            prev = "operand"
            continue
        if c == ":" and prev == "operand" and not spaced and k + 1 < end and text[k + 1].isdigit():  # a ratio 3:2
            j, prev = k + 1, "operator"
            continue
        if c in _OPERATORS:
            j, prev = k + 1, "operator"
            continue
        break  # ".", "?", "$", "\n", a closing bracket with no opening one, ...
    return last


def leading_expression(text: str, start: int, end: int | None = None) -> tuple[int, int, int] | None:
    """(a, b, after) for the mathematical expression text[a:b] that starts the statement text[start:end]
    (rule 3 of the module docstring), ``after`` the position past it (past a formula's closing); None when
    the statement does not start with one."""
    end = min(len(text) if end is None else end, start + MAX_FORMULA_CHARS)
    i = start
    while True:  # skip emphasis, spaces, a colon, filler words
        m = _SKIP.match(text, i, end)
        if m is None or m.end() == i:
            break
        i = m.end()
    if "\n" in text[start:i]:  # "The answer is:\n\n72": a display formula, or alone on its line (not a list's "1.")
        if text.startswith(("$$", "\\["), i):
            return leading_expression(text, i, end)
        eol = line_end(text, i, end)
        span = leading_expression(text, i, eol)
        return span if span is not None and _LINE_TAIL.fullmatch(text, span[2], eol) else None
    currency = _CURRENCY.match(text, i, end)
    formula = formula_at(text, i, end)
    if currency and formula is not None and formula[1] >= 0:  # "$1$": a formula holding a number, no currency
        content = strip_span(text, formula[0], formula[1])
        currency = None if _plain_expression_end(text, *content) == content[1] else currency
    if currency:
        i = skip_spaces(text, currency.end(), end)
    elif formula is not None:
        start, close, after = formula
        if close >= 0:
            a, b = strip_span(text, start, close, ".,;")
            return (a, b, after) if b > a else None
        i = start  # never closed: read on as plain text
    b = _plain_expression_end(text, i, min(end, i + MAX_EXPRESSION_CHARS))
    return (i, b, b) if b > i else None


def line_end(text: str, i: int, end: int | None = None) -> int:
    nl = text.find("\n", i, end)
    return (len(text) if end is None else end) if nl < 0 else nl
