"""Prompt templates that name a row's fields: ``PromptTemplate("{Body} {Question}").fill(row)``.

A template substitutes fields, not arbitrary braces, so that LaTeX stays LaTeX:

- ``{name}`` is replaced by the row's field ``name`` (any field of the row, plus ``problem``, the problem text
  oarl detected); a name that is not a field is an error that lists the fields that exist.
- a brace group that is a LaTeX argument stays as it is: after a command (``\\boxed{}``, ``\\text{cm}``,
  ``\\frac{1}{2}``), after ``^``, ``_`` or another group (``x^{n}``, ``a_{ij}``); so does ``{}``.
- ``{{`` and ``}}`` are literal braces (as in Python's ``str.format``), for a brace that would otherwise be
  read as a field.

Values are inserted once and never scanned again: ``\\frac{1}{2}`` inside a problem is safe.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from typing import Any

_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
_LATEX_BEFORE = re.compile(r"(\\[A-Za-z]+\*?\s*|[\^_\]])$")  # what precedes a brace group that is LaTeX


class PromptTemplate:
    """A template parsed once into literal text and field names; ``fill(row)`` gives the prompt.

    Raises ValueError naming the unknown field, the fields that exist and a close match, when ``fields`` (the
    names a row has) is given and the template names another one; ``fill`` raises the same for a row that
    lacks a field (or holds ``None`` in it).
    """

    def __init__(self, template: str, fields: Iterable[str] | None = None, source: str = "the data"):
        self.template = template
        self.parts: list[tuple[str, bool]] = []  # (literal text, False) or (field name, True)
        literal, pos, latex_end = [], 0, -1  # latex_end: where the last LaTeX brace group ended
        for m in _TOKEN.finditer(template):
            literal.append(template[pos : m.start()])
            pos = m.end()
            token, name = m.group(0), m.group(1)
            if token in ("{{", "}}"):
                literal.append(token[0])
            elif not name.strip() or m.start() == latex_end or _LATEX_BEFORE.search(template[: m.start()]):
                literal.append(token)  # \\frac{1}{2}: the second group follows the first
                latex_end = m.end()
            else:
                self.parts.append(("".join(literal), False))
                self.parts.append((name, True))
                literal = []
        literal.append(template[pos:])
        self.parts.append(("".join(literal), False))
        self.fields = [name for name, is_field in self.parts if is_field]
        if fields is not None:
            self.check(fields, source)

    def check(self, fields: Iterable[str], source: str = "the data") -> None:
        fields = list(fields)
        for name in self.fields:
            if name not in fields:
                raise ValueError(_unknown_field(name, fields, self.template, source))

    def fill(self, row: Mapping[str, Any], source: str = "the row") -> str:
        out = []
        for text, is_field in self.parts:
            if not is_field:
                out.append(text)
                continue
            value = row.get(text)
            if value is None:
                raise ValueError(
                    _unknown_field(text, [k for k, v in row.items() if v is not None], self.template, source)
                )
            out.append(value if isinstance(value, str) else str(value))
        return "".join(out)


def _unknown_field(name: str, fields: list[str], template: str, source: str) -> str:
    close = difflib.get_close_matches(name, fields, n=1, cutoff=0.6) or [f for f in fields if f.lower() == name.lower()]
    hint = f" Did you mean {{{close[0]}}}?" if close else ""
    return (
        f"prompt template {template!r} names the field {{{name}}}, which {source} does not have; its fields are "
        f"{', '.join(fields)}.{hint} (Write {{{{ and }}}} for literal braces.)"
    )
