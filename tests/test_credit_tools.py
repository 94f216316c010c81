"""Credit over the model's own tokens only: completions holding a tool's or an environment's output (model_mask 0,
TRL's tool_mask / env_mask), on a BPE tokenizer and a tiny random Qwen2."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_credit_fixtures import pad_rows

from oarl.credit import CreditConfig, find_final_answer, segment_completions, token_advantages
from oarl.credit.segments import own_text

pytestmark = pytest.mark.usefixtures("one_thread")


def turns(tok, parts, eos=True):
    """Token ids and model mask of a completion made of (text, by_model) parts, each part encoded on its own (as
    TRL's tool loop concatenates the tool's suffix ids), then EOS (the model's)."""
    ids, own = [], []
    for text, by_model in parts:
        piece = tok(text, add_special_tokens=False)["input_ids"]
        ids += piece
        own += [int(by_model)] * len(piece)
    if eos:
        ids, own = ids + [tok.eos_token_id], own + [1]
    return ids, own


def batch_of(tok, rows):
    """(completion_ids, completion_mask, model_mask) [B, T] of right-padded rows of turns()."""
    ids, mask = pad_rows([r[0] for r in rows], tok.pad_token_id, "right")
    own, _ = pad_rows([r[1] for r in rows], 1, "right")  # padding as TRL pads tool_mask: 1
    return ids, mask, own


def decoded(tok, ids, where):
    return tok.decode(ids[where].tolist(), skip_special_tokens=True, clean_up_tokenization_spaces=False)


MODEL, TOOL = True, False
ROWS = [
    # 0: the tool prints an answer statement; the model never states one -> no answer (not the tool's 7)
    [("First, 12 + 30 = 42. So", MODEL), (" The answer is 7.", TOOL)],
    # 1: the model states 8, then a tool prints 9 -> the answer is the model's 8
    [("She has 5 apples and buys 3 more. The answer is 8.", MODEL), ("\nThe answer is 9.", TOOL)],
    # 2: reasoning, a tool's result, more reasoning, the model's statement
    [("Step 1: compute 100 - 58", MODEL), (" = 42.\n", TOOL), ("So the total is 42. The answer is 42.", MODEL)],
    # 3: one answer in two boxes joined across the tool's output ("\boxed{2}, and" ... "\boxed{4}") -> no answer
    [("Hence x = \\boxed{2}, and", MODEL), (" 12 + 30", TOOL), (" \\boxed{4}.", MODEL)],
]


def test_segments_of_tool_completions(tok):
    rows = [turns(tok, parts) for parts in ROWS]
    ids, mask, own = batch_of(tok, rows)
    seg = segment_completions(tok, ids, mask, model_mask=own)
    plain = segment_completions(tok, ids, mask)  # the same completions read as if the model wrote every token
    tool = mask.bool() & ~own.bool()
    assert torch.equal(seg.tool, tool) and not plain.tool.any()
    assert seg.has_answer.tolist() == [False, True, True, False]
    assert plain.has_answer.tolist() == [True, True, True, True]
    assert (
        decoded(tok, ids[0], plain.answer[0]).strip() == "7"
    )  # without the mask the tool's number would be the answer
    assert decoded(tok, ids[1], seg.answer[1]).strip() == "8" and decoded(tok, ids[1], plain.answer[1]).strip() == "9"
    assert decoded(tok, ids[2], seg.answer[2]).strip() == "42"
    assert decoded(tok, ids[2], seg.reasoning[2]) == "Step 1: compute 100 - 58So the total is 42. "
    assert decoded(tok, ids[3], plain.answer[3]) == "4"  # own text "\\boxed{2}, and\n...\\boxed{4}" joins them: refused
    for b in range(len(ROWS)):
        kinds = torch.stack([seg.reasoning[b], seg.conclusion[b], seg.answer[b], seg.rest[b], seg.tool[b]]).long()
        assert (kinds.sum(0) <= 1).all()  # disjoint
        if seg.has_answer[b]:  # and covering every completion token
            assert torch.equal(kinds.sum(0), mask[b])
        else:
            assert torch.equal(kinds.sum(0), tool[b].long())  # only the tool mask is set without an answer
    # the tool's output ends a reasoning step: "Step 1: compute 100 - 58" and "So the total is 42." are two lines
    steps = segment_completions(tok, ids, mask, span="line", model_mask=own).steps
    assert sorted(set(steps[2][seg.reasoning[2]].tolist())) == [0, 1]
    with pytest.raises(ValueError, match="model_mask must have the shape of completion_ids"):
        segment_completions(tok, ids, mask, model_mask=own[:, :-1])


def test_own_text():
    assert own_text("ab12cd", [(2, 4)]) == "ab\n\ncd"
    assert own_text("The answer is 7.", [(0, 16)]) == "\n" * 16
    assert find_final_answer(own_text("So 3. The answer is 7.", [(5, 22)])) is None


PROMPT = "Q: What is 12 + 30? Let's think step by step."
TOOL_ROWS = [
    [("First, 12 + 30", MODEL), (" = 42.\n", TOOL), ("So the total is 42. So the final answer is \\boxed{42}.", MODEL)],
    [("We add the numbers: 7 * 6", MODEL), (" = 42\n", TOOL), ("The answer is 42.", MODEL)],
    [("First, 12 + 30 = 42. So", MODEL), (" The answer is 7.", TOOL)],  # no answer of its own
    [
        ("Step 1: compute 100 - 58", MODEL),
        (" = 42.\nStep 2: check it.\n", TOOL),
        ("She has 5 apples and buys 3 more, so she has 8 apples. The answer is 8.", MODEL),
    ],
]


def tool_batch(tok, rows=TOOL_ROWS):
    prompts = [tok(PROMPT, add_special_tokens=False)["input_ids"]] * len(rows)
    prompt_ids, prompt_mask = pad_rows(prompts, tok.pad_token_id, "left")
    ids, mask, own = batch_of(tok, [turns(tok, parts) for parts in rows])
    return prompt_ids, prompt_mask, ids, mask, own


class InputRecorder:
    """The input ids of every forward call of the model."""

    def __init__(self, model):
        self.calls = []
        self.handle = model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        if kwargs.get("input_ids") is not None:
            self.calls.append(kwargs["input_ids"].clone())


@pytest.mark.parametrize("estimator", ["perturbation", "gradient", "entropy", "grail"])
def test_credit_over_the_models_tokens_only(tok, model, estimator):
    prompt_ids, prompt_mask, ids, mask, own = tool_batch(tok)
    advantages = torch.tensor([1.0, -0.5, 2.0, -1.5])
    config = CreditConfig(estimator=estimator, apply_to="all")
    recorder = InputRecorder(model)
    try:
        out = token_advantages(
            model,
            tok,
            prompt_ids,
            prompt_mask,
            ids,
            mask,
            advantages,
            config,
            model_mask=own,
            generator=torch.Generator().manual_seed(0),
        )
    finally:
        recorder.handle.remove()
    plain = token_advantages(
        model, tok, prompt_ids, prompt_mask, ids, mask, advantages, config, generator=torch.Generator().manual_seed(0)
    )
    seg, tool = out.segments, mask.bool() & ~own.bool()
    assert torch.equal(seg.tool, tool) and tool.any(1).all()
    assert seg.has_answer.tolist() == [True, True, False, True]
    assert not (seg.reasoning & tool).any() and not (seg.answer & tool).any()
    # tool tokens: importance 0, weight 0, advantage 0 (never trained on); without the mask they were reasoning
    assert (out.importance[tool] == 0).all() and (out.weights[tool] == 0).all() and (out.advantages[tool] == 0).all()
    assert (plain.segments.reasoning & tool).any() and (plain.importance[tool] > 0).any()
    torch.testing.assert_close(out.advantages, advantages[:, None] * out.weights * mask)
    for b in (0, 1, 3):  # reshaped over the model's reasoning tokens
        weights = out.weights[b][seg.reasoning[b]]
        assert weights.numel() > 1 and weights.std() > 0
        assert (out.importance[b][seg.reasoning[b]] > 0).any()
        if estimator != "grail":  # Bi-Level keeps the mass over the model's own reasoning tokens (GRAIL does not)
            assert weights.sum().item() == pytest.approx(weights.numel(), rel=1e-6)
    assert (out.weights[2][~tool[2] & mask[2].bool()] == 1).all()  # no answer of its own: uniform
    if estimator == "perturbation":
        assert_variants_keep_tool_tokens(recorder.calls, prompt_ids, prompt_mask, ids, mask, seg, tool)


def assert_variants_keep_tool_tokens(calls, prompt_ids, prompt_mask, ids, mask, seg, tool):
    """Every OAR-P variant differs from its probe in exactly one token, a reasoning token of the model: never one
    a tool wrote. The probes are laid out as perturbation.py lays them out (align_to_end, mode 'last'); a chunk
    keeps the last columns of its rows."""
    from oarl.credit.probe import align_to_end

    rows = seg.has_answer.nonzero().squeeze(1)
    no_prompt = torch.zeros_like(prompt_mask, dtype=torch.bool)
    full = torch.cat([prompt_ids, ids], 1)[rows]
    attn = torch.cat([prompt_mask, mask], 1).bool()[rows]
    reasoning, answer, tool = (torch.cat([no_prompt, m], 1)[rows] for m in (seg.reasoning, seg.answer, tool))
    probe = align_to_end(full, attn, reasoning, answer, through_answer=False)
    tool = tool.gather(1, probe.source) & probe.attention_mask
    width = probe.input_ids.shape[1]
    assert torch.equal(calls[0], probe.input_ids)  # the clean forward
    changed = 0
    for call in calls[1:]:
        for variant in call:
            w = variant.shape[0]
            diffs = [(r, (probe.input_ids[r, width - w :] != variant).nonzero().flatten()) for r in range(len(rows))]
            ((r, diff),) = [(r, d) for r, d in diffs if len(d) == 1]
            col = width - w + int(diff)
            assert probe.reasoning[r, col] and not tool[r, col]
            changed += 1
    assert changed == int(probe.reasoning.sum())


def test_rollout_credit_refuses_a_model_mask(tok):
    prompt_ids, prompt_mask, ids, mask, own = tool_batch(tok)
    with pytest.raises(ValueError, match="rollout credit does not take a model_mask"):
        token_advantages(
            None,
            tok,
            prompt_ids,
            prompt_mask,
            ids,
            mask,
            torch.ones(4),
            CreditConfig(estimator="rollout"),
            sampler=lambda p, k: [[[]] * k for _ in p],
            scorer=lambda r, c: [0.0] * len(c),
            model_mask=own,
        )


# ------------------------------------------------------------------------------------------- property tests

MODEL_PIECES = [
    "First, 12 + 30 = 42.",
    " So",
    " the total is 42.",
    "\nStep 2: check it.",
    " We add 7 * 6",
    " The answer is 8.",
    " So the final answer is \\boxed{42}.",
    "\n#### 17",
    " 3/4",
]
TOOL_PIECES = [" = 42.\n", " The answer is 7.", "\\boxed{9}", "#### 5\n", " 100 - 58", "\nAnswer: 3\n"]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.integers(0, 8)), min_size=1, max_size=6),
    st.lists(st.floats(-2, 2, allow_nan=False).filter(lambda a: abs(a) > 1e-3), min_size=1, max_size=1),
)
def test_tool_tokens_are_never_credited(tok, pieces, advantage):
    """Whatever the interleaving: the masks partition the tokens with the tool tokens apart, the answer is the one
    found in the model's own text, tool tokens get weight 0 and the Bi-Level mass is kept over the model's reasoning."""
    parts = [
        (MODEL_PIECES[i % len(MODEL_PIECES)], MODEL) if by_model else (TOOL_PIECES[i % len(TOOL_PIECES)], TOOL)
        for by_model, i in pieces
    ]
    ids, own = turns(tok, parts)
    completion_ids, mask, own_mask = batch_of(tok, [(ids, own)])
    seg = segment_completions(tok, completion_ids, mask, model_mask=own_mask)
    tool = mask.bool() & ~own_mask.bool()
    kinds = torch.stack([seg.reasoning, seg.conclusion, seg.answer, seg.rest]).any(0)
    assert torch.equal(seg.tool, tool) and not (kinds & tool).any()
    # the answer: what the finder reads in the model's own text (tool text blanked), or none
    text, spans, pos = "", [], 0
    for piece_text, by_model in parts:
        text += piece_text
        if not by_model:
            spans.append((pos, pos + len(piece_text)))
        pos += len(piece_text)
    final = find_final_answer(own_text(text, spans))
    crosses = final is not None and any(s < final.answer_end and e > final.answer_start for s, e in spans)
    assert bool(seg.has_answer[0]) == (final is not None and not crosses)
    if seg.has_answer[0]:
        assert (
            decoded(tok, completion_ids[0], seg.answer[0]).strip()
            == text[final.answer_start : final.answer_end].strip()
        )
        assert torch.equal(kinds[0] | tool[0], mask[0].bool())
    # weights: Bi-Level on invented importances over the model's reasoning tokens only
    out = token_advantages(
        None,
        tok,
        completion_ids[:, :1],
        mask[:, :1],
        completion_ids,
        mask,
        torch.tensor(advantage),
        CreditConfig(estimator="none"),
        model_mask=own_mask,
    )
    assert (out.weights[tool] == 0).all() and (out.advantages[tool] == 0).all()
    assert (out.weights[mask.bool() & ~tool] == 1).all()
    from oarl.credit import bilevel_weights

    importance = torch.rand(completion_ids.shape, generator=torch.Generator().manual_seed(len(ids)))
    weights = bilevel_weights(importance, seg.reasoning)
    reasoning = weights[seg.reasoning]
    if reasoning.numel():
        assert reasoning.sum().item() == pytest.approx(reasoning.numel(), rel=1e-5)
