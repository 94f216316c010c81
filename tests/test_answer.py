"""find_final_answer: the final-answer statement and its character spans."""

import inspect

import pytest

import oarl.answer
import oarl.expression
from oarl.answer import extract_answer
from oarl.credit import answer as old_answer
from oarl.credit import expression as old_expression
from oarl.credit import find_final_answer


@pytest.mark.parametrize(
    ("text", "answer", "lead_in", "style"),
    [
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
    ],
)
def test_statements(text, answer, lead_in, style):
    final = find_final_answer(text)
    assert final is not None and final.style == style
    assert final.text == answer == text[final.answer_start : final.answer_end]
    assert text[final.statement_start : final.answer_start] == lead_in
    assert extract_answer(text) == answer


@pytest.mark.parametrize(
    ("text", "answer", "span", "lead_in", "style"),
    [
        # one answer in several boxes: the span runs from the first part to the last
        (
            "The roots are \\(\\boxed{2}\\), \\(\\boxed{4}\\), and \\(\\boxed{9}\\).",
            "2, 4, 9",
            "2}\\), \\(\\boxed{4}\\), and \\(\\boxed{9",
            "The roots are \\(\\boxed{",
            "boxed",
        ),
        ("$x = \\boxed{2}$ or $x = \\boxed{4}$", "2, 4", "2}$ or $x = \\boxed{4", "\\boxed{", "boxed"),
        ("\\boxed{2} \\text{ and } \\boxed{3}", "2, 3", "2} \\text{ and } \\boxed{3", "\\boxed{", "boxed"),
        ("So x = \\boxed{5}. Wait, that is wrong: x = \\boxed{7}.", "7", "7", "\\boxed{", "boxed"),  # a correction
        ("\\boxed{5}\n\\boxed{7}", "7", "7", "\\boxed{", "boxed"),  # no joiner: the last box
        # formulas joined by and / or / commas
        ("The answer is $x=-1$ or $x=4$.", "x=-1, x=4", "x=-1$ or $x=4", "The answer is $", "phrase"),
        (
            "The solutions are $y = 1$ and $y = 5$.",
            "y = 1, y = 5",
            "y = 1$ and $y = 5",
            "The solutions are $",
            "phrase",
        ),
        ("The answers are 4 and 6.", "4 and 6", "4 and 6", "The answers are ", "phrase"),
        # sentences after "Answer:"
        ("Final Answer: The smallest $k$ is 12.", "12", "12", "Final Answer: The smallest $k$ is ", "phrase"),
        ("#### The total is 18", "18", "18", "#### The total is ", "hash"),
        # <answer> tags
        ("<think>\nsee \\boxed{5}\n</think>\n<answer> 6 </answer>", "6", "6", "<answer> ", "tag"),
        ("<answer>\\boxed{7}</answer>", "7", "7", "<answer>\\boxed{", "tag"),
        ("<answer>The smallest k is 12.</answer>", "12", "12", "<answer>The smallest k is ", "tag"),
        ("<answer>Tuesday</answer>", "Tuesday", "Tuesday", "<answer>", "tag"),
        ("<answer></answer> so \\boxed{4}", "4", "4", "\\boxed{", "boxed"),  # an empty tag is no statement
        # an option letter after the box; numbers as written
        ("so $x=\\boxed{12}$, which is (B).\n\nAnswer: B", "B", "B", "Answer: ", "phrase"),
        ("The answer is 2 500 000.", "2 500 000", "2 500 000", "The answer is ", "phrase"),
        ("The answer is 3.2 million dollars.", "3.2 million", "3.2 million", "The answer is ", "phrase"),
        ("The answer is seven.", "seven", "seven", "The answer is ", "phrase"),
        ("The answer is 2, 4, 6, ...", "2, 4, 6, ...", "2, 4, 6, ...", "The answer is ", "phrase"),
        ("The answer is 5...", "5", "5", "The answer is ", "phrase"),  # a pause, not an open list
    ],
)
def test_statements_of_issue_24(text, answer, span, lead_in, style):
    final = find_final_answer(text)
    assert final is not None and (final.text, final.style) == (answer, style)
    assert text[final.answer_start : final.answer_end] == span
    assert text[final.statement_start : final.answer_start] == lead_in


@pytest.mark.parametrize(
    "text",
    [
        "<think> 60 * 62 = 3720 </think> <answer> 3720",
        "<answer>\\boxed{5</answer>",
        "The answer is one of them.",
        "Final Answer: I could not solve it.",
    ],
)
def test_no_answer_of_issue_24(text):
    assert find_final_answer(text) is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "We add 7 and 6.",
        "answer: ",
        "So \\boxed{4",
        "\\boxed{3} then \\boxed{4",
        "\\boxed{}",
        "#### \n",
        "I answered: 5",
        "This answer is 5.",
        "The answer is reasonable.",
        "The answer is a multiple of 3.",
        "So \\boxed",
        "The answer is $$",
        "The answer is (",
    ],
)
def test_no_answer(text):
    assert find_final_answer(text) is None and extract_answer(text) is None


def test_degenerate_completions_cost_little():
    """Repetition loops of small models: each scan is bounded and only the last statements are scanned (one
    of these took a minute when every statement was scanned to the line end)."""
    import time

    texts = [
        "The answer is (" * 3000,
        "The answer is 5. " * 3000,
        "\\boxed{" * 3000,
        "The answer is " + "a and " * 5000,
        "The answer is 1, " * 4000,
        "#### 7\n" * 3000,
        "\\boxed{1}, " * 3000 + "\\boxed{2}",
        "Final Answer: the " + "x is y " * 3000,
        "<answer>" * 2000 + "5</answer>",
        "The answer is " + "$1$ or " * 3000,
    ]
    started = time.perf_counter()
    answers = [extract_answer(t) for t in texts]
    assert answers[:6] == [None, "5", None, None, "1", "7"]
    assert answers[6] == ", ".join(["1"] * 15 + ["2"]) and answers[7:] == [
        None,
        "5",
        ", ".join(["1"] * 16),
    ]  # MAX_PARTS
    assert time.perf_counter() - started < 20  # about 1 s on an idle machine


@pytest.mark.parametrize(("old", "new"), [(old_answer, oarl.answer), (old_expression, oarl.expression)])
def test_old_module_paths_reexport_every_public_name(old, new):
    """oarl.credit.answer and oarl.credit.expression (the parser's old home) hand on the same objects."""
    public = {
        name
        for name, value in vars(new).items()
        if not name.startswith("_")
        and not inspect.ismodule(value)
        and getattr(value, "__module__", new.__name__) == new.__name__
    }
    assert set(old.__all__) == public
    assert all(getattr(old, name) is getattr(new, name) for name in public)
