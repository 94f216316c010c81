"""Find a completion's own final answer in its text.

Pure string code (no torch): shared by the credit segmentation (which maps the character spans to token
masks) and by the rewards and the evaluation (which verify the answer text). Recognised statements, the
last one in the text wins:

    ... \\boxed{ANSWER} ...            (also \\fbox; nested braces; a "The answer is" right before it is
                                        part of the statement)
    #### ANSWER                        (GSM8K style, to the end of the line)
    The (final) answer is ANSWER       (to the end of the sentence or line)
    Answer: ANSWER

A statement whose answer is empty, or a ``\\boxed{`` that is never closed (a truncated completion), gives
no answer: ``find_final_answer`` returns None and the caller treats the completion as unparsable.
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


_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_HASH = re.compile(r"####[ \t]*")
_PHRASE = re.compile(r"(?:the\s+)?(?:final\s+)?answer\s*(?:is\s*[:=]?|[:=])[ \t]*(?:\$\s*)?", re.IGNORECASE)
# A phrase lead-in immediately before \boxed{ belongs to the boxed statement ("The answer is \boxed{5}").
_PHRASE_BEFORE_BOXED = re.compile(r"(?:the\s+)?(?:final\s+)?answer\s*(?:is\s*[:=]?|[:=])?[ \t]*\$?\s*$", re.IGNORECASE)
# End of a phrase answer: a newline, or a sentence end (". " / "." at end) that is not a decimal point.
_PHRASE_END = re.compile(r"\n|\.(?=\s|$)|\$(?=\s*(?:\.|$|\n))")


def _match_brace(text: str, open_idx: int) -> int | None:
    """Index of the '}' closing the '{' at open_idx, or None if it is never closed."""
    depth = 0
    i = open_idx
    n = len(text)
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


def _strip_span(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _candidates(text: str):
    """Yield (statement_start, FinalAnswer | None) for every answer statement; None = truncated/empty."""
    for m in _BOXED.finditer(text):
        close = _match_brace(text, m.end() - 1)
        stmt = m.start()
        lead = _PHRASE_BEFORE_BOXED.search(text, 0, m.start())
        if lead is not None and lead.group(0).strip():
            stmt = lead.start()
        if close is None:
            yield stmt, None
            continue
        a, b = _strip_span(text, m.end(), close)
        yield stmt, (FinalAnswer(text[a:b], stmt, a, b, "boxed") if b > a else None)
    for m in _HASH.finditer(text):
        nl = text.find("\n", m.end())
        a, b = _strip_span(text, m.end(), len(text) if nl < 0 else nl)
        yield m.start(), (FinalAnswer(text[a:b], m.start(), a, b, "hash") if b > a else None)
    for m in _PHRASE.finditer(text):
        if _BOXED.match(text, m.end()) or text.startswith("\\boxed", m.end()):
            continue  # handled as a boxed statement
        end = _PHRASE_END.search(text, m.end())
        a, b = _strip_span(text, m.end(), len(text) if end is None else end.start())
        yield m.start(), (FinalAnswer(text[a:b], m.start(), a, b, "phrase") if b > a else None)


def find_final_answer(text: str) -> FinalAnswer | None:
    """The last final-answer statement of ``text``, or None if there is none, it is empty or truncated."""
    if not text:
        return None
    best_pos, best = -1, None
    for pos, cand in _candidates(text):
        # A later statement wins; at the same position a boxed answer wins over the phrase that leads into it.
        if pos > best_pos or (pos == best_pos and best is None and cand is not None):
            best_pos, best = pos, cand
    return best


def extract_answer(text: str) -> str | None:
    """The final answer's text, or None."""
    fa = find_final_answer(text)
    return None if fa is None else fa.text
