"""The final answer as models write it: one table of (completion text, gold answer, verdict), by class.

Each row goes through the whole path that rewards and evaluation use: ``find_final_answer`` on the
completion, then ``verify`` against the gold (fast path or math-verify worker). The classes are those of
issues 9 (1-7) and 24 (8-13); every class has right answers that must be scored right and wrong ones that
must stay wrong, in the styles of GSM8K, MATH, AIME, Minerva, AMC and chat / reasoning models.
"""

import pytest

from oarl.evaluate import majority_correct
from oarl.rewards import accuracy, is_correct, verify

R, W = True, False  # the verdict that is right

CASES = {
    # 1. When a boxed answer exists, the last box decides; later sentences that mention "answer" do not.
    "boxed_then_commentary": [
        ("Therefore $\\boxed{5}$. This answer is consistent with the constraints.", "5", R),
        ("So the area is \\boxed{12}. The answer is reasonable since the sides are 3 and 4.", "12", R),
        ("Thus \\boxed{\\frac{3}{4}}.\n\nNote: the answer is less than 1, as expected.", "\\frac34", R),
        ("We get \\boxed{7}. Double-checking: 3 + 4 = 7, so the answer is 7 apples.", "7", R),
        ("First guess \\boxed{6}, but recomputing gives \\boxed{8}. Answer: 6 was my first try.", "8", R),
        ("## Final Answer\n\\[\n\\boxed{\\dfrac{1}{2}}\n\\]\nThis answer is exact.", "\\frac12", R),
        ("I will put the answer in \\boxed{}.\n3 + 4 = 7. The answer is 7.", "7", R),  # an echoed empty box
        ("\\boxed{3}\n\n#### 5", "3", R),
        ("Therefore $\\boxed{4}$. The answer is 5 if we count the endpoints.", "5", W),
        ("We get \\boxed{10}. Final answer: 12 would be wrong.", "12", W),
        ("So the answer is \\boxed{12", "12", W),  # cut inside the box
    ],
    # 2. A phrase or #### answer is the expression that starts the statement, not the rest of the sentence.
    "trailing_words": [
        ("The answer is 72 clips, altogether.", "72", R),
        ("#### 72, altogether", "72", R),
        ("The answer is 72, since 48+24=72.", "72", R),
        ("So she makes 9 * 2 = 18 dollars.\nThe answer is 18 dollars, which is what she earns daily.", "18", R),
        ("The answer is $18 per day.", "18", R),
        ("Natalia sold 48 + 24 = 72 clips.\n#### 72 clips", "72", R),
        ("The answer is 3.5 miles.", "3.5", R),
        ("The answer is -12 degrees Celsius.", "-12", R),
        ("Answer: 1,000 students attended.", "1000", R),
        ("The final answer is 12 (a dozen eggs).", "12", R),
        ("The answer is 72 because 48 + 24 = 72.", "72", R),
        ("The answer is therefore 42, as required.", "42", R),
        ("The answer is 72. The answer is reasonable.", "72", R),  # a phrase that is no answer does not count
        ("So, the final answer is 2 * $800 = $1600.", "1600", R),
        ("The final answer is 25 x 4 = 100 apples.", "100", R),
        ("The answer is 12 x 3 eggs.", "36", R),
        ("The final answer is:\n\n72.\n", "72", R),  # alone on the next line
        ("We can now determine the answer:\n1. Add the costs.\n2. Subtract the discount.", "1", W),  # a list, no answer
        ("The answer is 71 clips, altogether.", "72", W),
        ("The answer is 7, since 48+24=72.", "72", W),
        ("The answer is 4, not 5.", "5", W),
        ("The answer is 5 or 6.", "5", W),  # a hedge is not the first option
        ("The answer is 5 and 6.", "5", W),
        ("#### 17 dollars, which is less than 18", "18", W),
    ],
    # 3. Markdown emphasis around or inside the statement.
    "emphasis": [
        ("Final Answer: **73**", "73", R),
        ("The final answer is **73**.", "73", R),
        ("The answer is **18**.", "18", R),
        ("**The answer is 18.**", "18", R),
        ("**Final Answer:** 73", "73", R),
        ("**Final Answer**: $\\frac{2}{3}$", "\\frac{2}{3}", R),
        ("### Final Answer\nThe answer is **$-4$**.", "-4", R),
        ("The answer is *12*.", "12", R),
        ("__The answer is 9.__", "9", R),
        ("**Answer: 0.25**", "\\frac14", R),
        ("The final answer is **37**.", "73", W),
        ("**The answer is 19.**", "18", W),
    ],
    # 4. \boxed without braces: the expression after it, as MATH's graders read it.
    "boxed_without_braces": [
        ("... so the result is \\boxed 5.", "5", R),
        ("First \\boxed{3} looked right; the result is \\boxed 5.", "5", R),
        ("$\\boxed 7$", "7", R),
        ("The answer is \\boxed 12.5.", "12.5", R),
        ("\\boxed \\frac{1}{2}", "0.5", R),
        ("\\fbox{8}", "8", R),
        ("... so the result is \\boxed 6.", "5", W),
        ("First \\boxed{5}, then the result is \\boxed 3.", "5", W),
    ],
    # 5. Integers and rationals compare exactly; a tolerance only where a side is a decimal approximation.
    "exact_numbers": [
        ("The answer is 10000000001.", "10000000000", W),
        ("\\boxed{\\frac{1}{2^{98}}}", "\\frac{1}{2^{99}}", W),
        ("\\boxed{\\{\\frac{1}{2^{98}}, 1\\}}", "\\{\\frac{1}{2^{99}}, 1\\}", W),  # inside a set
        ("\\boxed{2^{100}+1}", "2^{100}", W),
        ("\\boxed{1000001}", "1000000", W),
        ("\\boxed{123456789012345678901}", "123456789012345678900", W),
        ("\\boxed{0.0000001}", "0.0000002", W),
        ("\\boxed{0.3333}", "\\frac13", W),
        ("\\boxed{12345678.9}", "12345679", W),
        ("\\boxed{\\frac{22}{7}}", "\\pi", W),
        ("\\boxed{\\frac{1}{2^{99}}}", "2^{-99}", R),
        ("\\boxed{10000000000.0}", "10000000000", R),
        ("\\boxed{0.333333}", "\\frac13", R),
        ("\\boxed{3.141593}", "\\pi", R),
        ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{1}{\\sqrt{2}}", R),
        ("\\boxed{\\sin\\frac{\\pi}{6}}", "\\frac12", R),
    ],
    # 6. Small notations: ordinals, degrees, scientific notation, mixed numbers, separators, unicode.
    "notations": [
        ("\\boxed{12^{\\text{th}}}", "12", R),
        ("The answer is 12th.", "12", R),
        ("\\boxed{30°}", "30", R),
        ("\\boxed{30^\\circ}", "30", R),
        ("\\boxed{30^{\\circ}}", "30^\\circ", R),
        ("\\boxed{1.5e3}", "1500", R),
        ("The answer is 1.5e3 meters.", "1500", R),
        ("\\boxed{2.5E-3}", "0.0025", R),
        ("The answer is 1 1/4 cups.", "\\frac54", R),
        ("\\boxed{1\\frac{1}{4}}", "\\frac{5}{4}", R),
        ("\\boxed{-2 1/2}", "-\\frac52", R),
        ("\\boxed{1{,}000{,}000}", "1000000", R),
        ("\\boxed{1\\,000}", "1000", R),
        ("The answer is −5.", "-5", R),
        ("\\boxed{50\\%}", "50", R),
        ("The answer is 25%, a quarter of them.", "25", R),
        ("\\boxed{13^{\\text{th}}}", "12", W),
        ("\\boxed{1.5e3}", "150", W),
        ("\\boxed{1 1/4}", "\\frac14", W),
        ("\\boxed{31^\\circ}", "30", W),
        ("\\boxed{5\\%}", "50", W),
    ],
    # Whole solutions in the styles of the benchmarks and of chat / reasoning models.
    "styles": [
        ("Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = $<<9*2=18>>18.\n#### 18", "18", R),
        ("It takes 2/2=<<2/2=1>>1 bolt of white fiber\nSo the total is 2+1=<<2+1=3>>3 bolts.\n#### 3", "3", R),
        ("so $m+n = 100 + 13 = \\boxed{\\textbf{(113) }}$.\n~Steven Chen", "113", R),  # AIME
        ("meaning that $xy=\\boxed{025}$.", "25", R),
        ("the sum is $\\boxed{\\textbf{(55) }}$.", "055", R),
        ("The solution set is $\\boxed{(-\\infty, 2] \\cup [3, \\infty)}$.", "(-\\infty,2]\\cup[3,\\infty)", R),  # MATH
        ("so $x \\in \\boxed{[2, 3)}$", "(2, 3)", W),
        ("The roots are \\boxed{\\{1, 2, 3\\}}.", "\\{3, 2, 1\\}", R),
        ("\\boxed{\\begin{pmatrix} 1 \\\\ -2 \\end{pmatrix}}", "\\begin{pmatrix}1\\\\-2\\end{pmatrix}", R),
        ("\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}", "\\begin{pmatrix}1\\\\-2\\end{pmatrix}", W),
        ("In polar form: $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}$", "(3,\\frac{\\pi}{2})", R),
        ("The answer is $-\\frac{3}{2}$.", "-1.5", R),
        ("The answer is $x = 5$.", "5", R),
        ("Final Answer: The final answer is $\\frac{1}{2}$. I hope it is correct.", "0.5", R),  # Minerva
        ("**Final Answer**\n\\[\n\\boxed{204}\n\\]", "204", R),  # chat model
        ("<think>\nMaybe 7? No: 2 + 6 = 8.\n</think>\n\nThe final answer is $\\boxed{8}$.", "8", R),  # reasoning
        ("<think>\n3 * 4 = 12\n</think>\nThe answer is 12.", "12", R),
        ("I think it is about five.", "5", W),  # no statement at all
        ("The answer is \\boxed{\\text{(C)}}.", "\\text{(C)}", R),
        ("The answer is $-7$, since the sum is negative.", "7", W),
    ],
    # Issue 24 -------------------------------------------------------------------------------------------
    # 8. One answer in several boxes: boxes joined by commas, "and", "or" are one list; a later box after any other
    #    text replaces the earlier one (a correction).
    "several_boxes": [
        ("The roots are \\(\\boxed{2}\\), \\(\\boxed{4}\\), and \\(\\boxed{9}\\).", "2, 4, 9", R),
        ("The values are $\\boxed{-5}$ and $\\boxed{3}$.", "-5, 3", R),
        ("Therefore, the solutions are $x = \\boxed{-2}$ or $x = \\boxed{3}$.", "3, -2", R),
        ("So the real roots are\n\\[\n\\boxed{1}, \\quad \\boxed{-1}, \\quad \\boxed{2}\n\\]", "\\{-1, 1, 2\\}", R),
        ("Hence the ordered pairs are $\\boxed{(1, 2)}$ and $\\boxed{(2, 1)}$.", "(1, 2), (2, 1)", R),
        ("So $x = \\boxed{5}$. Wait, I made an arithmetic error: 3 + 4 = 7, so $x = \\boxed{7}$.", "7", R),
        ("I got \\boxed{12}.\n\nLet me double-check... Actually the area is \\boxed{16}.", "16", R),
        ("$d = \\boxed{15\\frac{39}{40}}$, or $\\boxed{\\frac{639}{40}}$ inches.", "\\frac{639}{40}", R),  # MATH
        ("The roots are \\(\\boxed{2}\\), \\(\\boxed{4}\\), and \\(\\boxed{9}\\).", "9", W),
        ("The values are $\\boxed{-5}$ and $\\boxed{3}$.", "-5, 3, 7", W),
        ("So $x = \\boxed{2}$ or $x = \\boxed{5}$.", "2", W),  # a hedge over two boxes
        ("So $x = \\boxed{5}$. Wait, I made an arithmetic error: so $x = \\boxed{7}$.", "5", W),
        ("The area is \\boxed{12} and the perimeter is \\boxed{14}.", "12", W),
        ("\\boxed{A} or \\boxed{C}", "A", W),
    ],
    # 9. An answer stated as a sentence.
    "sentences": [
        ("Final Answer: The smallest $k$ is 12.", "12", R),
        ("Final Answer: The area of $PQRS$ is 48. I hope it is correct.", "48", R),  # Minerva's few-shot format
        ("Final Answer: The final answer is $\\frac{3}{4}$. I hope it is correct.", "0.75", R),
        ("The answers are 4 and 6.", "4, 6", R),
        ("So the solutions are $y = 1$ and $y = 5$.", "1, 5", R),
        ("The answer is $x=-1$ or $x=4$.", "\\{-1, 4\\}", R),
        ("**Final Answer:** There are 15 ways to seat them.", "15", R),
        ("She pays 3 * 12 = 36 dollars.\n#### The total cost is $36.", "36", R),
        ("The answer is $x=-1$ or $x=4$.", "-1", W),  # not its first formula
        ("Final Answer: The smallest $k$ is 12.", "13", W),
        ("The answers are 4 and 6.", "4", W),
        ("So the solutions are $y = 1$ and $y = 5$.", "1, 6", W),
        ("Final Answer: The final answer is 7. I hope it is correct.", "8", W),
        ("Final Answer: I could not find the smallest $k$.", "12", W),
    ],
    # 10. Words inside the box: a trailing qualifier, an option letter with its text, a letter after the box.
    "words_in_box": [
        ("Therefore $\\boxed{g(x) = kx^2 \\text{ for every real } k}$.", "kx^2", R),
        ("\\boxed{x = \\frac{\\pi}{2} + k\\pi \\text{ where } k \\text{ is an integer}}", "\\frac{\\pi}{2} + k\\pi", R),
        ("The correct option is \\boxed{C: The enzyme is inhibited}.", "C", R),
        ("$\\boxed{\\textbf{(B) }2,025}$", "B", R),  # AMC
        ("$\\boxed{\\textbf{(B) }2,025}$", "2025", R),
        ("So $x = \\boxed{12}$, which matches choice (B).\n\nAnswer: B", "B", R),
        ("The answer is \\boxed{(D) \\ 3\\sqrt{2}}.", "D", R),
        ("\\boxed{\\text{(E) } 17}", "\\text{(E)}", R),
        ("Therefore $\\boxed{g(x) = kx^2 \\text{ for every real } k}$.", "kx^3", W),
        ("The correct option is \\boxed{C: The enzyme is inhibited}.", "B", W),
        ("$\\boxed{\\textbf{(B) }2,025}$", "C", W),
        ("$\\boxed{\\textbf{(B) }2,025}$", "2024", W),
        ("So $x = \\boxed{12}$, which matches choice (B).\n\nAnswer: B", "A", W),
        ("\\boxed{(A) and (C)}", "A", W),  # two options are not one
        ("So $x = \\boxed{12}$.\n\nAnswer: A is wrong, since it gives 13.", "A", W),
    ],
    # 11. R1-Zero / TinyZero / open-r1 formats: <answer> tags decide.
    "answer_tags": [
        ("<think>\nLet me compute 60 * 62 = 3720.\n</think>\n<answer> 3720 </answer>", "3720", R),
        ("<think>19 + 36 = 55, 55 + 55 = 110, 110 - 7 = 103</think> <answer>(19 + 36) + 55 - 7</answer>", "103", R),
        ("<think>\nThe box would be \\boxed{5}, but wait: 2 + 4 = 6.\n</think>\n<answer>6</answer>", "6", R),
        ("<think>\n...\n</think>\n<answer>\nThe answer is $\\frac{1}{2}$.\n</answer>", "0.5", R),
        ("<think>sin 60 degrees</think><answer>\\boxed{\\frac{\\sqrt{3}}{2}}</answer>", "\\frac{\\sqrt3}{2}", R),
        (
            " Let me solve this step by step.\n3 + 5 = 8</think>\n<answer>8</answer>",
            "8",
            R,
        ),  # the prompt opened <think>
        ("<think>The roots are 2 and 3.</think><answer>x = 2, x = 3</answer>", "2, 3", R),
        ("<think>\nLet me compute 60 * 62 = 3720.\n</think>\n<answer> 3720 </answer>", "3721", W),
        ("<think>\nThe box would be \\boxed{6}.\n</think>\n<answer>5</answer>", "6", W),  # the tag decides
        ("<think>\n60 * 62 = 3720\n</think>\n<answer> 3720", "3720", W),  # cut before </answer>
        ("<think>Maybe 7.</think><answer>answer here</answer>", "7", W),
        ("<think>\nI guess 12.\n</think>\n<answer>The number of apples is 13.</answer>", "12", W),
    ],
    # 12. Numbers as people write them.
    "written_numbers": [
        ("The city has 2 500 000 people, so the answer is 2 500 000.", "2500000", R),
        ("The answer is 3.2 million.", "3200000", R),
        ("The answer is 3.2 million.", "3.2", R),  # a scale word on one side only: with or without it
        ("She has seven apples left. The answer is seven.", "7", R),
        ("\\boxed{\\text{twenty-five}}", "25", R),
        ("The probability is $\\boxed{315/1,000}$.", "\\frac{63}{200}", R),
        ("Since $z^2 = -1$, $z = \\boxed{-1i}$.", "-i", R),
        ("\\boxed{3 - 1i}", "3 - i", R),
        ("The answer is 1 250 000 dollars.", "1,250,000", R),
        ("The answer is 2 500 000.", "2", W),
        ("The answer is 3.2 million.", "320000", W),
        ("The answer is seven.", "8", W),
        ("The answer is one of the two options above.", "1", W),  # a number word followed by words
        ("\\boxed{315/1,000}", "315", W),
        ("Since $z^2 = -1$, $z = \\boxed{-1i}$.", "i", W),
        ("\\boxed{3.2 \\text{ million}}", "3200", W),
    ],
    # 13. The unsafe direction: a list stays a list, an open list is not its first items, bases count.
    "not_the_same": [
        ("The answer is 45, 210.", "45210", W),
        ("\\boxed{3, 500}", "3500", W),
        ("The first even numbers are \\boxed{2, 4, 6, \\ldots}", "2, 4, 6", W),
        ("The sequence is 2, 4, 6, ...\nThe answer is 2, 4, 6, ...", "2, 4, 6", W),
        ("\\boxed{1011_3}", "1011_2", W),
        ("\\boxed{3421_{10}}", "3421_7", W),
        ("\\boxed{1021_2}", "1021_3", W),  # 2 is no digit of base 2
        ("The answer is 45, 210.", "45, 211", W),
        ("The answer is 45,210.", "45210", R),
        ("\\boxed{45, 210}", "210, 45", R),
        ("\\boxed{2, 4, 6, \\ldots}", "2, 4, 6, \\dots", R),
        ("\\boxed{1011_2}", "11_{10}", R),
        ("\\boxed{1011_2}", "1011_{2}", R),
        ("The answer is $1011_2$.", "1011", R),  # plain digits against a base: the base is the question's
        ("\\boxed{3,500}", "3500", R),
    ],
}

ROWS = [(cls, *row) for cls, rows in CASES.items() for row in rows]


@pytest.mark.parametrize(("cls", "text", "gold", "right"), ROWS, ids=[f"{r[0]}-{i}" for i, r in enumerate(ROWS)])
def test_verdict(cls, text, gold, right):
    assert is_correct(text, gold) is right
    assert accuracy([text], [gold]) == [float(right)]


def test_the_table_is_large_and_covers_every_class_both_ways():
    assert len(ROWS) + len(VOTES) >= 170
    for cls, rows in CASES.items():
        assert len(rows) >= 6 and {r[2] for r in rows} == {R, W}, cls


# 7. maj@n votes by value: equal answers pool their votes whatever their spelling.
VOTES = [
    # (answers of the n samples, which are right, majority right?)
    (["\\frac12", "0.5", "\\dfrac12", "3", "3"], [R, R, R, W, W], R),
    (["1/2", "3", "0.50", "3", "\\frac{1}{2}"], [R, W, R, W, R], R),
    (["1,000", "1000", "999", "999", "999"], [R, R, W, W, W], W),
    (["\\sqrt{2}/2", "\\frac{1}{\\sqrt2}", "\\frac{\\sqrt{2}}{2}", "0.7", "0.7"], [R, R, R, W, W], R),
    (["x+1", "1+x", "x", "x", None], [R, R, W, W, W], R),  # tie: the answer seen first wins
    (["2", "3", "3.0", "\\frac{6}{2}", None], [R, W, W, W, W], W),  # the wrong answer pools its votes too
    (["5", "\\frac{10}{2}", "6", "6", "6"], [R, R, W, W, W], W),
    ([None, None, None], [W, W, W], W),  # no answer at all
    (["7", None, None], [R, W, W], R),
    (["2, 4", "\\{4, 2\\}", "4", "2", "2"], [R, R, W, W, W], R),  # a list pools with its reordered set (tie: first)
    (["45, 210", "45210", "45210", "45, 210", "45,210"], [R, W, W, R, W], W),  # a list is not the number
]


@pytest.mark.parametrize(("preds", "correct", "expected"), VOTES)
def test_majority_votes_by_value(preds, correct, expected):
    assert all(
        verify(p, q) == (c and d)
        for p, c in zip(preds, correct)
        for q, d in zip(preds, correct)
        if p is not None and q is not None and (c or d)
    )  # the table's right answers are equal
    assert majority_correct(preds, correct) is expected


# ---------------------------------------------------------------------------------------------------------
# properties

from collections import Counter  # noqa: E402
from fractions import Fraction  # noqa: E402

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from oarl.answer import extract_answer  # noqa: E402

NUMBER_TEXTS = st.one_of(
    st.integers(-(10**7), 10**7).map(str),
    st.integers(1000, 10**9).map(lambda n: f"{n:,}"),
    st.decimals(-1000, 1000, places=2, allow_nan=False, allow_infinity=False).map(str),
)
LEADS = [
    "The answer is ",
    "the final answer is ",
    "#### ",
    "Answer: ",
    "**Final Answer:** ",
    "The answer is **",
    "So the answer is therefore ",
    "The correct answer is: ",
    "The answer is $",
]
TAILS = [
    "",
    ".",
    " clips, altogether.",
    ", since 48+24=72.",
    " dollars, which is the total.",
    " because it is.",
    "**.",
    " (in dollars).",
    "!\nDone.",
    " and that is it.",
    ", not 5.",
    " or so.",
    "\n\nThe answer is reasonable.",
]


@settings(max_examples=150, deadline=None)
@given(NUMBER_TEXTS, st.sampled_from(LEADS), st.sampled_from(TAILS))
def test_a_stated_number_never_takes_the_words_after_it(number, lead, tail):
    assert extract_answer(f"We add 3 + 4 = 7.\n{lead}{number}{tail}") == number


def _spellings(value: Fraction) -> list[str]:
    p, q = value.numerator, value.denominator
    out = [f"\\frac{{{p}}}{{{q}}}", f"{p}/{q}", f"\\dfrac{{{p}}}{{{q}}}"]
    if q == 1:
        out += [str(p), f"{p}.0", f"{p:,}"]
    return out


FRACTIONS = st.fractions(min_value=-50, max_value=50, max_denominator=12)


@settings(max_examples=200, deadline=None)
@given(FRACTIONS, FRACTIONS, st.data())
def test_rationals_compare_exactly_and_symmetrically(a, b, data):
    x, y = data.draw(st.sampled_from(_spellings(a))), data.draw(st.sampled_from(_spellings(b)))
    assert verify(x, y) is verify(y, x) is (a == b)


@settings(max_examples=25, deadline=None)
@given(st.integers(10**9, 10**30), st.integers(-3, 3), st.booleans())
def test_large_integers_are_never_near_equal(n, delta, fast):
    """Also through math-verify (fast=False): its float rounding and chopped differences do not apply."""
    assert verify(str(n + delta), str(n), use_fast_path=fast) is (delta == 0)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 200), st.integers(1, 200), st.booleans())
def test_tiny_powers_are_told_apart_by_math_verify(e, f, inverted):
    x, y = (f"2^{{-{e}}}", f"\\frac{{1}}{{2^{{{f}}}}}") if inverted else (f"\\frac{{1}}{{2^{{{e}}}}}", f"2^{{-{f}}}")
    assert verify(x, y, use_fast_path=False) is (e == f)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.one_of(st.none(), st.fractions(min_value=0, max_value=4, max_denominator=2)), min_size=1, max_size=8),
    st.fractions(min_value=0, max_value=4, max_denominator=2),
    st.data(),
)
def test_majority_by_value_matches_a_vote_on_exact_values(values, gold, data):
    """Answers respelled at random vote as their values would: the winner is the most frequent value (the
    first seen among ties), right iff it is the gold."""
    preds = [None if v is None else data.draw(st.sampled_from(_spellings(v))) for v in values]
    counts = Counter(v for v in values if v is not None)
    expected = bool(counts) and max(counts, key=lambda v: (counts[v], -values.index(v))) == gold
    assert majority_correct(preds, [v == gold for v in values]) is expected


def test_grouping_costs_one_worker_call_per_distinct_constant():
    """maj@n must not be quadratic in math-verify calls: constants are grouped by their exact value."""
    from oarl import rewards
    from oarl.rewards import group_by_value, value_key

    assert value_key("\\frac{\\sqrt{2}}{2}") == value_key("\\frac{1}{\\sqrt2}") != value_key("\\frac{\\sqrt{3}}{2}")
    assert value_key("\\sin\\frac{\\pi}{6}") == value_key("1/2") == "q:1/2"
    assert value_key("2^{100}+1") != value_key("2^{100}")
    assert value_key("0.5") is None and value_key("x+1") is None and value_key("50\\%") is None  # verified pairwise
    answers = [f"\\frac{{\\sqrt{{{k}}}}}{{{k + 1}}}" for k in range(2, 14)] + [
        "\\frac{\\sqrt{8}}{9}",
        "\\frac{2\\sqrt{2}}{9}",
    ]
    calls = rewards.stats["math_verify"]
    labels = group_by_value(answers)
    assert rewards.stats["math_verify"] - calls <= len(answers)  # one value key each, no pairwise verification
    assert labels == list(range(12)) + [6, 6]  # sqrt(8)/9 = 2 sqrt(2)/9 is the 7th answer
    assert group_by_value(["0.5", "\\frac{\\sqrt{2}}{2}", "0.707107", "1/2", None]) == [0, 1, 1, 0, None]


@settings(max_examples=200, deadline=None)
@given(st.decimals(-100, 100, places=7, allow_nan=False, allow_infinity=False), FRACTIONS, st.booleans())
def test_decimals_match_within_the_tolerance_symmetrically(decimal, fraction, near):
    """A decimal equals a fraction iff within |a - b| <= 1e-6 * min(1, max(|a|, |b|)), both ways round."""
    from oarl.mathverify_worker import approximately_equal

    if near:  # the fraction written to 6 or 7 places: the approximations that should pass, and their neighbours
        decimal = round(fraction.numerator / fraction.denominator, 6 + int(decimal) % 2)
    value = Fraction(str(decimal))
    x, y = str(decimal), f"\\frac{{{fraction.numerator}}}{{{fraction.denominator}}}"
    expected = value == fraction or approximately_equal(value, fraction)
    assert verify(x, y) is verify(y, x) is expected
