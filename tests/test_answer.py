"""find_final_answer: the final-answer statement and its character spans."""

import pytest

from oarl.credit import find_final_answer
from oarl.credit.answer import extract_answer


@pytest.mark.parametrize(("text", "answer", "lead_in", "style"), [
    ("The answer is 42.", "42", "The answer is ", "phrase"),
    ("The answer is 3.5.", "3.5", "The answer is ", "phrase"),  # a decimal point does not end the sentence
    ("The final answer is: 42", "42", "The final answer is: ", "phrase"),
    ("Answer: 42\nSome text", "42", "Answer: ", "phrase"),
    ("The answer is $42$.", "42", "The answer is $", "phrase"),
    ("The answer is -7", "-7", "The answer is ", "phrase"),
    ("so \\boxed{\\frac{1}{2}}", "\\frac{1}{2}", "\\boxed{", "boxed"),  # nested braces
    ("\\boxed{\\{1,2\\}}", "\\{1,2\\}", "\\boxed{", "boxed"),  # escaped braces do not count
    ("\\fbox{7}", "7", "\\fbox{", "boxed"),
    ("The answer is \\boxed{5}.", "5", "The answer is \\boxed{", "boxed"),  # the phrase belongs to the statement
    ("the answer is $\\boxed{4}$.", "4", "the answer is $\\boxed{", "boxed"),
    ("#### 1,000", "1,000", "#### ", "hash"),
    ("#### 42\n", "42", "#### ", "hash"),
    ("#### 3 then the answer is 5", "5", "the answer is ", "phrase"),  # the last statement wins
    ("\\boxed{3} then #### 5", "3", "\\boxed{", "boxed"),  # a boxed answer wins over phrases
    ("The answer is 5. Wait, the answer is 6.", "6", "the answer is ", "phrase"),
    ("The answer is 72 clips, altogether.", "72", "The answer is ", "phrase"),  # the expression, not the sentence
    ("#### 72, since 48+24=72", "72", "#### ", "hash"),
    ("#### Tuesday.", "Tuesday", "#### ", "hash"),  # no expression: the line
    ("**Final Answer:** 73", "73", "Final Answer:** ", "phrase"),
    ("The answer is:\n\n$$\n\\frac{1}{2}\n$$", "\\frac{1}{2}", "The answer is:\n\n$$\n", "phrase"),
    ("so \\boxed 5.", "5", "\\boxed ", "boxed"),
    ("The answer is $1,000 per month.", "1,000", "The answer is $", "phrase"),  # a currency sign
    ("\\boxed{7}. The answer is 7 because this answer is 7.", "7", "\\boxed{", "boxed"),
])
def test_statements(text, answer, lead_in, style):
    final = find_final_answer(text)
    assert final is not None and final.style == style
    assert final.text == answer == text[final.answer_start : final.answer_end]
    assert text[final.statement_start : final.answer_start] == lead_in
    assert extract_answer(text) == answer


@pytest.mark.parametrize("text", [
    "", "   ", "We add 7 and 6.", "answer: ", "So \\boxed{4", "\\boxed{3} then \\boxed{4", "\\boxed{}", "#### \n",
    "I answered: 5", "This answer is 5.", "The answer is reasonable.", "The answer is a multiple of 3.", "So \\boxed",
    "The answer is $$", "The answer is (",
])
def test_no_answer(text):
    assert find_final_answer(text) is None and extract_answer(text) is None


def test_degenerate_completions_cost_little():
    """Repetition loops of small models: each scan is bounded and only the last statements are scanned (one
    of these took a minute when every statement was scanned to the line end)."""
    import time

    texts = ["The answer is (" * 3000, "The answer is 5. " * 3000, "\\boxed{" * 3000, "The answer is " + "a and " * 5000,
             "The answer is 1, " * 4000, "#### 7\n" * 3000]
    started = time.perf_counter()
    answers = [extract_answer(t) for t in texts]
    assert answers == [None, "5", None, None, "1", "7"]
    assert time.perf_counter() - started < 20  # about 1 s on an idle machine
