"""How answers are written: one spelling for those that mean the same, the forms a plain comparison gets
wrong, and the pairs decided in this process (the verifier's fast path).

``oarl.rewards.verify`` puts the extracted answer and the gold through ``normalize_answer``, then asks
``fast_verdict`` (None: math-verify decides). Forms, each with its rule:

    option("(B) 2,025")        ("B", "2,025")   a multiple-choice option A-J: against a letter the letters
                                                decide, against anything else the option's text does
    based_number("1011_2")     ("1011", 2, 11)  a number with a base subscript: two of them compare by value
                                                in their bases (``1011_3`` is not ``1011_2``), one against
                                                plain digits by its digits (the base is the question's), a
                                                digit outside its base or anything else is not equal
    has_ellipsis("2, 4, ...")  True             an open list equals only an open list (not ``2, 4``)

A comma and a space between digits separate list items (``45, 210`` is not ``45210``), a comma and three
digits group thousands (``1,000``, ``315/1,000``).

Numbers are compared exactly in rationals (``as_number``: integers, decimals, fractions, mixed numbers,
percentages, ``3.2 million``); a percentage or a scale word on one side only matches the number with or
without it (``50\\%`` = ``50`` = ``0.5``, ``3.2 million`` = ``3200000`` = ``3.2``). Pure string code; the
number words are the answer finder's table (``oarl.expression.NUMBER_WORDS``).

**What is read is bounded** (``too_long``): an answer longer than ``MAX_ANSWER_CHARS`` is wrong, unread; the
fast path reads powers of ten up to ``10^{999}``. Every number it builds then stays far below Python's limit on
converting integers to and from text (4,300 digits, ``sys.get_int_max_str_digits``), which a degenerate answer
(a repetition loop inside ``\\boxed{}``) would otherwise exceed and raise on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from oarl.expression import NUMBER_WORDS, match_brace
from oarl.mathverify_worker import approximately_equal

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
_IMAGINARY_ONE = re.compile(r"(?<![\w.\\])1i(?![\w])")  # "-1i", "3 - 1i": the unit i
# a trailing qualifier in text: "k x^2 \text{ for every real } k", "2\pi k \text{ where } k \in \mathbb{Z}"
_QUALIFIER = re.compile(
    r"(?:\s|,|\\[,;:! ]|\\q?quad(?![A-Za-z]))*\\(?:text|textrm|mbox|mathrm)\s*\{\s*"
    r"(?:for|where|when|if|provided|with|such\s+that)(?![A-Za-z])",
    re.IGNORECASE,
)
_SPELLED = re.compile(r"(?:\\text\s*\{\s*)?([A-Za-z]+(?:[- ][A-Za-z]+)?)\s*\}?\s*\.?")
# The longest answer that is read (characters). No gold answer of the five benchmarks is longer than 210 (minerva's
# longest formula); a degenerate completion writes far more, and reading it costs without bound (the regexes here,
# math-verify's parser) and makes numbers past Python's 4,300-digit limit on int <-> str conversion.
MAX_ANSWER_CHARS = 1000
_SYMBOLS = {"−": "-", "×": "\\times ", "÷": "\\div ", "·": "\\cdot ", "π": "\\pi ", "∞": "\\infty ", "{,}": ","}


def too_long(answer: str) -> bool:
    """Is the answer longer than ``MAX_ANSWER_CHARS``? Such an answer is wrong, not read (module docstring)."""
    return len(answer) > MAX_ANSWER_CHARS


def normalize_answer(text: str) -> str:
    """One spelling for notations that mean the same number; both the answer and the gold go through it.

    Unicode operators (``−``, ``×``, ``π``) become LaTeX; ``1{,}000`` becomes ``1,000``; bold is dropped
    and a number in text or in parentheses is that number (AIME's ``\\textbf{(073)}`` -> ``073``); degree
    marks (``30°``, ``30^\\circ``) and an ordinal suffix at the end (``12^{\\text{th}}``, ``12th``) are
    dropped; scientific notation ``1.5e3`` becomes ``1.5\\times10^{3}``, and ``25 x 4`` ``25 \\times 4``;
    a plain mixed number ``1 1/4`` becomes ``\\frac{5}{4}`` (as MATH reads ``1\\frac{1}{4}``); a small number
    in words is that number (``seven``, ``\\text{twenty-five}``: 0-99); ``1i`` is ``i`` (``-1i`` = ``-i``); a
    qualifier in text after the answer is dropped (``kx^2 \\text{ for every real } k`` -> ``kx^2``).
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
    qualifier = _QUALIFIER.search(text)
    if qualifier is not None and text[: qualifier.start()].strip():
        text = text[: qualifier.start()]
    if (spelled := _SPELLED.fullmatch(text.strip())) is not None and (value := spelled_number(spelled[1])) is not None:
        return str(value)
    text = _IMAGINARY_ONE.sub("i", text)
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


def spelled_number(words: str) -> int | None:
    """The value of a small number in words (``seven``, ``twenty-five``, ``Twenty five``: 0-99), else None."""
    tens, _, unit = words.lower().replace(" ", "-").partition("-")
    if tens not in NUMBER_WORDS:
        return None
    if unit and (NUMBER_WORDS[tens] < 20 or not 1 <= NUMBER_WORDS.get(unit, 0) <= 9):  # "twenty-five", not "five-two"
        return None
    return NUMBER_WORDS[tens] + (NUMBER_WORDS[unit] if unit else 0)


# ----------------------------------------------------------------------------------------------------------
# forms that a plain comparison gets wrong

_TEXT_WRAPPED = re.compile(r"\\(?:text|textrm|mathrm|mbox)\s*\{([^{}]*)\}")
_OPTION = re.compile(r"\(([A-J])\)|([A-J])(?:[.:)]|$)")
_ANOTHER_OPTION = re.compile(r"^(?:,|&|and\b|or\b)|\([A-J]\)")
_BASED = re.compile(r"\(?([0-9A-Za-z]+)\)?_\{?\(?(\d{1,2})\)?\}?")
_ELLIPSIS = re.compile(r"\.\.\.|…|\\[lcv]?dots(?![A-Za-z])")


def option(text: str) -> tuple[str, str] | None:
    """(letter, text) of a multiple-choice option A-J: ``B``, ``(B)``, ``B.``, ``\\text{(C)}``, ``(B) 2,025``,
    ``C: The enzyme is inhibited``, ``\\text{(E) } 17`` (bold already dropped by ``normalize_answer``); None for
    anything else, and for several options (``(A) and (C)``)."""
    text = _TEXT_WRAPPED.sub(r"\1", text).strip()
    m = _OPTION.match(text)
    if m is None:
        return None
    rest = text[m.end() :].strip()
    return None if _ANOTHER_OPTION.search(rest) else (m[1] or m[2], rest)


def based_number(text: str) -> tuple[str, int, int | None] | None:
    """(digits, base, value) of a number with a base subscript (``1011_2``, ``3421_{10}``, ``(A3)_{16}``;
    spaces removed), the value None when a digit is not a digit of that base (``1012_2``); None when ``text``
    is no such number (a variable ``a_{12}``, ``x_1``)."""
    m = _BASED.fullmatch(text)
    if m is None:
        return None
    digits, base = m[1].upper(), int(m[2])
    if not 2 <= base <= 36 or not (m[1][0].isdigit() or base > 10 and m[1].isupper()):
        return None
    try:
        return digits, base, int(digits, base)
    except ValueError:
        return digits, base, None


def has_ellipsis(text: str) -> bool:
    """Does the answer hold an ellipsis (``2, 4, 6, ...``, ``\\ldots``, ``\\cdots``)?"""
    return _ELLIPSIS.search(text) is not None


# ----------------------------------------------------------------------------------------------------------
# fast path: equal strings, and numbers that are integers, decimals or fractions, decided in this process

_SPACES = re.compile(r"\s+|\\[,!;: ]")
_LIST_COMMA = re.compile(r"(?<=\d),\s+(?=[-+]?\d)")  # "45, 210": a list of two numbers, not 45,210
_FRAC = re.compile(r"\\[dt]frac")
_EXACT = re.compile(
    r"(?P<sign>[-+]?)(?:"
    r"(?P<whole>\d+)?\\frac(?:\{(?P<fn>[-+]?\d+)\}\{(?P<fd>[-+]?\d+)\}|(?P<sn>\d)(?P<sd>\d))"  # \frac{1}{2}, 1\frac{1}{4}, \frac12
    r"|(?P<an>\d{1,3}(?:,\d{3})+|\d+)/(?P<ad>\d{1,3}(?:,\d{3})+|\d+)"  # 3/4, 315/1,000
    r"|(?P<dec>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)"  # 1,000  3.5  .5
    r"(?:(?:\\times|\\cdot|\*)10\^(?:\{(?P<e1>[-+]?\d{1,3})\}|(?P<e2>[-+]?\d)))?"  # 1.5\times10^{3}, up to 10^{999}
    r")(?:(?P<pct>\\?%)|(?:\\text\{)?(?P<scale>thousand|million|billion|trillion)\}?)?"
)
SCALES = {"thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12}


def canonical(text: str) -> str:
    if "," in text:  # a list stays a list once spaces are gone (math-verify reads ";" as ",")
        text = _LIST_COMMA.sub(";", text)
    text = _SPACES.sub("", text)
    text = text.replace("\\$", "").replace("$", "").replace("\\left", "").replace("\\right", "")
    return _FRAC.sub(r"\\frac", text).rstrip(".")


@dataclass(frozen=True)
class Number:
    value: Fraction
    decimal: bool  # written with a decimal point or a power of ten: may be an approximation
    percent: bool
    scale: int = 1  # 10**6 for "3.2 million"


def as_number(text: str) -> Number | None:
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
        num, den = num.replace(",", ""), den.replace(",", "")
        if int(den) == 0 or (m["whole"] is not None and (num.startswith(("-", "+")) or den.startswith(("-", "+")))):
            return None
        value = int(m["whole"] or 0) + Fraction(int(num), int(den))
        decimal = False
    return Number(-value if m["sign"] == "-" else value, decimal, m["pct"] is not None, SCALES.get(m["scale"], 1))


def _numbers_equal(a: Number, b: Number) -> bool:
    """Exact, unless a side is a decimal (then ``approximately_equal``); a percentage on one side only
    matches either its number or its number / 100 (``50\\%`` = ``50`` = ``0.5``, as math-verify has it), and
    a scale word on one side only its number or its value (``3.2 million`` = ``3200000`` = ``3.2``)."""
    if not (a.percent or b.percent or a.scale != 1 or b.scale != 1):  # the common case
        return a.value == b.value or (a.decimal or b.decimal) and approximately_equal(a.value, b.value)

    def values(x: Number, y: Number) -> list[Fraction]:
        if x.percent and not y.percent:
            return [x.value, x.value / 100]
        return [x.value * x.scale, x.value] if x.scale != 1 and y.scale == 1 else [x.value * x.scale]

    values_a, values_b = values(a, b), values(b, a)
    pairs = [(x, y) for x in values_a for y in values_b]
    if any(x == y for x, y in pairs):
        return True
    return (a.decimal or b.decimal) and any(approximately_equal(x, y) for x, y in pairs)


# a number followed by a unit in words ("1,000 dollars", "18 eggs per day", "72\text{ clips}"): the number
_NUMBER_WITH_UNIT = re.compile(
    r"\s*(?:\\\$|\$)?\s*([+-]?[\d,]*\.?\d+(?:\s*(?:thousand|million|billion|trillion))?)\s*(?:\\(?:text|mbox|mathrm)\s*\{\s*((?:[A-Za-z]+\.?\s*){1,4})\}"
    r"|((?:[A-Za-z]{2,}\.?\s*){1,4}))"
)
_NOT_UNITS = {"pi", "sqrt", "frac", "i", "e", "and", "or", "times", "cdot"}


def _strip_unit(text: str) -> str:
    m = _NUMBER_WITH_UNIT.fullmatch(text)
    if m is None or any(w.lower().rstrip(".") in _NOT_UNITS for w in (m[2] or m[3]).split()):
        return text
    return m[1]


def fast_verdict(pred: str, gold: str) -> bool | None:
    """True/False when the fast path can decide (normalised input), None to ask math-verify."""
    p, g = canonical(pred), canonical(gold)
    if p == g:
        return True
    pn, gn = as_number(p), as_number(g)
    if pn is not None and gn is not None:  # the common case, decided first
        return _numbers_equal(pn, gn)
    if has_ellipsis(p) != has_ellipsis(g):
        return False  # "2, 4, 6, ..." is an open list, not its first items
    pb, gb = based_number(p), based_number(g)
    if pb is not None and gb is not None:  # "1011_3" is 31, "1011_2" is 11: values in their bases
        return pb[2] is not None and pb[2] == gb[2]
    if pb is not None or gb is not None:  # "1011" for "1011_2": the same digits (the base is the question's)
        (digits, _, _), other = (pb, g) if pb is not None else (gb, p)
        return other.isalnum() and other.upper() == digits
    if pn is None and gn is not None:
        pn = as_number(canonical(_strip_unit(pred)))
    elif gn is None and pn is not None:
        gn = as_number(canonical(_strip_unit(gold)))
    if pn is None or gn is None:
        return None
    return _numbers_equal(pn, gn)


def answer_key(answer: str) -> str:
    """A canonical form of an answer for majority voting: equal keys verify as equal (not the converse).
    Spaces, ``$``, ``\\left``/``\\right`` and a final period are dropped, ``\\dfrac`` is ``\\frac``; numbers
    are keyed by their exact value (``1,000.0`` and ``1000`` -> ``1000``; ``0.5``, ``1/2``, ``\\frac12`` ->
    ``1/2``). An answer that is ``too_long`` is its own key, unread."""
    if too_long(answer):
        return answer
    text = canonical(normalize_answer(answer))
    number = as_number(text)
    if number is None:
        return text
    return str(number.value * number.scale) + ("%" if number.percent else "")
