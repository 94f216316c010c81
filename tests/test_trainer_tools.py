"""OARTrainer in TRL's tool-calling and multi-turn paths: the tiny model calls a calculator (oarl.data.calculator), TRL
inserts the tool's result (tool_mask 0), and the credit goes to the model's own tokens only."""

from __future__ import annotations

import math
import os
import re

import pytest
import torch
from datasets import Dataset

from oarl import OARConfig, OARTrainer
from oarl.answer import extract_answer
from oarl.data.calculator import CalculatorEnv, calc, tool_prompts, warmstart_config
from oarl.models.tiny import load_tiny
from oarl.models.warmstart import warm_start
from oarl.rewards import completion_text

from conftest import threads

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # environment_factory and rollout_func are experimental in TRL


@pytest.fixture(scope="session")
def tool_lm_dir():
    """The calculator task's warm start: trained once (about 2 minutes on one thread of a loaded CPU; several times
    that with two threads fighting for two loaded cores), then read from the cache ($OARL_CACHE)."""
    with threads(1):
        return warm_start(warmstart_config(), progress=False)


def answer_distance(completions, answer, **kwargs):
    """-|stated - gold| from the model's own turns (-10 without an answer): graded, so that a group's rewards differ."""
    out = []
    for completion, gold in zip(completions, answer):
        stated = extract_answer(completion_text(completion))
        out.append(-min(abs(int(stated) - int(gold)), 10) if stated and re.fullmatch(r"-?\d+", stated) else -10.0)
    return out


class ToolRecordingTrainer(OARTrainer):
    """Keeps each credit pass with the tool mask TRL made for it, and the advantages the loss saw."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.passes, self.loss_inputs = [], []

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        self.passes.append((self.last_credit, output.get("tool_mask")))
        return output

    def _compute_loss(self, model, inputs):
        self.loss_inputs.append((inputs["advantages"].clone(), inputs["completion_mask"] * inputs["tool_mask"]))
        return super()._compute_loss(model, inputs)


def tool_trainer(lm_dir, out, credit, max_steps=1, **trainer_kwargs):
    """A 1-step OARTrainer on the calculator task (GRAIL on every completion, not only the negative ones)."""
    model, tokenizer = load_tiny(lm_dir)
    args = OARConfig(
        output_dir=str(out),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=64,
        max_steps=max_steps,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        bf16=False,
        activation_checkpointing=False,
        use_cpu=True,
        beta=0.0,
        temperature=1.0,
        disable_tqdm=True,
        credit=credit,
        credit_chunk_size=16,
        credit_apply_to="all",
    )
    dataset = Dataset.from_list(tool_prompts(8, seed=1))
    trainer = ToolRecordingTrainer(
        model=model,
        reward_funcs=[answer_distance],
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        **trainer_kwargs,
    )
    return trainer, tokenizer


def check_tool_credit(trainer, tokenizer, credit: str) -> int:
    """Checks every credit pass against TRL's tool mask; returns the number of completions with a tool span whose
    reasoning was reshaped."""
    reshaped = 0
    for batch, tool_mask in trainer.passes:
        out, seq_adv, ids, mask = batch
        seg = out.segments
        assert tool_mask is not None, "TRL made no tool mask"
        tool = mask.bool() & (tool_mask == 0)
        assert torch.equal(seg.tool, tool)
        assert tool.any(1).float().mean() >= 0.5, "the warm-started model should call the tool in most completions"
        # tool tokens: nothing credited, nothing trained on
        assert (
            (out.importance[tool] == 0).all() and (out.weights[tool] == 0).all() and (out.advantages[tool] == 0).all()
        )
        assert not (tool & (seg.reasoning | seg.conclusion | seg.answer | seg.rest)).any()
        for b in range(ids.shape[0]):
            row = ids[b][mask[b].bool()]
            where = tool[b][mask[b].bool()]
            if where.any():  # TRL's tool span: the tool's turn and the next assistant header, nothing of the model's
                first, last = where.nonzero().min(), where.nonzero().max()
                assert where[first : last + 1].all()
                assert re.fullmatch(r"T: [^\n]*\nA: ", tokenizer.decode(row[where]))
            if not seg.has_answer[b]:
                continue
            answer = seg.answer[b][mask[b].bool()]
            if where.any():  # the answer is in the model's turn after the tool's
                assert answer.nonzero().min() > where.nonzero().max()
            model_text = "".join(tokenizer.decode([t]) if not w else "\n" for t, w in zip(row.tolist(), where.tolist()))
            assert tokenizer.decode(row[answer]) == extract_answer(model_text.replace(tokenizer.eos_token, ""))
            reasoning = seg.reasoning[b]
            if seq_adv[b] != 0 and where.any():
                weights = out.weights[b][reasoning]
                assert weights.numel() > 1 and weights.std() > 0
                if credit != "grail":  # Bi-Level: the mass is kept over the model's reasoning tokens
                    assert weights.sum().item() == pytest.approx(weights.numel(), rel=1e-5)
                reshaped += 1
    for advantages, loss_mask in trainer.loss_inputs:  # what TRL trains on: the model's tokens, OAR's advantages
        assert (advantages[~loss_mask.bool()] == 0).all()
    return reshaped


@pytest.mark.parametrize("credit", ["perturbation", "gradient", "entropy", "grail"])
def test_tool_calls(tool_lm_dir, tmp_path, credit):
    trainer, tokenizer = tool_trainer(tool_lm_dir, tmp_path, credit, tools=[calc])
    trainer.train()
    assert trainer.state.global_step == 1 and len(trainer.passes) == 1
    logs = trainer.state.log_history[0]
    assert logs["tools/call_frequency"] > 0.5 and math.isfinite(logs["loss"])
    assert check_tool_credit(trainer, tokenizer, credit) >= 2


def test_environment_factory(tool_lm_dir, tmp_path):
    """TRL's multi-turn environment path: one CalculatorEnv per rollout, its method the tool; the same masks."""
    trainer, tokenizer = tool_trainer(tool_lm_dir, tmp_path, "gradient", environment_factory=CalculatorEnv)
    trainer.train()
    assert any(env.calls > 0 for env in trainer.environments)
    assert check_tool_credit(trainer, tokenizer, "gradient") >= 2


def scripted_rollouts(prompts, trainer):
    """A rollout_func whose environment writes "T: 2\\nA: " between two model turns (env_mask 0), and whose stated
    answers are off by 0, 1, 3 and 6 within a group (so that no advantage is 0)."""
    tok = trainer.processing_class
    out = {"prompt_ids": [], "completion_ids": [], "logprobs": None, "env_mask": []}
    for i, prompt in enumerate(prompts):
        out["prompt_ids"].append(
            tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        )
        value = calc(re.sub(r"[()]", "", prompt[0]["content"].removesuffix("=?")))
        turns = [
            ("[calc expr=1+1]", 1),
            (tok.eos_token, 1),
            ("T: 2\nA: ", 0),
            (f"So {value}. The answer is {int(value) + (0, 1, 3, 6)[i % 4]}.", 1),
            (tok.eos_token, 1),
        ]
        ids, mask = [], []
        for text, own in turns:
            piece = tok(text, add_special_tokens=False)["input_ids"]
            ids, mask = ids + piece, mask + [own] * len(piece)
        out["completion_ids"].append(ids)
        out["env_mask"].append(mask)
    return out


def test_rollout_func_env_mask(tool_lm_dir, tmp_path):
    """A rollout_func's env_mask reaches the credit as TRL's tool_mask: the environment's tokens get no credit."""
    trainer, tokenizer = tool_trainer(tool_lm_dir, tmp_path, "entropy", rollout_func=scripted_rollouts)
    trainer.train()
    ((batch, tool_mask),) = trainer.passes
    assert (batch.completion_mask.bool() & (tool_mask == 0)).sum(1).tolist() == [8] * 8  # "T: 2\nA: "
    assert check_tool_credit(trainer, tokenizer, "entropy") == 8  # every completion has signal, an answer, a tool span


@pytest.mark.parametrize("way", ["tools", "environment_factory", "rollout_func"])
def test_rollout_credit_refuses_tools(tool_lm_dir, tmp_path, way):
    kwargs = {
        "tools": dict(tools=[calc]),
        "environment_factory": dict(environment_factory=CalculatorEnv),
        "rollout_func": dict(rollout_func=scripted_rollouts),
    }[way]
    with pytest.raises(ValueError, match="with tools, environments or a rollout_func the continuations would need"):
        tool_trainer(tool_lm_dir, tmp_path, "rollout", **kwargs)
