"""Find a completion's own final answer in its text.

Pure string code (no torch; of oarl it imports only ``oarl.expression``): shared by the credit segmentation
(which maps the character spans to token masks) and by the rewards, the evaluation, the data loaders and maj@n
voting (which verify the answer text). The rules are those of the graders of MATH (last boxed answer) and GSM8K
(``####``), extended to how chat and reasoning models end a solution:

0. **An ``<answer>...</answer>`` tag decides** (R1-Zero, TinyZero, open-r1: ``<think> ... </think>
   <answer> 3720 </answer>``): the last one holds the final answer, read by the rules below inside it (a
   box, a phrase, else its expression or sentence, else its whole text: ``<answer>Tuesday</answer>``). A
   last ``<answer>`` never closed (a cut completion) gives no answer; an empty one is no statement.
1. **Otherwise a boxed answer decides.** When the text holds a boxed answer, the last one is the final
   answer: ``\\boxed{ANSWER}`` or ``\\fbox{ANSWER}`` (nested braces), or ``\\boxed ANSWER`` without braces
   (read as MATH's graders read it: the expression after it). A sentence after the box ("This answer is
   consistent with ...") changes nothing. An empty ``\\boxed{}`` (an echoed instruction) is no answer
   statement; a last ``\\boxed{`` that is never closed (a cut completion) gives no answer.
   *One answer in several boxes*: boxes separated only by a comma, a semicolon, "and" or "or" (with math
   delimiters, spaces and the next part's ``x =`` around them) are one answer, a list of their contents:
   ``The roots are \\(\\boxed{2}\\), \\(\\boxed{4}\\), and \\(\\boxed{9}\\).`` -> ``2, 4, 9``;
   ``$x = \\boxed{2}$ or $x = \\boxed{4}$`` -> ``2, 4``. Any other text between two boxes (a word, a sentence
   end: ``\\boxed{5}. Wait, ... \\boxed{7}``, ``... is \\boxed{12} and the perimeter is \\boxed{14}``) makes the
   later box replace the earlier one.
   *An option letter after the box*: a phrase statement after the last box whose answer is a lone option
   letter (``... = \\boxed{12}, which is choice (B).\\n\\nAnswer: B``) is the final answer, the box having
   held the value the letter was chosen by.
2. **Otherwise the last phrase statement decides:**

       #### ANSWER                          GSM8K
       The (final) answer is ANSWER         also "The correct answer is", "My answer is", "Final answer:",
       Answer: ANSWER                       and "Answer:" at the start of a line or sentence
       The answers are ANSWER               also "The solutions / roots / zeros are"

   A phrase must start a sentence's subject ("This answer is ..." is not a statement).
3. **The answer is the mathematical expression that starts the statement** (``oarl.expression``),
   not the rest of the sentence: ``The answer is 72 clips, altogether.`` -> ``72``; ``#### 72, since
   48+24=72`` -> ``72``. Markdown emphasis (``**73**``, ``**The answer is 18.**``), a currency sign and
   filler words ("therefore") before it are skipped. The expression is a ``$...$`` / ``\\(...\\)`` /
   ``\\[...\\]`` / ``$$...$$`` formula, or plain text made of numbers (``1,000``, ``2 500 000``, ``3.5``,
   ``1.5e3``, ``3.2 million``), operators, brackets (``(1, 2]``), LaTeX commands with their arguments,
   single-letter variables, and expressions joined by commas, "and" or "or" (``2, 3 and 5``: a list stays a
   list, a hedge ``5 or 6`` is not read as ``5``; an open list keeps its ellipsis: ``2, 4, 6, ...``), or a
   small number in words that ends the sentence (``The answer is seven.``). It ends at a word, a clause, a
   sentence end or the line end; an ``x`` between numbers is "times" (``25 x 4``). An answer on the lines
   after the lead-in ("The answer is:\\n\\n72") is a display formula or stands alone on its line (not the
   "1." of a list). A phrase whose text is not mathematical ("The answer is reasonable") is not a statement;
   a ``####`` line that holds no expression is taken whole.
4. **Formulas joined by commas, "and" or "or" are one answer**: ``The answer is $x=-1$ or $x=4$.`` ->
   ``x=-1, x=4`` (not ``x=-1``); ``The solutions are $y = 1$ and $y = 5$.`` -> ``y = 1, y = 5``.
5. **A sentence after "Answer:"**: when the text after a lead-in that ends with a colon (``Final Answer:``,
   ``Answer:``), after ``####`` or inside ``<answer>`` starts with words, the answer is the expression after
   the first "is" / "are" / "was" / "equals" / "=" of that sentence: ``Final Answer: The smallest $k$ is
   12.`` -> ``12``; ``Final Answer: The area of $PQRS$ is 48. I hope it is correct.`` -> ``48``.

A multi-part answer's text is its parts joined by ", " (a list, as the verifier reads it), and its span
[answer_start, answer_end) runs from the first part to the last, the joiners between them included: the
credit's answer mask is one run of tokens that covers every part.

Each scan is bounded (``MAX_EXPRESSION_CHARS``, ``MAX_FORMULA_CHARS``, ``MAX_SENTENCE_CHARS``, ``MAX_PARTS``)
and the statements are tried from the end, so a degenerate completion (a repetition loop) costs about as
much as a normal one.

``find_final_answer`` returns the spans of the statement (for the credit's masks) or None; a completion
without a statement is unparsable for its caller.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .expression import formula_at, leading_expression, line_end, match_brace, skip_spaces, strip_span


@dataclass(frozen=True)
class FinalAnswer:
    """Character spans in the completion text: [statement_start, answer_start) is the conclusion
    (lead-in such as ``The answer is `` or ``\\boxed{``), [answer_start, answer_end) the answer itself (for a
    multi-part answer, from its first part to its last; ``text`` is then the parts joined by ", ")."""

    text: str
    statement_start: int
    answer_start: int
    answer_end: int
    style: str  # "tag" | "boxed" | "hash" | "phrase"


_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_HASH = re.compile(r"####[ \t]*")
_TAG_OPEN, _TAG_CLOSE = "<answer>", "</answer>"
# "The answer is", "the final answer:", "My answer is", "**Final Answer**:", "Answer:" at a line or sentence
# start, "The answers are", "The solutions are"; not "This answer is" nor "I answered:".
_PHRASE = re.compile(
    r"(?:(?<![A-Za-z])(?:the|my|our)\s+(?:(?:final|correct)\s+)?(?:answers?|solutions|roots|zeros)"
    r"|(?<![A-Za-z])final\s+answers?"
    r"|(?:^|(?<=[\n#*>_])|(?<=[.!?:;] ))[ \t]*answers?)"
    r"(?:\*\*|__)?[ \t]*(?:(?:is|are)\b[ \t]*[:=]?|[:=])",
    re.IGNORECASE,
)
# A phrase lead-in right before a box belongs to the boxed statement ("The answer is $\boxed{5}$").
_PHRASE_BEFORE_BOX = re.compile(
    r"(?:(?:the|my|our)\s+)?(?:(?:final|correct)\s+)?(?:answers?|solutions|roots|zeros)(?:\*\*|__)?\s*"
    r"(?:(?:is|are)\s*[:=]?|[:=])?[ \t]*(?:\*\*|__)?[ \t]*(?:\$\$?|\\\[|\\\()?\s*$",
    re.IGNORECASE,
)
_BOX_LEAD_WINDOW = 80  # characters before a box searched for its phrase lead-in; the longest gap between joined boxes
# What may stand between two boxes of one answer (rule 1): closing and opening delimiters, a comma, semicolon,
# "and" or "or" (at least one of them), and the next part's "x =": "$\boxed{2}$, and $x = \boxed{4}$".
_DELIMITERS = r"(?:\s|\$|\\[()\[\]]|\\q?quad(?![A-Za-z])|\\[,;: ]|\*\*)*"
_JOIN_WORD = r"(?:\\text\{\s*(?:and|or)\s*\}|(?:and|or)(?![A-Za-z]))"
_BOX_JOINER = re.compile(
    _DELIMITERS
    + r"(?:[,;]"
    + _DELIMITERS
    + r"(?:"
    + _JOIN_WORD
    + _DELIMITERS
    + r")?|"
    + _JOIN_WORD
    + _DELIMITERS
    + r")"
    + r"(?:[A-Za-z](?:_\{?\w{1,3}\}?)?\s*="
    + _DELIMITERS
    + r")?",
    re.IGNORECASE,
)
_FORMULA_JOINER = re.compile(r"[ \t]*(?:,[ \t]*(?:(?:and|or)[ \t]+)?|(?:and|or)[ \t]+)", re.IGNORECASE)
_VERB = re.compile(r"[ \t](?:is|are|was|were|equals)(?=[ \t])|[ \t]*(?<![<>!=])=(?!=)", re.IGNORECASE)
_OPTION_LETTER = re.compile(r"\(?[A-J]\)?")  # "B", "(B)": the letter of a multiple-choice option
MAX_PARTS = 16  # parts of one answer (boxes or formulas joined by "and", "or", commas)
MAX_SENTENCE_CHARS = 200  # the sentence searched for "... is ANSWER" (rule 5)


def _answer_parts(text: str, start: int, end: int, sentence: bool = False) -> list[tuple[int, int]] | None:
    """The spans of the answer that starts text[start:end]: its leading expression, then every formula joined to
    it by commas, "and" or "or" (``$x=-1$ or $x=4$``: rule 4); with ``sentence``, the expression after the
    verb of a short sentence when none starts it (``The smallest $k$ is 12.``: rule 5). None if there is none."""
    span = leading_expression(text, start, end)
    if span is None:
        return _sentence_answer(text, start, end) if sentence else None
    parts, after = [span[:2]], span[2]
    while span[2] > span[1] and len(parts) < MAX_PARTS:  # the last part was a formula: another may follow
        joiner = _FORMULA_JOINER.match(text, after, end)
        formula = formula_at(text, joiner.end(), end) if joiner and joiner.end() > after else None
        if formula is None or formula[1] < 0:
            break
        span = leading_expression(text, joiner.end(), end)
        if span is None:
            break
        parts.append(span[:2])
        after = span[2]
    return parts


def _sentence_answer(text: str, start: int, end: int) -> list[tuple[int, int]] | None:
    """The answer after the first "is" / "are" / "equals" / "=" of the sentence text[start:...] (rule 5)."""
    stop = min(line_end(text, start, end), start + MAX_SENTENCE_CHARS)
    k = start
    while k < stop:
        formula = formula_at(text, k, stop)
        if formula is not None:  # "$k$" in the subject: skipped whole
            if formula[2] < 0:
                return None
            k = formula[2]
            continue
        c = text[k]
        if c in "!?" or c == "." and (k + 1 >= stop or text[k + 1].isspace()):
            return None  # the sentence ended without an answer
        verb = _VERB.match(text, k, stop)
        if verb is not None:
            parts = _answer_parts(text, verb.end(), end)
            if parts is not None:
                return parts
            k = verb.end()
            continue
        k += 1
    return None


def _has_lead_word(text: str, start: int, end: int) -> bool:
    """Does text[start:end] hold a word that every phrase lead-in holds (a cheap test before the regexes)?"""
    lower = text[start:end].lower()
    return "answer" in lower or "solution" in lower or "root" in lower or "zero" in lower


def _statement(text: str, stmt: int, parts: list[tuple[int, int]], style: str) -> FinalAnswer:
    return FinalAnswer(", ".join(text[a:b] for a, b in parts), stmt, parts[0][0], parts[-1][1], style)


def _box_at(text: str, m: re.Match, end: int) -> tuple[int, int, int] | None:
    """(a, b, after) of the answer in the box at m (a == b for an empty one); None if it was cut."""
    i = skip_spaces(text, m.end(), end)
    if i < end and text[i] == "{":
        close = match_brace(text, i, end)
        if close is None:
            return None  # cut inside the box
        return (*strip_span(text, i + 1, close), close + 1)
    if not text[i:end].strip():
        return None  # cut right after "\boxed"
    span = leading_expression(text, i, line_end(text, i, end))  # "\boxed 5": the expression after it
    return span if span else (i, i, i)


def _last_box(text: str, start: int = 0, end: int | None = None) -> FinalAnswer | None | bool:
    """The last non-empty boxed answer in text[start:end] with the boxes joined to it (rule 1); None if the last
    box is never closed; False if there is no box."""
    end = len(text) if end is None else end
    boxes = list(_BOX.finditer(text, start, end))
    for n in range(len(boxes) - 1, -1, -1):
        box = _box_at(text, boxes[n], end)
        if box is None:
            return None
        if box[1] == box[0]:
            continue  # an empty \boxed{} (an echoed instruction)
        parts, first = [box[:2]], n
        while first > 0 and len(parts) < MAX_PARTS:  # earlier boxes joined to it: one answer in several boxes
            earlier = _box_at(text, boxes[first - 1], end)
            gap = (earlier[2], boxes[first].start()) if earlier and earlier[1] > earlier[0] else None
            if gap is None or gap[1] - gap[0] > _BOX_LEAD_WINDOW or not _BOX_JOINER.fullmatch(text, *gap):
                break
            parts.insert(0, earlier[:2])
            first -= 1
        stmt = boxes[first].start()
        window = max(start, stmt - _BOX_LEAD_WINDOW)
        lead = _PHRASE_BEFORE_BOX.search(text, window, stmt) if _has_lead_word(text, window, stmt) else None
        if lead is not None and lead.group(0).strip():
            stmt = lead.start()
        return _statement(text, stmt, parts, "boxed")
    return False


def _last_statement(text: str, start: int = 0, end: int | None = None) -> FinalAnswer | None:
    """The last #### or phrase statement in text[start:end] (None if there is none or the last one is an empty
    ####). Tried from the end, so that a long completion costs one or two scans, not one per statement."""
    end = len(text) if end is None else end
    phrases = _PHRASE.finditer(text, start, end) if _has_lead_word(text, start, end) else ()  # the costly part
    starts = [(m.start(), m, "hash") for m in _HASH.finditer(text, start, end)]
    starts += [(m.start(), m, "phrase") for m in phrases]
    for _, m, style in sorted(starts, key=lambda x: x[0], reverse=True):
        if style == "hash":
            eol = line_end(text, m.end(), end)
            parts = _answer_parts(text, m.end(), eol, sentence=True) or [strip_span(text, m.end(), eol, ".")]
            return _statement(text, m.start(), parts, "hash") if parts[0][1] > parts[0][0] else None
        stmt = m.start() + len(m.group(0)) - len(m.group(0).lstrip())
        # the statement runs to the line end, or beyond it when the answer starts on a following line
        parts = _answer_parts(text, m.end(), end, sentence=m.group(0).rstrip().endswith(":"))
        if parts is not None and _BOX.match(text, parts[0][0]) is None:
            return _statement(text, stmt, parts, "phrase")
    return None


def _last_tag(text: str) -> FinalAnswer | None | bool:
    """The answer in the last ``<answer>...</answer>`` (rule 0); None if that tag is never closed; False if there
    is no tag or it is empty."""
    opening = text.rfind(_TAG_OPEN)
    if opening < 0:
        return False
    a = opening + len(_TAG_OPEN)
    b = text.find(_TAG_CLOSE, a)
    if b < 0:
        return None  # cut inside the answer
    inner = _last_box(text, a, b)
    if inner is None:
        return None  # a box cut inside the tag
    if inner is False:
        inner = _last_statement(text, a, b)
    if inner is not None:
        return FinalAnswer(inner.text, opening, inner.answer_start, inner.answer_end, "tag")
    # the content itself: its expression (or sentence), else the whole content ("Tuesday")
    parts = _answer_parts(text, a, b, sentence=True) or [strip_span(text, a, b, ".")]
    return False if parts[0][1] == parts[0][0] else _statement(text, opening, parts, "tag")


def find_final_answer(text: str) -> FinalAnswer | None:
    """The final answer of ``text`` (rules in the module docstring), or None if it has none, it is empty or
    it was cut."""
    if not text:
        return None
    tagged = _last_tag(text)
    if tagged is not False:
        return tagged
    boxed = _last_box(text)
    if boxed is False:
        return _last_statement(text)
    if boxed is not None:  # "... \boxed{12} ... Answer: B": an option letter stated after the box names the choice
        later = _last_statement(text, boxed.answer_end)
        if later is not None and _OPTION_LETTER.fullmatch(later.text):
            return later
    return boxed


def extract_answer(text: str) -> str | None:
    """The final answer's text, or None."""
    fa = find_final_answer(text)
    return None if fa is None else fa.text
