"""OARTrainer: TRL's GRPOTrainer with Outcome-grounded Advantage Reshaping.

A TRL user switches by changing two imports and one setting::

    from oarl import OARConfig, OARTrainer          # instead of GRPOConfig, GRPOTrainer
    args = OARConfig(..., credit="gradient")

The only override of substance is ``_generate_and_score_completions``: after TRL has generated, scored and
normalised a generation batch into (B,) advantages, they are replaced by (B, T) per-token advantages from
``oarl.credit.token_advantages``. TRL's ``_compute_loss`` accepts (B, T) advantages as they are, so every loss
type and aggregation it offers keeps working. The credit is computed once per generation batch and reused
across ``num_iterations`` and ``steps_per_generation``, like the rest of the batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from trl import GRPOConfig, GRPOTrainer
from trl.models import unwrap_model_for_generation

from .credit import ESTIMATORS, CreditConfig, CreditOutput, token_advantages
from .credit.config import APPLY_TO, SPANS
from .credit.core import STAT_KEYS as CREDIT_STATS

# transformers 5.20 renamed TrainingArguments.gradient_checkpointing to activation_checkpointing (the old name is a
# deprecated alias); vLLM's CPU build needs transformers < 5.20, which knows only the old name.
ACTIVATION_CHECKPOINTING = ("activation_checkpointing" if "activation_checkpointing" in GRPOConfig.__dataclass_fields__
                            else "gradient_checkpointing")


@dataclass
class OARConfig(GRPOConfig):
    r"""GRPOConfig plus the settings of Outcome-grounded Advantage Reshaping (all prefixed ``credit``)."""

    credit: str = field(
        default="gradient",
        metadata={
            "help": "Token-importance estimator: 'none' (plain GRPO), 'perturbation' (OAR-P, one forward per "
            "reasoning token), 'gradient' (OAR-G, one forward + one backward) or 'entropy' (policy-entropy "
            "weights, a cheap baseline).",
            "choices": list(ESTIMATORS),
        },
    )
    credit_threshold: float = field(
        default=0.4,
        metadata={"help": "Bi-Level threshold quantile q in (0, 1): tokens below the q-quantile of a completion's "
                  "normalised importance are suppressed, the others boosted."},
    )
    credit_beta: float = field(
        default=2.0, metadata={"help": "Bi-Level boost beta >= 0: the most important token gets weight 1 + beta "
                               "before the mass-preserving rescale."}
    )
    credit_floor: float = field(
        default=0.1, metadata={"help": "Bi-Level floor w_min in [0, 1]: the smallest weight of a suppressed token."}
    )
    credit_outcome: str | None = field(
        default=None,
        metadata={
            "help": "Outcome distribution p_final: 'last' (next-token distribution before the first answer token), "
            "'answer_mean' (softmax of the mean answer logits) or 'answer_joint' (mean log-probability of the "
            "answer tokens). Default: 'last' for perturbation, 'answer_mean' otherwise.",
        },
    )
    credit_noise_std: float = field(
        default=1e-3, metadata={"help": "OAR-G: std of the Gaussian noise added to the reasoning embeddings (> 0)."}
    )
    credit_noise_samples: int = field(
        default=1,
        metadata={"help": "OAR-G: average the importances of this many independent noise draws (>= 1); one pass "
                  "over that many copies of the rows. One draw's importance is as noisy as it is large."},
    )
    credit_chunk_size: int = field(
        default=32, metadata={"help": "OAR-P: perturbed variants per forward pass (>= 1); bounds peak memory."}
    )
    credit_batch_size: int | None = field(
        default=None,
        metadata={"help": "Rows per credit pass (default: per_device_train_batch_size, so that a pass never holds more "
                  "rows than the training micro-batch that follows it; OAR-G with credit_noise_samples K takes "
                  "that many // K completions). Lower it to bound the memory of OAR-G / entropy passes."},
    )
    credit_span: str = field(
        default="token",
        metadata={"help": "OAR-P: perturb one 'token' at a time, or a whole reasoning step ('line' or 'sentence'; "
                  "one pass per step instead of one per token).", "choices": list(SPANS)},
    )
    credit_refine: bool = field(
        default=False,
        metadata={"help": "OAR-P with credit_span 'line' or 'sentence': hierarchical perturbation. Steps first, then "
                  "token by token inside the steps whose importance reaches the Bi-Level threshold (the other "
                  "steps keep their step's importance); about (1 - credit_threshold) of token-level's cost."},
    )
    credit_reuse_prefix: bool = field(
        default=False,
        metadata={"help": "OAR-P: reuse the unperturbed forward's key/value cache before each variant's first "
                  "replaced token (same importances; each variant recomputes only the tokens after it)."},
    )
    credit_replace_with: int | None = field(
        default=None, metadata={"help": "OAR-P: token id that replaces a reasoning token (default: the pad id)."}
    )
    credit_apply_to: str = field(
        default="all",
        metadata={"help": "Reshape completions with 'all' advantages, only 'positive' or only 'negative' ones; "
                  "the others keep GRPO's uniform advantage.", "choices": list(APPLY_TO)},
    )

    def __post_init__(self):
        super().__post_init__()
        self.credit_config()  # validates every credit setting, naming it and its range

    def credit_config(self) -> CreditConfig:
        try:
            return self._credit_config()
        except ValueError as e:  # name the setting as the user spells it here: "threshold ..." -> "credit_threshold ..."
            name = str(e).split(" ", 1)[0]
            raise ValueError(f"{'credit' if name == 'estimator' else 'credit_' + name}{str(e)[len(name):]}") from None

    def _credit_config(self) -> CreditConfig:
        return CreditConfig(
            estimator=self.credit,
            outcome=self.credit_outcome,
            threshold=self.credit_threshold,
            beta=self.credit_beta,
            floor=self.credit_floor,
            noise_std=self.credit_noise_std,
            noise_samples=self.credit_noise_samples,
            chunk_size=self.credit_chunk_size,
            apply_to=self.credit_apply_to,
            replace_with=self.credit_replace_with,
            reuse_prefix=self.credit_reuse_prefix,
            span=self.credit_span,
            refine=self.credit_refine,
            batch_size=self.credit_batch_size or self.per_device_train_batch_size,
            # OAR-G's backward follows the training step's gradient (activation) checkpointing
            activation_checkpointing=bool(getattr(self, ACTIVATION_CHECKPOINTING)),
        )


class CreditBatch(NamedTuple):
    """The last credit pass of a trainer (for inspection, heat maps and tests), on this process's slice."""

    credit: CreditOutput
    advantages: torch.Tensor  # (B,) GRPO advantages before reshaping
    completion_ids: torch.Tensor  # (B, T)
    completion_mask: torch.Tensor  # (B, T)


class OARTrainer(GRPOTrainer):
    """GRPOTrainer whose advantages are reshaped per token by OAR. Takes exactly GRPOTrainer's arguments."""

    _tag_names = ["trl", "grpo", "oar"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, OARConfig):
            raise TypeError(f"OARTrainer needs an OARConfig, got {type(self.args).__name__}")
        self.credit_config = self.args.credit_config()
        self._check_compatible()
        self.last_credit: CreditBatch | None = None
        self._credit_time_total = self._step_time_total = 0.0  # seconds, over the logged steps

    def _check_compatible(self) -> None:
        args, estimator = self.args, self.credit_config.estimator
        if estimator == "none":
            return
        # A fused Liger GRPO loss (TRL versions that offer one) computes the loss from (B,) advantages in its kernel.
        if getattr(args, "use_liger_loss", False):
            raise ValueError("OAR needs per-token advantages, which the Liger GRPO loss does not take: set "
                             "use_liger_loss=False, or credit='none'.")
        plugin = getattr(args, "deepspeed_plugin", None)
        if plugin is not None and plugin.zero_stage == 3 and not args.ds3_gather_for_generation:
            raise ValueError("With DeepSpeed ZeRO-3, OAR runs the full policy on each process the way TRL's "
                             "generation does: set ds3_gather_for_generation=True, or credit='none'.")

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
        credit_args = (self._tokenizer, output["prompt_ids"], output["prompt_mask"], completion_ids, completion_mask,
                       advantages, self.credit_config)

        # Unwrapping gathers the parameters under ZeRO-3 / FSDP, a collective step: every process takes the same
        # branch. When no completion anywhere has a non-zero advantage there is nothing to send through the model.
        # Unwrapping also turns transformers' checkpointing off (it would need train mode, i.e. dropout on): OAR-G
        # checkpoints the blocks itself when credit_config.activation_checkpointing says so.
        any_signal = self.accelerator.gather((advantages != 0).any().float().reshape(1)).sum().item() > 0
        if any_signal:
            with (
                unwrap_model_for_generation(
                    self.model_wrapped,
                    self.accelerator,
                    gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                    gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
                ) as policy,
                self._dist.summon_full_params(self.model_wrapped, recurse=False),
                self.accelerator.autocast(),  # the training step's mixed precision (bf16 / fp16), if any
            ):
                credit = token_advantages(policy, *credit_args, truncated=truncated, generator=generator)
        else:
            credit = token_advantages(None, *credit_args, truncated=truncated)  # every row is skipped
        credit.stats["time_s"] = time.perf_counter() - started  # the parameter gathering included
        self.last_credit = CreditBatch(credit, advantages, completion_ids, completion_mask)
        output["advantages"] = credit.advantages  # (B, T)

        # Each process reshapes its own slice: average the statistics over processes (time: the slowest one).
        local = torch.tensor([credit.stats[k] for k in CREDIT_STATS], dtype=torch.float64,
                             device=self.accelerator.device)
        gathered = self.accelerator.gather(local.unsqueeze(0)).view(-1, len(CREDIT_STATS))
        for i, key in enumerate(CREDIT_STATS):
            value = gathered[:, i].max() if key == "time_s" else gathered[:, i].mean()
            self._metrics["train"][f"credit/{key}"].append(value.item())
        return output

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

    @property
    def credit_overhead(self) -> float | None:
        """Share of the step time of all logged steps of this process's run spent on credit (None: not measured)."""
        return self._credit_time_total / self._step_time_total if self._step_time_total > 0 else None
