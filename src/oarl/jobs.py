"""The named jobs of ``oarl train``, and what a run trains on (``TrainArgs``).

A job is a model and a dataset that come with their own regime (``oarl.data.regime.Regime``: warm start, RL and
held-out sizes): ``oarl train`` with no flag runs ``EMBEDDED`` (the tiny model warm-started on arithmetic, then OAR-G
on a laptop CPU), ``oarl train --model smollm2-135m`` runs ``SMOLLM2`` (SmolLM2-135M-Instruct on word problems).
A job's settings (``Job.defaults``) replace GRPOConfig's defaults, not the user's flags or YAML; each job's recipe
under ``recipes/`` writes the same settings out (tests/test_train_job.py proves that each recipe equals its job).
Any other model and dataset is a plain run with GRPOConfig's defaults.

``load_model_and_data`` gives a run its model, tokenizer, training set, held-out splits and rewards, for a job or
for any model (a directory or hub name) and dataset (a name of ``oarl.data.DATASET_CHOICES`` or a .jsonl file).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from transformers.integrations import is_deepspeed_zero3_enabled

from oarl import rewards
from oarl.checks import check_train
from oarl.data import DATASET_CHOICES, arithmetic, load_train_dataset
from oarl.data.regime import Regime
from oarl.data.word_problems import SMOLLM2_REGIME
from oarl.devices import ACTIVATION_CHECKPOINTING, cpu_has_bf16, mixed_precision
from oarl.errors import UsageError
from oarl.models.loading import check_model_name, load_model
from oarl.models.tiny import load_tiny
from oarl.models.warmstart import warm_start

DEFAULT_EVAL_SIZE = 64  # held-out problems of the test split of gsm-symbolic and hub datasets
DEFAULT_EVAL_SAMPLES = 4  # samples per held-out problem (avg@n) unless a job's dataset says otherwise


@dataclass
class TrainArgs:
    """What to train on, and where the run goes (the RL settings are OARConfig's)."""

    model: str = field(
        default="tiny",
        metadata={
            "help": "'tiny' (embedded, warm-started on arithmetic), "
            "'smollm2-135m' (offline GGUF), a Hugging Face name or a directory."
        },
    )
    dataset: str = field(
        default="arithmetic",
        metadata={
            "help": "'arithmetic' (embedded; the default of 'tiny'), "
            "'word-problems' (offline; the default of 'smollm2-135m'), "
            "'gsm-symbolic' (reasoning-gym, offline), 'gsm8k', 'math' "
            "(hub) or a .jsonl file."
        },
    )
    task: str = field(
        default="tree",
        metadata={
            "help": "Form of the embedded arithmetic task: 'tree' (pairs combined "
            "in the answer) or 'chain' (one written step per operation).",
            "choices": ["tree", "chain"],
        },
    )
    problem_field: str | None = field(
        default=None,
        metadata={
            "help": "Problem field of a JSONL dataset (default: "
            "detected as `oarl eval` does, a context field such as "
            "Body kept before the question)."
        },
    )
    answer_field: str | None = field(
        default=None,
        metadata={
            "help": "Gold-answer field of a JSONL dataset (default: detected; a list is a set of acceptable answers)."
        },
    )
    prompt_template: str | None = field(
        default=None,
        metadata={
            "help": "The prompt (user message for chat models) "
            "made of the row's fields, e.g. '{Body} {Question}'; "
            "{problem} is the detected problem. Used for training "
            "and held-out problems alike; no instruction is added."
        },
    )
    train_size: int | None = field(
        default=None,
        metadata={"help": "Number of training problems (default: the embedded regime's, or the whole dataset)."},
    )
    runs_dir: str = field(
        default="runs",
        metadata={
            "help": "Parent folder of run directories named "
            "<credit>-<model>-<time> (unless --output_dir names the run directory)."
        },
    )
    resume: str | None = field(default=None, metadata={"help": "A run directory to continue from its last checkpoint."})
    sft_steps: int | None = field(
        default=None,
        metadata={
            "help": "Supervised warm-start steps of the tiny model, "
            "or of smollm2-135m on word problems (0: none) "
            "(default: the regime's, 600 for tiny, 300 with "
            "--task chain, 50 for smollm2-135m). Cached by config."
        },
    )
    eval_size: int | None = field(
        default=None,
        metadata={
            "help": "Held-out problems per split (default: 256 "
            "for the embedded job (128 hard ones) and the SmolLM2 "
            "job; gsm-symbolic "
            f"and hub datasets: {DEFAULT_EVAL_SIZE} of their test split; "
            "a .jsonl file: --eval_fraction of it). 0 disables held-out "
            "evaluation."
        },
    )
    eval_fraction: float = field(
        default=0.1,
        metadata={
            "help": "Fraction of a .jsonl training file held out for "
            "evaluation when --eval_size is not given (disjoint from "
            "training; the same rows for every seed)."
        },
    )
    eval_dataset: str | None = field(
        default=None,
        metadata={
            "help": "A .jsonl file (or dataset name) of held-out problems, instead of a part of the training file."
        },
    )
    eval_samples: int | None = field(
        default=None,
        metadata={"help": "Samples per held-out problem for avg@n (default: 2 on --dataset word-problems, else 4)."},
    )
    eval_every: int = field(
        default=0,
        metadata={"help": "Also evaluate held-out accuracy every N steps (0: only before and after training)."},
    )


@dataclass(frozen=True)
class Job:
    """A named job: ``model`` and ``dataset`` (the model's default dataset) trained with ``regimes[task]`` (``--task``
    forms of the embedded job; "tree" is the default); ``settings`` are the OARConfig fields it sets beyond the
    regime's ``grpo_kwargs``; ``recipe`` the file under recipes/ that writes all of them out; ``chat``: whether its
    held-out problems are asked through the chat template (None: when the tokenizer has one)."""

    name: str
    model: str
    dataset: str
    regimes: Mapping[str, Regime]
    recipe: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    chat: bool | None = None

    def regime(self, task: str = "tree") -> Regime:
        return self.regimes.get(task, self.regimes["tree"])

    def defaults(self) -> dict:
        """The OARConfig settings of the job (they replace GRPOConfig's defaults, not the user's flags): the RL
        phase of its default regime, OAR-G, a log row per step, four checkpoints, no reporting integrations."""
        regime = self.regime()
        return {
            **regime.grpo_kwargs(),
            "credit": "gradient",
            "logging_steps": 1,
            "save_strategy": "steps",
            "save_steps": max(1, regime.rl_steps // 4),
            "report_to": "none",
            "dataloader_num_workers": 0,
            **self.settings,
        }

    def warm_start(self, task: str = "tree", sft_steps: int | None = None, use_cpu: bool = False) -> str:
        """The directory of the job's warm-started model (trained once, then cached; ``warm_start`` says so and
        shows a bar); ``sft_steps`` replaces the regime's; with 0 steps a base model is its name, as it is."""
        regime = self.regime(task)
        if sft_steps is not None:
            regime = dataclasses.replace(regime, sft_steps=sft_steps)
        if regime.sft_steps == 0 and isinstance(regime.model, str):
            return regime.model
        log_every = 50 if isinstance(regime.model, dict) else max(1, regime.sft_steps // 10)
        return warm_start(regime.warmstart_config(), log_every=log_every, use_cpu=use_cpu)


EMBEDDED = Job(
    "embedded", "tiny", "arithmetic", arithmetic.REGIMES, "default.yaml", {"save_total_limit": 2}, chat=False
)
# a credit pass holds no more rows than a training micro-batch; OAR-P perturbs whole sentences (token by token it
# costs ~50 training steps per 256-token completion on this model: experiments/smollm2/README.md)
SMOLLM2 = Job(
    "smollm2",
    "smollm2-135m",
    "word-problems",
    {"tree": SMOLLM2_REGIME},
    "smollm2-135m-cpu.yaml",
    {"credit_batch_size": SMOLLM2_REGIME.micro_batch_size, "credit_span": "sentence", "save_total_limit": 1},
)
JOBS = (EMBEDDED, SMOLLM2)


def find_job(model: str, dataset: str) -> Job | None:
    """The job of ``(model, dataset)``, or None for a plain run."""
    return next((job for job in JOBS if (job.model, job.dataset) == (model, dataset)), None)


def default_dataset(model: str) -> str:
    """A job's model trains on its job's dataset unless told otherwise; any other model on arithmetic."""
    return next((job.dataset for job in JOBS if job.model == model), EMBEDDED.dataset)


def dataset_regime(dataset: str) -> Regime | None:
    """The regime whose held-out split, sizes, seed and reward a dataset brings with it, whatever the model:
    word-problems, the SmolLM2 regime's (the same test problems for every training seed). None: a plain dataset."""
    return SMOLLM2_REGIME if dataset == SMOLLM2.dataset else None


def device_defaults(use_cpu: bool = False, cpu_bf16: bool = False) -> dict:
    """Device and precision (``oarl.devices``): the GPU when there is one, in bf16 where it has bf16 (GRPOConfig's
    activation checkpointing stays on); else the CPU in float32 (bf16 autocast with cpu_bf16), no checkpointing."""
    settings = mixed_precision(use_cpu, cpu_bf16)
    return {**settings, ACTIVATION_CHECKPOINTING: False} if settings["use_cpu"] else settings


def trainer_defaults(model: str, dataset: str, use_cpu: bool, output_dir: str) -> dict:
    """What replaces GRPOConfig's defaults in ``oarl train``: the device and precision, a log row per step, no
    reporting integrations, and the job's settings if ``(model, dataset)`` is a job. The SmolLM2 job runs bf16
    autocast on a CPU with bf16 instructions (avx512_bf16, AMX): 1.8x faster steps on the one that measured the
    regime, the same losses to 1e-4 (experiments/smollm2/README.md §3f); elsewhere bf16 is emulated, and float32 is used."""
    job = find_job(model, dataset)
    cpu_bf16 = job is SMOLLM2 and cpu_has_bf16()
    defaults = {"output_dir": output_dir, **device_defaults(use_cpu, cpu_bf16), "report_to": "none", "logging_steps": 1}
    return {**defaults, **(job.defaults() if job else {})}


# ------------------------------------------------------------------------------------------------ checks


def check_job(train_args: TrainArgs, config) -> None:
    """Values the dataclasses accept but a run cannot use (the GRPOConfig numbers: OARConfig's own check)."""
    check_train(train_args)
    if config.max_steps == 0:
        raise UsageError(
            "--max_steps 0 would still train one step: give the number of steps (>= 1), or -1 to train "
            "num_train_epochs; to evaluate a model without training, use `oarl eval --model ...`"
        )
    if config.max_steps < -1:
        raise UsageError(
            f"--max_steps {config.max_steps} would train num_train_epochs: give the number of steps "
            "(>= 1), or -1 to train num_train_epochs"
        )
    if train_args.eval_dataset and train_args.eval_size == 0:
        raise UsageError(
            f"--eval_dataset {train_args.eval_dataset} would not be used: --eval_size 0 turns held-out "
            "evaluation off; drop one of the two"
        )
    embedded = [f"--{f}" for f in ("prompt_template", "eval_dataset") if getattr(train_args, f)]
    if find_job(train_args.model, train_args.dataset) is EMBEDDED and embedded:
        raise UsageError(
            f"{' and '.join(embedded)} apply to --dataset FILE or a named dataset; the embedded job (tiny "
            "model, arithmetic) asks its own prompts and holds out its own test and hard splits"
        )


def check_sources(train_args: TrainArgs) -> None:
    """The model name and the data, checked in a moment, before a run directory or a warm start."""
    check_model_name(train_args.model)
    for name in filter(None, (train_args.dataset, train_args.eval_dataset)):
        if name not in DATASET_CHOICES or train_args.prompt_template:  # reads a file once; reports its fields
            load_train_dataset(
                name,
                size=1,
                conversational=False,
                problem_field=train_args.problem_field,
                answer_field=train_args.answer_field,
                prompt_template=train_args.prompt_template,
            )


def check_heldout_backend(train_args: TrainArgs, config) -> None:
    """Raises UsageError, before any model is loaded or folder written, for held-out evaluation (anything but
    ``--eval_size 0``) with several processes under DeepSpeed ZeRO-3 or FSDP. The evaluation generates on the main
    process alone, with the model outside the engine: under ZeRO-3 its parameters there are empty partitions, under
    FSDP its forwards wait for all-gathers that the other processes never join. The backend is read from what
    ``accelerate launch`` exports and from the training arguments (``--deepspeed``, ``--fsdp``), as the Trainer's
    accelerator will read it (on a machine without GPUs accelerate runs DDP instead of FSDP; refused all the same)."""
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    fsdp = bool(config.fsdp) or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true")
    if train_args.eval_size != 0 and several and (is_deepspeed_zero3_enabled() or fsdp):
        raise UsageError(
            "held-out evaluation does not run under DeepSpeed ZeRO-3 or FSDP with several processes: "
            "set --eval_size 0, and evaluate the run's final_model afterwards with `oarl eval`"
        )


# ------------------------------------------------------------------------------------------------ model and data


class Loaded(NamedTuple):
    """What a run trains and evaluates: ``heldout`` is {split: rows} whose ``problem`` is the whole message that
    training sends (instruction or template included); ``chat``: ask them through the chat template (None: when the
    tokenizer has one); ``eval_samples`` per held-out problem; ``max_new_tokens`` {split: tokens} where a split needs
    longer completions than training allows."""

    model: Any
    tokenizer: Any
    train: Any  # datasets.Dataset with prompt and answer columns
    heldout: dict[str, list[dict]]
    chat: bool | None
    reward_funcs: list
    eval_samples: int
    max_new_tokens: dict[str, int]


def load_model_and_data(train_args: TrainArgs, config) -> Loaded:
    """The model (a job's warm start, or ``train_args.model`` as it is), its training set and held-out splits."""
    job = find_job(train_args.model, train_args.dataset)
    regime = job.regime(train_args.task) if job else dataset_regime(train_args.dataset)
    eval_samples = train_args.eval_samples
    if eval_samples is None:
        eval_samples = regime.eval_samples if regime else DEFAULT_EVAL_SAMPLES
    if job is EMBEDDED:
        model, tokenizer = load_tiny(job.warm_start(train_args.task, train_args.sft_steps, config.use_cpu))
        train, heldout = embedded_dataset_and_heldout(train_args, regime)
        return Loaded(
            model,
            tokenizer,
            train,
            heldout,
            job.chat,
            [arithmetic.reward],
            eval_samples,
            {"hard": regime.hard_max_new_tokens},
        )
    path = job.warm_start(sft_steps=train_args.sft_steps, use_cpu=config.use_cpu) if job else train_args.model
    model, tokenizer = load_model(path)
    train, heldout = dataset_and_heldout(train_args, config, getattr(tokenizer, "chat_template", None) is not None)
    reward_funcs = [rewards.accuracy] if regime else [rewards.accuracy, rewards.format]
    return Loaded(model, tokenizer, train, heldout, None, reward_funcs, eval_samples, {})


def embedded_dataset_and_heldout(train_args: TrainArgs, regime: Regime):
    """(train dataset, {"test": rows, "hard": rows}) of the embedded job: the task's own prompts and splits."""
    n_train = train_args.train_size or regime.n_rl_prompts
    rows = arithmetic.problems("train", n_train, seed=regime.seed, task=regime.task)
    train = arithmetic.as_dataset([{"prompt": r["prompt"], "answer": r["answer"]} for r in rows])
    n_eval = regime.eval_problems if train_args.eval_size is None else train_args.eval_size
    heldout = {}
    if n_eval:
        heldout = {
            "test": arithmetic.problems("test", n_eval, seed=regime.seed, task=regime.task),
            "hard": arithmetic.problems(
                "hard", min(n_eval, regime.hard_eval_problems), seed=regime.seed, task=regime.task
            ),
        }
    return train, {k: [{"problem": r["prompt"], "answer": r["answer"]} for r in v] for k, v in heldout.items()}


def dataset_and_heldout(train_args: TrainArgs, config, conversational: bool):
    """(train dataset, {"test": held-out rows}) of a dataset other than the embedded one. Held out: the test split
    of word-problems (the SmolLM2 regime's problems, the same for every training seed), gsm-symbolic and hub
    datasets; for a .jsonl file, a disjoint part of it (--eval_size problems, else --eval_fraction) or the
    --eval_dataset file."""
    own_file = train_args.dataset not in DATASET_CHOICES and train_args.eval_dataset is None
    own_split = dataset_regime(train_args.dataset) if train_args.eval_dataset is None else None
    n_eval = train_args.eval_size
    if n_eval is None and not own_file and train_args.eval_dataset is None:
        n_eval = own_split.eval_problems if own_split else DEFAULT_EVAL_SIZE
    holdout = None
    if own_file and n_eval != 0:
        holdout = n_eval if n_eval is not None else train_args.eval_fraction
    kw = dict(
        seed=config.seed,
        problem_field=train_args.problem_field,
        answer_field=train_args.answer_field,
        prompt_template=train_args.prompt_template,
        holdout=holdout,
    )
    train = load_train_dataset(
        train_args.dataset, split="train", size=train_args.train_size, conversational=conversational, **kw
    )
    if n_eval == 0:
        return train, {}
    if own_split:
        kw["seed"] = own_split.seed
    test = load_train_dataset(
        train_args.eval_dataset or train_args.dataset,
        split="test",
        size=None if holdout else n_eval,
        conversational=False,
        **kw,
    )
    return train, {"test": [{"problem": p, "answer": a} for p, a in zip(test["prompt"], test["answer"])]}
