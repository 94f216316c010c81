"""Prompt templates: fields by name, LaTeX braces left alone, values never re-read as templates."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oarl.data.template import PromptTemplate

ROW = {"Body": "A train leaves at 3 pm.", "Question": "When does it arrive?", "problem": "P", "id": 7}


@pytest.mark.parametrize(
    "template, expected",
    [
        ("{Body} {Question}", "A train leaves at 3 pm. When does it arrive?"),
        ("{Body}{Question}", "A train leaves at 3 pm.When does it arrive?"),  # adjacent fields are two fields
        ("{problem}\nPut the answer in \\boxed{}.", "P\nPut the answer in \\boxed{}."),
        ("\\frac{1}{2} of {problem}", "\\frac{1}{2} of P"),  # a command's arguments are LaTeX
        ("x^{n} + a_{ij} = \\text{cm} \\sqrt[3]{x} {problem}", "x^{n} + a_{ij} = \\text{cm} \\sqrt[3]{x} P"),
        ("{{problem}} is {problem}", "{problem} is P"),  # doubled braces are literal braces
        ("item {id}", "item 7"),  # non-text values as text
        ("no fields at all", "no fields at all"),
    ],
)
def test_fill(template, expected):
    assert PromptTemplate(template, ROW).fill(ROW) == expected


def test_unknown_field_lists_the_fields_and_a_close_match():
    with pytest.raises(ValueError) as info:
        PromptTemplate("{Bdy} {Question}", ROW, source="svamp.jsonl")
    message = str(info.value)
    assert "{Bdy}" in message and "svamp.jsonl" in message and "Body, Question, problem, id" in message
    assert "Did you mean {Body}?" in message
    with pytest.raises(ValueError, match="Question"):  # a row that lacks a field the template names
        PromptTemplate("{Question}").fill({"Body": "b"})


text = st.text(alphabet=st.sampled_from(list("ab {}\\_^$12")), max_size=30)


@given(body=text, question=text, sep=st.sampled_from([" ", "\n", " -- "]))
def test_values_are_inserted_verbatim(body, question, sep):
    """Whatever the values hold (LaTeX, braces, placeholders of other fields), they are inserted as they are."""
    row = {"Body": body, "Question": question}
    assert PromptTemplate("{Body}" + sep + "{Question}", row).fill(row) == body + sep + question
