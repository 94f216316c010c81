"""OARTrainer: TRL's GRPOTrainer with Outcome-grounded Advantage Reshaping.

A TRL user switches by changing two imports and one setting::

    from oarl import OARConfig, OARTrainer          # instead of GRPOConfig, GRPOTrainer
    args = OARConfig(..., credit="gradient")

The only override of substance is ``_generate_and_score_completions``: after TRL has generated, scored and
normalised a generation batch into (B,) advantages, they are replaced by (B, T) per-token advantages from
``oarl.credit.token_advantages``. TRL's ``_compute_loss`` accepts (B, T) advantages as they are, so every loss
type and aggregation it offers keeps working. The credit is computed once per generation batch and reused
across ``num_iterations`` and ``steps_per_generation``, like the rest of the batch.

The TRL workarounds OARTrainer carries (exact resume, vLLM's CPU build in colocate mode, the distributed credit
pass) are ``oarl.trl_fixes``: OARTrainer is ``TRLFixes`` + GRPOTrainer + this override.
"""

from __future__ import annotations

import inspect
import logging
import time
import warnings
from collections import defaultdict
from dataclasses import MISSING, dataclass, fields
from typing import NamedTuple

import torch
from trl import GRPOConfig, GRPOTrainer
from trl.data_utils import is_conversational
from trl.trainer.utils import get_config_model_id

from .checks import check_grpo
from .credit import CreditConfig, CreditOutput, token_advantages
from .credit.config import SettingError, trainer_field, trainer_name
from .credit.core import STAT_KEYS as CREDIT_STATS
from .devices import ACTIVATION_CHECKPOINTING, mixed_precision
from .generation import VLLMBackend
from .trl_fixes import TRLFixes, check_supported, credit_policy

logger = logging.getLogger(__name__)

# TRL 1.16 calls transformers 5's deprecated `is_gradient_checkpointing`, `gradient_checkpointing_enable` and
# `..._disable` around every generation (trl/models/utils.py): TRL's to fix, not the user's; they filled run logs.
warnings.filterwarnings(
    "ignore", message=r"`(is_)?gradient_checkpointing(_enable|_disable)?` is deprecated", category=FutureWarning
)


@dataclass
class OARConfig(GRPOConfig):
    r"""GRPOConfig plus the settings of Outcome-grounded Advantage Reshaping (all prefixed ``credit``)."""

    # Each credit setting's default, help and choices are its CreditConfig field's (oarl.credit.config.setting).
    credit: str = trainer_field("estimator")
    credit_threshold: float = trainer_field("threshold")
    credit_beta: float = trainer_field("beta")
    credit_floor: float = trainer_field("floor")
    credit_outcome: str | None = trainer_field("outcome")
    credit_noise_std: float = trainer_field("noise_std")
    credit_noise_samples: int = trainer_field("noise_samples")
    credit_chunk_size: int = trainer_field("chunk_size")
    credit_batch_size: int | None = trainer_field("batch_size")
    credit_span: str | None = trainer_field("span")
    credit_rollouts: int = trainer_field("rollouts")
    credit_max_steps: int = trainer_field("max_steps")
    credit_grail_scale: float = trainer_field("grail_scale")
    credit_grail_min: float = trainer_field("grail_min")
    credit_grail_max: float = trainer_field("grail_max")
    credit_refine: bool = trainer_field("refine")
    credit_reuse_prefix: bool | None = trainer_field("reuse_prefix")  # None: "auto" (HfArgumentParser: no bool | str)
    credit_replace_with: int | None = trainer_field("replace_with")
    credit_apply_to: str | None = trainer_field("apply_to")

    def __post_init__(self):
        check_grpo(self)  # first: GRPOConfig's own checks divide by some of these numbers
        if self.bf16 is None and not self.fp16 and not self.use_cpu:
            # GRPOConfig's bf16 default, where the device runs it (oarl.devices); float32 on an older GPU or without one
            self.bf16 = mixed_precision()["bf16"]
        super().__post_init__()
        self.credit_config()  # validates every credit setting, naming it and its range

    def credit_config(self) -> CreditConfig:
        """The credit core's settings of this run, each read from its OARConfig field (a None where that field's
        default is None: CreditConfig's default, or the value of the field named by ``trainer_none``). Raises
        ValueError (SettingError) naming the setting as it is spelt here: ``credit_threshold must be ...``."""
        values = {}
        for f in fields(CreditConfig):
            name = f.metadata["trainer"]
            if name == "activation_checkpointing":  # OAR-G follows the training step's (named as transformers does)
                values[f.name] = bool(getattr(self, ACTIVATION_CHECKPOINTING))
                continue
            value = getattr(self, name)
            if value is None and f.metadata.get("trainer_default", f.default) is None:
                value = getattr(self, f.metadata["trainer_none"]) if f.metadata["trainer_none"] else f.default
            values[f.name] = value
        try:
            return CreditConfig(**values)
        except SettingError as e:
            raise SettingError(trainer_name(e.setting), e.problem) from None


class CreditBatch(NamedTuple):
    """The last credit pass of a trainer (for inspection, heat maps and tests), on this process's slice."""

    credit: CreditOutput
    advantages: torch.Tensor  # (B,) GRPO advantages before reshaping
    completion_ids: torch.Tensor  # (B, T)
    completion_mask: torch.Tensor  # (B, T)


def as_oar_config(args: GRPOConfig | None, model) -> OARConfig:
    """The OARConfig of an OARTrainer given ``args`` and ``model`` as GRPOTrainer takes them.

    None: a default OARConfig whose output_dir is ``<model name>-OAR``, as GRPOTrainer names its default
    ``<model name>-GRPO`` (the last part of the model's hub name or path). A GRPOConfig: the same settings as an
    OARConfig with the default credit settings, and a one-line note saying so. The conversion is lossless (OARConfig
    only adds the credit fields) and keeps the resolved values of the GRPOConfig as they are (running
    ``__post_init__`` again would not: it refuses generation_batch_size and steps_per_generation together).
    Raises TypeError for anything else.
    """
    if isinstance(args, OARConfig):
        return args
    if args is None:
        name = model if isinstance(model, str) else get_config_model_id(model.config)
        return OARConfig(output_dir=f"{name.split('/')[-1]}-OAR")
    if not isinstance(args, GRPOConfig):
        raise TypeError(f"OARTrainer needs an OARConfig (or a GRPOConfig), got {type(args).__name__}")
    converted = OARConfig.__new__(OARConfig)
    converted.__dict__.update(vars(args))
    for f in fields(OARConfig):
        if f.name not in converted.__dict__:
            setattr(converted, f.name, f.default if f.default is not MISSING else f.default_factory())
    check_grpo(converted)  # as OARConfig.__post_init__ does: every number means something
    converted.credit_config()  # validates, as OARConfig.__post_init__ does
    logger.warning(
        "OARTrainer got a GRPOConfig: using it as an OARConfig with the default credit settings "
        "(credit=%r); pass an OARConfig to choose them (credit='none' is plain GRPO).",
        converted.credit,
    )
    return converted


class OARTrainer(TRLFixes, GRPOTrainer):
    """GRPOTrainer whose advantages are reshaped per token by OAR. Takes exactly GRPOTrainer's arguments; ``args``
    may be an OARConfig, a GRPOConfig (converted, see :func:`as_oar_config`) or None (a default OARConfig)."""

    _tag_names = ["trl", "grpo", "oar"]

    def __init__(self, *args, **kwargs):
        bound = inspect.signature(GRPOTrainer.__init__).bind(self, *args, **kwargs)
        bound.arguments["args"] = as_oar_config(bound.arguments.get("args"), bound.arguments["model"])
        super().__init__(*bound.args[1:], **bound.kwargs)
        self.credit_config = self.args.credit_config()
        self._check_compatible()
        self.last_credit: CreditBatch | None = None
        self._credit_time_total = self._step_time_total = 0.0  # seconds, over the logged steps
        self._init_trl_fixes()

    def generation_backend(self, add_special_tokens: bool = True):
        """An ``oarl.generation.VLLMBackend`` on the vLLM engine colocated with training, holding the current policy's
        weights (synced here if a step changed them), or None without one (no vLLM, server mode, several processes):
        held-out evaluation through it needs no second engine and no HF ``generate``."""
        if not (self.use_vllm and self.vllm_mode == "colocate" and self.accelerator.num_processes == 1):
            return None
        if self._last_loaded_step != self.state.global_step:
            self.vllm_generation.sync_weights()
            self._last_loaded_step = self.state.global_step
        return VLLMBackend(self.vllm_generation.llm, self._tokenizer, add_special_tokens)

    # -------------------------------------------------------------------------------- credit

    def _check_compatible(self) -> None:
        args, estimator = self.args, self.credit_config.estimator
        if estimator == "none":
            return
        # A fused Liger GRPO loss (TRL versions that offer one) computes the loss from (B,) advantages in its kernel.
        if getattr(args, "use_liger_loss", False):
            raise ValueError(
                "OAR needs per-token advantages, which the Liger GRPO loss does not take: set "
                "use_liger_loss=False, or credit='none'."
            )
        if estimator == "rollout" and (
            self.tools or self.rollout_func is not None or getattr(self, "environment_factories", None) is not None
        ):
            raise ValueError(
                "Rollout credit samples plain continuations of each reasoning prefix and scores them with "
                "the reward functions; with tools, environments or a rollout_func the continuations "
                "would need the same tool / environment loop, which it does not run. Use another credit "
                "estimator (every other one takes TRL's tool_mask / env_mask)."
            )
        check_supported(self.accelerator)
        if self._dist.is_zero3 and not args.ds3_gather_for_generation:
            raise ValueError(
                "With DeepSpeed ZeRO-3, OAR runs the full policy on each process the way TRL's "
                "generation does: set ds3_gather_for_generation=True, or credit='none'."
            )

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        # Evaluation (no update follows) and plain GRPO keep TRL's (B,) advantages untouched.
        if not self.model.training or self.credit_config.estimator == "none":
            return output

        started = time.perf_counter()
        completion_ids, completion_mask = output["completion_ids"], output["completion_mask"]
        advantages = output["advantages"]  # (B,) this process's slice
        # A completion is truncated when its last kept token is not an end-of-sequence token.
        lengths = completion_mask.sum(dim=1)  # (B,)
        last_token = completion_ids.gather(1, (lengths - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
        eos_ids = torch.tensor(self.eos_token_ids, device=completion_ids.device)
        truncated = ~torch.isin(last_token, eos_ids) & (lengths > 0)
        # OAR-G's noise comes from its own generator (seeded by seed, step and process), so that the credit pass
        # leaves the sampling stream of generation as it was, and a resumed run draws the same noise.
        generator = torch.Generator(device=completion_ids.device)
        generator.manual_seed(hash((self.args.seed, self.state.global_step, self.accelerator.process_index)) % 2**63)
        credit_args = (
            self._tokenizer,
            output["prompt_ids"],
            output["prompt_mask"],
            completion_ids,
            completion_mask,
            advantages,
            self.credit_config,
        )
        # Tokens a tool or an environment inserted (TRL's tool_mask, or a rollout_func's env_mask) are not the model's:
        # no credit, and the answer is read from the model's own text (oarl.credit.segments).
        model_mask = output.get("tool_mask")

        # The pass runs a different number of forwards on each process, so it must not communicate: credit_policy
        # (trl_fixes.py) gathers the parameters under ZeRO-3 / FSDP2 once, a collective step that every process takes
        # (the same branch everywhere), and leaves no collective in the forwards. When no completion anywhere has a
        # non-zero advantage there is nothing to send through the model. Transformers' checkpointing is off inside
        # (it would need train mode, i.e. dropout on): OAR-G checkpoints the blocks itself when
        # credit_config.activation_checkpointing says so.
        any_signal = self.accelerator.gather((advantages != 0).any().float().reshape(1)).sum().item() > 0
        if self.credit_config.estimator == "rollout":  # no model pass: TRL's generation and reward functions
            sampler, scorer = self._rollout_callables(inputs, output["prompt_ids"][0][output["prompt_mask"][0].bool()])
            credit = token_advantages(
                None,
                *credit_args,
                truncated=truncated,
                sampler=sampler,
                scorer=scorer,
                max_completion_length=self.max_completion_length,
            )
        elif any_signal:
            with (
                credit_policy(self.model_wrapped, self.accelerator, self.args.gradient_checkpointing_kwargs) as policy,
                self.accelerator.autocast(),  # the training step's mixed precision (bf16 / fp16), if any
            ):
                credit = token_advantages(
                    policy, *credit_args, truncated=truncated, generator=generator, model_mask=model_mask
                )
        else:
            credit = token_advantages(None, *credit_args, truncated=truncated, model_mask=model_mask)  # all skipped
        credit.stats["time_s"] = time.perf_counter() - started  # the parameter gathering included
        self.last_credit = CreditBatch(credit, advantages, completion_ids, completion_mask)
        output["advantages"] = credit.advantages  # (B, T)

        # Each process reshapes its own slice: average the statistics over processes (time: the slowest one).
        local = torch.tensor(
            [credit.stats[k] for k in CREDIT_STATS], dtype=torch.float64, device=self.accelerator.device
        )
        gathered = self.accelerator.gather(local.unsqueeze(0)).view(-1, len(CREDIT_STATS))
        for i, key in enumerate(CREDIT_STATS):
            value = gathered[:, i].max() if key == "time_s" else gathered[:, i].mean()
            self._metrics["train"][f"credit/{key}"].append(value.item())
        return output

    def _rollout_callables(self, inputs: list[dict], filler: torch.Tensor):
        """The sampler and scorer of rollout credit (oarl.credit.rollout) for this process's generation batch.

        sampler: K continuations of each prefix through TRL's own generation path (``_generate_single_turn``: HF
        ``generate`` with the run's generation config, or the trainer's vLLM engine), in chunks of at most one
        generation batch of sequences; HF sampling draws from its own seeded stream, so that the training batches
        are sampled as without rollout credit. scorer: the run's reward functions through TRL's
        ``_calculate_rewards``, combined with ``reward_weights`` as TRL combines them (NaN when every function
        returns None). Both are collective under vLLM server mode, ZeRO-3 and multi-process reward gathering:
        every process calls them once per credit pass with the same number of items (padded with ``filler``,
        a prompt of this process, and cut away afterwards).
        """
        device, processes = self.accelerator.device, self.accelerator.num_processes
        per_call = max(1, self.args.generation_batch_size // processes)  # sequences TRL generates at once

        def most_over_processes(count: int) -> int:
            return int(self.accelerator.gather(torch.tensor([count], device=device)).max())

        def sampler(prefixes: list[list[int]], num_samples: int) -> list[list[list[int]]]:
            count = len(prefixes)
            most = most_over_processes(count)
            padded = prefixes + [filler.tolist()] * (most - count)
            chunk = max(1, per_call // num_samples)
            out = []
            seed = hash((self.args.seed, self.state.global_step, self.accelerator.process_index, 1)) % 2**63
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(seed)
                for start in range(0, most, chunk):
                    part = padded[start : start + chunk]
                    ids = [p for p in part for _ in range(num_samples)]  # K consecutive copies: vLLM's grouping
                    completions, _ = self._generate_single_turn(ids, None, {}, num_samples)
                    out += [completions[i * num_samples : (i + 1) * num_samples] for i in range(len(part))]
            return out[:count]

        def scorer(rows: list[int], completion_ids: list[list[int]]) -> list[float]:
            count = len(rows)
            most = most_over_processes(count)
            if most == 0:
                return []
            rows, completion_ids = rows + [0] * (most - count), completion_ids + [[]] * (most - count)
            texts = self.processing_class.batch_decode(completion_ids, skip_special_tokens=True)
            prompts = [inputs[r]["prompt"] for r in rows]
            completions = (
                [[{"role": "assistant", "content": t}] for t in texts] if is_conversational(inputs[0]) else texts
            )
            # Reward functions may log columns or metrics for the completions table: not for these continuations.
            saved = self._pending_extra_logs, self._pending_metrics
            self._pending_extra_logs, self._pending_metrics = defaultdict(list), defaultdict(list)
            try:
                per_func = self._calculate_rewards([inputs[r] for r in rows], prompts, completions, completion_ids)
            finally:
                self._pending_extra_logs, self._pending_metrics = saved
            mine = per_func[self.accelerator.process_index * most :][:count]  # [count, F]
            rewards = (mine * self.reward_weights.to(mine.device)[None]).nansum(1)
            rewards[torch.isnan(mine).all(1)] = float("nan")
            return rewards.tolist()

        return sampler, scorer

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        metrics = self._metrics["train"]
        if self.model.training and self.credit_config.estimator != "none" and metrics.get("step_time"):
            # Share of the wall time of the logged steps (generation, scoring, credit, update) spent on credit.
            # Steps that reuse a buffered generation batch have no credit pass and count with 0.
            credit_time, step_time = sum(metrics.get("credit/time_s", [])), sum(metrics["step_time"])
            metrics["credit/overhead"] = [credit_time / max(step_time, 1e-12)]
            self._credit_time_total += credit_time
            self._step_time_total += step_time
        super().log(logs, start_time)

    def _resume_state(self) -> dict:  # saved in a checkpoint (TRLFixes), so that a resumed run's overhead is the run's
        return {"credit_time_total": self._credit_time_total, "step_time_total": self._step_time_total}

    def _restore_state(self, state: dict) -> None:
        self._credit_time_total, self._step_time_total = state["credit_time_total"], state["step_time_total"]

    @property
    def credit_overhead(self) -> float | None:
        """Share of the step time of all logged steps of this process's run spent on credit (None: not measured)."""
        return self._credit_time_total / self._step_time_total if self._step_time_total > 0 else None
