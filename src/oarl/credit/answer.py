"""Find a completion's own final answer in its text.

Pure string code (no torch): shared by the credit segmentation (which maps the character spans to token
masks) and by the rewards and the evaluation (which verify the answer text). The rules are those of the
graders of MATH (last boxed answer) and GSM8K (``####``), extended to how chat models end a solution:

1. **A boxed answer decides.** When the text holds a boxed answer, the last one is the final answer:
   ``\\boxed{ANSWER}`` or ``\\fbox{ANSWER}`` (nested braces), or ``\\boxed ANSWER`` without braces (read as
   MATH's graders read it: the expression after it). A sentence after the box ("This answer is consistent
   with ...") changes nothing. An empty ``\\boxed{}`` (an echoed instruction) is no answer statement; a
   last ``\\boxed{`` that is never closed (a cut completion) gives no answer.
2. **Otherwise the last phrase statement decides:**

       #### ANSWER                          GSM8K
       The (final) answer is ANSWER         also "The correct answer is", "My answer is", "Final answer:",
       Answer: ANSWER                       and "Answer:" at the start of a line or sentence

   A phrase must start a sentence's subject ("This answer is ..." is not a statement).
3. **The answer is the mathematical expression that starts the statement**, not the rest of the sentence:
   ``The answer is 72 clips, altogether.`` -> ``72``; ``#### 72, since 48+24=72`` -> ``72``. Markdown
   emphasis (``**73**``, ``**The answer is 18.**``), a currency sign and filler words ("therefore") before
   it are skipped. The expression is a ``$...$`` / ``\\(...\\)`` / ``\\[...\\]`` / ``$$...$$`` formula, or
   plain text made of numbers (``1,000``, ``3.5``, ``1.5e3``), operators, brackets (``(1, 2]``), LaTeX
   commands with their arguments, single-letter variables, and expressions joined by commas, "and" or "or"
   (``2, 3 and 5``: a list stays a list, a hedge ``5 or 6`` is not read as ``5``). It ends at a word, a
   clause, a sentence end or the line end; an ``x`` between numbers is "times" (``25 x 4``). An answer on
   the lines after the lead-in ("The answer is:\\n\\n72") is a display formula or stands alone on its line
   (not the "1." of a list). A phrase whose text is not mathematical ("The answer is reasonable") is not a
   statement; a ``####`` line that holds no expression is taken whole.

Each scan is bounded (``MAX_EXPRESSION_CHARS``, ``MAX_FORMULA_CHARS``) and the statements are tried from the
end, so a degenerate completion (a repetition loop) costs about as much as a normal one.

``find_final_answer`` returns the spans of the statement (for the credit's masks) or None; a completion
without a statement is unparsable for its caller.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class FinalAnswer:
    """Character spans in the completion text: [statement_start, answer_start) is the conclusion
    (lead-in such as ``The answer is `` or ``\\boxed{``), [answer_start, answer_end) the answer itself."""

    text: str
    statement_start: int
    answer_start: int
    answer_end: int
    style: str  # "boxed" | "hash" | "phrase"


_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_HASH = re.compile(r"####[ \t]*")
# "The answer is", "the final answer:", "My answer is", "**Final Answer**:", "Answer:" at a line or sentence
# start; not "This answer is" nor "I answered:".
_PHRASE = re.compile(
    r"(?:(?<![A-Za-z])(?:the|my|our)\s+(?:(?:final|correct)\s+)?answer"
    r"|(?<![A-Za-z])final\s+answer"
    r"|(?:^|(?<=[\n#*>_])|(?<=[.!?:;] ))[ \t]*answer)"
    r"(?:\*\*|__)?[ \t]*(?:is\b[ \t]*[:=]?|[:=])",
    re.IGNORECASE,
)
# A phrase lead-in right before a box belongs to the boxed statement ("The answer is $\boxed{5}$").
_PHRASE_BEFORE_BOX = re.compile(
    r"(?:(?:the|my|our)\s+)?(?:(?:final|correct)\s+)?answer(?:\*\*|__)?\s*(?:is\s*[:=]?|[:=])?[ \t]*(?:\*\*|__)?"
    r"[ \t]*(?:\$\$?|\\\[|\\\()?\s*$",
    re.IGNORECASE,
)
_BOX_LEAD_WINDOW = 80  # characters before a box searched for its phrase lead-in
MAX_EXPRESSION_CHARS = 400  # a plain-text answer is never longer; bounds the cost of degenerate completions
MAX_FORMULA_CHARS = 4000  # nor is a $...$ / \[...\] answer

# --- the leading mathematical expression of a statement ---------------------------------------------------
_SKIP = re.compile(r"(?:[ \t]+|\n|\*\*?|__|(?:therefore|thus|hence|simply|just|exactly|clearly)\b,?|[:=](?!=))",
                   re.IGNORECASE)
_LINE_TAIL = re.compile(r"[\s.*_$]*")  # what may follow an answer on its own line: a period, emphasis, a "$"
_CURRENCY = re.compile(r"(?:\\\$|\$)(?=[ \t]*[-+]?[\d.])")  # "$18", "\$1,000": a currency sign, not a formula
_FORMULAS = (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$"))
_NUMBER = re.compile(r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+")
_EXPONENT = re.compile(r"[eE][-+]?\d+(?![A-Za-z\d])")
_MIXED_FRACTION = re.compile(r"\d+/\d+(?!\d|\.\d)")  # "1/4" of the mixed number "1 1/4"
_COMMAND = re.compile(r"\\(?:[A-Za-z]+|[,;:! ])")
_WORD = re.compile(r"[A-Za-z]+")
_MATH_WORDS = {"pi", "sqrt", "infinity", "inf", "infty", "mod"}
_JOINERS = {"and", "or"}
# LaTeX commands after which an operand is expected (an operator or spacing), and spacing that changes nothing
_LATEX_OPERATORS = {
    "\\times", "\\cdot", "\\div", "\\pm", "\\mp", "\\le", "\\leq", "\\ge", "\\geq", "\\ne", "\\neq", "\\approx",
    "\\to", "\\in", "\\cup", "\\cap", "\\setminus", "\\left", "\\right", "\\quad", "\\qquad", "\\,", "\\;",
    "\\:", "\\!", "\\ ", "\\frac", "\\dfrac", "\\tfrac", "\\sqrt",
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


def _strip_span(text: str, start: int, end: int, chars: str = "") -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and (text[end - 1].isspace() or text[end - 1] in chars):
        end -= 1
    return start, end


def _skip_spaces(text: str, i: int, end: int) -> int:
    while i < end and text[i] in " \t":
        i += 1
    return i


def _starts_expression(text: str, i: int, end: int, look_past_joiner: bool = True) -> bool:
    """Does an operand start at i (a number, a command, a bracket, a formula, a variable that is no word)?"""
    if i >= end:
        return False
    c = text[i]
    if c.isdigit() or c in "\\$(['" or c in _CONSTANTS or c == "√":
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
    j = _skip_spaces(text, i, end)
    if j == i or j >= end:
        return False
    word = _WORD.match(text, j, end)
    if word is None:
        return False
    if word.group(0).lower() in _JOINERS:  # "x and y": look one word further, no more (a loop of "a and a
        # and ..." in a degenerate completion must not recurse)
        return not (look_past_joiner and _starts_expression(text, _skip_spaces(text, word.end(), end), end, False))
    return word.group(0).lower() not in _MATH_WORDS


def _formula(text: str, i: int, end: int) -> tuple[int, int] | None:
    """(content start, closing position) of a formula opening at i, the closing -1 if it is never closed;
    None if no formula opens at i."""
    for opening, closing in _FORMULAS:
        if text.startswith(opening, i):
            start = i + len(opening)
            # an inline formula ends on its line; a display one may span lines
            stop = text.find("\n", start, end) if opening in ("$", "\\(") else -1
            close = start
            while True:
                close = text.find(closing, close, end if stop < 0 else stop)
                if close < 0 or text[close - 1] != "\\":
                    return start, close
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
        k = _skip_spaces(text, j, end)
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
        word = _WORD.match(text, k, end)
        if word:
            lower = word.group(0).lower()
            if lower in _JOINERS and spaced and prev == "operand":
                nxt = _skip_spaces(text, word.end(), end)
                if _starts_expression(text, nxt, end):
                    j, prev = nxt, "operator"
                    continue
                break
            if lower == "x" and spaced and prev == "operand" and _NUMBER.match(text, _skip_spaces(text, word.end(), end), end):
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
            nxt = _skip_spaces(text, k + 1, end)
            joiner = _WORD.match(text, nxt, end)
            if joiner and joiner.group(0).lower() in _JOINERS:  # "2, 3, and 5"
                nxt = _skip_spaces(text, joiner.end(), end)
            if prev == "operand" and _starts_expression(text, nxt, end):
                j, prev = nxt, "operator"
                continue
            break
        if c == "*":
            if text.startswith("**", k) or prev != "operand":
                break  # emphasis
            nxt = _skip_spaces(text, k + 1, end)
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


def leading_expression(text: str, start: int, end: int | None = None) -> tuple[int, int] | None:
    """Span [a, b) of the mathematical expression that starts the statement text[start:end] (rule 3 of the
    module docstring), or None when the statement does not start with one."""
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
        line_end = _line_end(text, i)
        span = leading_expression(text, i, line_end)
        return span if span is not None and _LINE_TAIL.fullmatch(text, span[1], line_end) else None
    currency = _CURRENCY.match(text, i, end)
    if currency:
        i = _skip_spaces(text, currency.end(), end)
    elif (formula := _formula(text, i, end)) is not None:
        start, close = formula
        if close >= 0:
            a, b = _strip_span(text, start, close, ".,;")
            return (a, b) if b > a else None
        i = start  # never closed: read on as plain text
    b = _plain_expression_end(text, i, min(end, i + MAX_EXPRESSION_CHARS))
    return (i, b) if b > i else None


def _line_end(text: str, i: int) -> int:
    nl = text.find("\n", i)
    return len(text) if nl < 0 else nl


def _last_box(text: str) -> FinalAnswer | None | bool:
    """The last non-empty boxed answer; None if the last box is never closed; False if there is no box."""
    for m in reversed(list(_BOX.finditer(text))):
        i = _skip_spaces(text, m.end(), len(text))
        stmt = m.start()
        lead = _PHRASE_BEFORE_BOX.search(text, max(0, stmt - _BOX_LEAD_WINDOW), stmt)
        if lead is not None and lead.group(0).strip():
            stmt = lead.start()
        if i < len(text) and text[i] == "{":
            close = match_brace(text, i)
            if close is None:
                return None  # cut inside the box
            a, b = _strip_span(text, i + 1, close)
        elif not text[i:].strip():
            return None  # cut right after "\boxed"
        else:  # "\boxed 5": the expression after it
            span = leading_expression(text, i, _line_end(text, i))
            a, b = span if span else (i, i)
        if b > a:
            return FinalAnswer(text[a:b], stmt, a, b, "boxed")
    return False


def _last_statement(text: str) -> FinalAnswer | None:
    """The last #### or phrase statement (None if there is none or the last one is an empty ####). Tried from
    the end, so that a long completion costs one or two scans, not one per statement."""
    phrases = _PHRASE.finditer(text) if "answer" in text.lower() else ()  # the regex is the costly part
    starts = [(m.start(), m, "hash") for m in _HASH.finditer(text)] + [(m.start(), m, "phrase") for m in phrases]
    for _, m, style in sorted(starts, key=lambda x: x[0], reverse=True):
        if style == "hash":
            line_end = _line_end(text, m.end())
            a, b = leading_expression(text, m.end(), line_end) or _strip_span(text, m.end(), line_end, ".")
            return FinalAnswer(text[a:b], m.start(), a, b, "hash") if b > a else None
        stmt = m.start() + len(m.group(0)) - len(m.group(0).lstrip())
        # the statement runs to the line end, or beyond it when the answer starts on a following line
        span = leading_expression(text, m.end(), len(text))
        if span is not None and _BOX.match(text, span[0]) is None:
            return FinalAnswer(text[span[0] : span[1]], stmt, span[0], span[1], "phrase")
    return None


def find_final_answer(text: str) -> FinalAnswer | None:
    """The final answer of ``text`` (rules in the module docstring), or None if it has none, it is empty or
    it was cut."""
    if not text:
        return None
    boxed = _last_box(text)
    return _last_statement(text) if boxed is False else boxed


def extract_answer(text: str) -> str | None:
    """The final answer's text, or None."""
    fa = find_final_answer(text)
    return None if fa is None else fa.text
