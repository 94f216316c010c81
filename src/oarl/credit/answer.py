"""Moved to :mod:`oarl.answer`; kept so that old imports work."""

from oarl.answer import MAX_PARTS, MAX_SENTENCE_CHARS, FinalAnswer, extract_answer, find_final_answer

__all__ = ["MAX_PARTS", "MAX_SENTENCE_CHARS", "FinalAnswer", "extract_answer", "find_final_answer"]
