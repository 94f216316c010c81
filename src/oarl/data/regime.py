"""``Regime``: the settings of a job that trains a model on one task, from warm start to held-out evaluation.

One type for every job (``oarl.jobs``): the embedded tiny model on arithmetic (``oarl.data.arithmetic.REGIMES``) and
SmolLM2-135M on word problems (``oarl.data.word_problems.SMOLLM2_REGIME``). Every number of those two instances is
measured in experiments/regime/README.md and experiments/smollm2/README.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Regime:
    """A task, a model, a supervised warm start, an RL phase and a held-out evaluation.

    ``warmstart_config()`` gives the dict :func:`oarl.models.warmstart.warm_start` takes (its hash keys the cache);
    ``grpo_kwargs()`` the GRPOConfig fields of the RL phase; ``task_kwargs()`` the task's fields as keyword
    arguments of its ``problems`` function.

    One optimizer step takes ``prompts_per_step x num_generations`` completions, trained in micro-batches of
    ``micro_batch_size`` (gradient accumulation; None: the whole step in one micro-batch); one generation call
    samples the completions of ``steps_per_generation`` steps at once (cheaper per completion on a CPU).
    """

    task: Any = None  # the task's frozen dataclass (ArithmeticTask, WordProblemTask): what problems look like
    model: str | dict | None = (
        None  # a base model's name, or the fields of a tiny model built from scratch (TinyConfig)
    )
    seed: int = 0
    # supervised warm start (0 steps: none), cached by oarl.models.warmstart
    sft_steps: int = 0
    sft_batch_size: int = 8
    sft_lr: float = 1e-4
    # RL
    rl_steps: int = 20
    rl_lr: float = 1e-5
    num_generations: int = 4
    prompts_per_step: int = 8
    micro_batch_size: int | None = None
    steps_per_generation: int = 1
    max_completion_length: int = 256
    temperature: float = 1.0
    beta: float = 0.0
    n_rl_prompts: int = 1024
    # held-out evaluation: avg@eval_samples over eval_problems test problems (and hard_eval_problems of a harder
    # split, with completions up to hard_max_new_tokens, where the task has one)
    eval_problems: int = 256
    eval_samples: int = 4
    hard_eval_problems: int = 0
    hard_max_new_tokens: int | None = None

    def task_kwargs(self) -> dict:
        return asdict(self.task)

    def warmstart_config(self) -> dict:
        cfg = {
            "task": self.task_kwargs(),
            "steps": self.sft_steps,
            "batch_size": self.sft_batch_size,
            "learning_rate": self.sft_lr,
            "seed": self.seed,
        }
        if isinstance(self.model, str):
            return {"base": self.model, **cfg}
        return {**cfg, "model": dict(self.model or {})}

    def grpo_kwargs(self) -> dict:
        per_step = self.prompts_per_step * self.num_generations
        micro = self.micro_batch_size or per_step
        if per_step % micro:
            raise ValueError(f"prompts_per_step x num_generations ({per_step}) must be a multiple of micro_batch_size")
        kwargs = dict(
            learning_rate=self.rl_lr,
            lr_scheduler_type="constant",  # what the measured runs used (TRL's default decays linearly)
            max_steps=self.rl_steps,
            num_generations=self.num_generations,
            per_device_train_batch_size=micro,
            max_completion_length=self.max_completion_length,
            temperature=self.temperature,
            beta=self.beta,
            seed=self.seed,
        )
        if micro != per_step:
            kwargs["gradient_accumulation_steps"] = per_step // micro
        if self.steps_per_generation > 1:
            kwargs["generation_batch_size"] = self.steps_per_generation * per_step
        return kwargs
