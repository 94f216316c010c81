"""Moved to :mod:`oarl.expression`; kept so that old imports work."""

from oarl.expression import (
    MAX_EXPRESSION_CHARS,
    MAX_FORMULA_CHARS,
    NUMBER_WORDS,
    formula_at,
    leading_expression,
    line_end,
    match_brace,
    skip_spaces,
    strip_span,
)

__all__ = [
    "MAX_EXPRESSION_CHARS",
    "MAX_FORMULA_CHARS",
    "NUMBER_WORDS",
    "formula_at",
    "leading_expression",
    "line_end",
    "match_brace",
    "skip_spaces",
    "strip_span",
]
