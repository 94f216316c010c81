"""The arithmetic task with a calculator tool: the model writes the pair results and calls ``calc`` on the head
computation; the tool's result comes back as a tool turn, and the model states the answer.

    Q: (6+2)-(1+4)=?
    A: 6+2=8. 1+4=5. [calc expr=8-5]<eos>
    T: 3
    A: The answer is 3.<eos>

(the tiny model's chat format, ``oarl.models.tiny.with_tool_calls``). For TRL's tool loop, a prompt is one user
message (:func:`tool_prompts`), the tool is :func:`calc` (``tools=[calc]``) or the method of
:class:`CalculatorEnv` (``environment_factory=CalculatorEnv``), and the reward reads the model's own turns only
(``oarl.rewards.accuracy`` does). The warm start (``warm_start(warmstart_config())``, ``oarl.models.warmstart``:
trained once, then cached) teaches the call format on the tree form's demonstrations (:func:`tool_conversations`),
flawed ones included: a wrong pair result goes into the call and the tool's (correct) value of that wrong call is
the stated answer, so sampled completions are sometimes wrong, as RL needs.
"""

from __future__ import annotations

import re
from dataclasses import asdict

from oarl.data.arithmetic import DEFAULT_TASK, ArithmeticTask, demos, problems

_CALC_EXPRESSION = re.compile(r"-?\d+(?:[+-]\d+)*")
_WRITTEN_RESULT = re.compile(r"=(-?\d+)\.")
_HEAD_OPS = re.compile(r"\)([+-])\(")


def warmstart_config(seed: int = 0) -> dict:
    """The warm start of the calculator task (``oarl.models.warmstart.warm_start`` takes it): a 2-layer tiny model
    (0.14M parameters), 300 supervised steps of 32 conversations (about 2 minutes on a loaded 2-core CPU, once;
    final loss about 0.08). Small and short on purpose: the tests train on it."""
    return {
        "task": asdict(DEFAULT_TASK),
        "tools": "calculator",
        "model": {
            "hidden_size": 64,
            "num_layers": 2,
            "num_heads": 4,
            "intermediate_size": 256,
            "max_position_embeddings": 128,
        },
        "steps": 300,
        "batch_size": 32,
        "learning_rate": 3e-3,
        "seed": seed,
    }


def calc(expr: str) -> str:
    """Evaluate an integer sum or difference.

    Args:
        expr: Integers joined by + and -, e.g. 8-5+2.

    Returns:
        The value, as an integer.
    """
    if not _CALC_EXPRESSION.fullmatch(expr.replace(" ", "")):
        raise ValueError(f"calc takes integers joined by + and -, got {expr!r}")
    return str(sum(int(term) for term in re.findall(r"[+-]?\d+", expr.replace(" ", ""))))


class CalculatorEnv:
    """The calculator as a TRL environment (``environment_factory=CalculatorEnv``): one instance per rollout,
    ``reset`` between rollouts, the public methods are the tools. ``calls`` counts this rollout's calls."""

    def __init__(self):
        self.calls = 0

    def reset(self, **kwargs) -> None:
        self.calls = 0

    def calc(self, expr: str) -> str:
        """Evaluate an integer sum or difference.

        Args:
            expr: Integers joined by + and -, e.g. 8-5+2.

        Returns:
            The value, as an integer.
        """
        self.calls += 1
        return calc(expr)


def tool_prompts(n: int, split: str = "train", seed: int = 0, task: ArithmeticTask | None = None) -> list[dict]:
    """``n`` conversational prompts (``prompt``: one user message ``"<expression>=?"``) with the gold ``answer``."""
    if (task or DEFAULT_TASK).form != "tree":
        raise ValueError("the calculator task takes the tree form")
    return [
        {"prompt": [{"role": "user", "content": f"{r['expression']}=?"}], "answer": r["answer"]}
        for r in problems(split, n, seed=seed, task=task)
    ]


def tool_conversations(n: int, seed: int = 0, task: ArithmeticTask | None = None) -> list[dict]:
    """``n`` warm-up conversations (``messages``: user, assistant with its call, tool, assistant; ``flawed``: a
    pair result is wrong) from the tree
    form's demonstrations (``oarl.data.arithmetic.demos``): the pair results as written (one may be wrong), the
    call on the head computation of the written results, the calculator's value of it, that value stated."""
    if (task or DEFAULT_TASK).form != "tree":
        raise ValueError("the calculator task takes the tree form")
    out = []
    for demo in demos(n, seed=seed, task=task):
        results = _WRITTEN_RESULT.findall(demo["completion"])[: demo["num_steps"]]
        head = results[0] + "".join(op + r for op, r in zip(_HEAD_OPS.findall(demo["expression"]), results[1:]))
        steps = demo["completion"][: demo["completion"].index("The answer is")]
        value = calc(head)
        out.append(
            {
                "messages": [
                    {"role": "user", "content": f"{demo['expression']}=?"},
                    {
                        "role": "assistant",
                        "content": steps,
                        "tool_calls": [{"type": "function", "function": {"name": "calc", "arguments": {"expr": head}}}],
                    },
                    {"role": "tool", "name": "calc", "content": value},
                    {"role": "assistant", "content": f"The answer is {value}."},
                ],
                "flawed": demo["flawed"],
            }
        )
    return out
