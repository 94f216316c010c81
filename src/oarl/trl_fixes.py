"""What TRL lacks for OAR, apart from the OAR override itself (``oarl.trainer``).

1. ``TRLFixes``, a mixin of ``OARTrainer``: a resumed run reproduces the uninterrupted one, and generation with
   vLLM's CPU build in colocate mode gets the policy's weights (below, "Resume" and "vLLM on a CPU").
2. ``credit_policy``: the policy for the credit pass, whole on every process and free of collectives (next).

The credit pass under several processes

The credit pass runs a data-dependent number of forwards (and, for OAR-G and GRAIL, backwards to the input
embeddings) on each process: one per micro-batch of completions with a non-zero advantage, OAR-P one per chunk of
perturbed variants, none on a process whose completions all have a zero advantage (the common case: groups that
are all right or all wrong). Any collective inside a forward then pairs with a different call on another process:
a deadlock, or a gloo/NCCL error about mismatched sizes. TRL's generation is safe from this because ``generate``
keeps the processes in step (``synced_gpus``: each one runs forwards until all are done); the credit pass has no
such lockstep.

:func:`credit_policy` gives the pass the policy as one module that runs without any collective:

- DDP, DeepSpeed ZeRO-1/2: the unwrapped module (as TRL's ``unwrap_model_for_generation`` gives it) holds every
  parameter and its forwards communicate nothing; nothing to do.
- DeepSpeed ZeRO-3: TRL gathers the parameters (``deepspeed.zero.GatheredParameters``) and takes DeepSpeed's
  per-module fetch/release hooks off, but leaves the root module's start-of-forward hook
  (``DeepSpeedZeRoOffload.fwd_pre_hook``): it calls ``PartitionedParameterCoordinator.reset_step``, which, while the
  parameter trace is not complete (TRL invalidates it each time it puts the hooks back), checks the trace against
  rank 0's with broadcasts. Here that hook is a no-op for the duration of the pass, then put back in its
  place (same handle, same order).
- FSDP2 (``fully_shard``): every FSDP module all-gathers its parameters in its pre-forward and frees them after
  its forward (``reshard_after_forward``) and backward; TRL's ``summon_full_params`` is FSDP1's and does nothing
  for FSDP2. Here every FSDP module is unsharded once, in module order (the same all-gathers on every process,
  before any data-dependent work), and kept unsharded through the pass: no resharding after forward or backward,
  and no gradient reduction (the pass computes gradients for the input embeddings only; this also keeps a
  backward from reduce-scattering gradients that a gradient-accumulation step left unreduced). Afterwards each
  module's settings are restored and the modules that were sharded before are sharded again.
- FSDP1: refused (``check_supported``); use ``fsdp_version: 2``.

Cost: the whole model in the training precision on every process for the duration of the pass (FSDP2: a full
copy of the parameters besides the shards; ZeRO-3: what TRL's gathered generation, ``ds3_gather_for_generation``,
already allocates just before), one all-gather of the model per pass instead of one per forward. Measured in
``benchmarks/bench_distributed.py`` (docs/performance.md). The other road, making every process run the same
number of forwards and backwards (padding the short ones with dummy passes), keeps the memory sharded but costs the
slowest process's passes everywhere plus an all-gather of every block per forward and per backward.

Private names used (checked at use, with an error naming the installed version): DeepSpeed's
``DeepSpeedZeRoOffload.fwd_pre_hook`` (0.19); torch's FSDP2 ``FSDPState._auto_reshard_after_forward`` and
``FSDPParamGroup.post_forward_mesh_info / reshard_after_backward / reduce_grads / all_reduce_grads / is_unsharded``
(2.13), needed to restore what the public setters (``set_reshard_after_forward`` ...) change.

Resume. Resuming from a checkpoint reproduces the uninterrupted run (same parameters and metrics). Three pieces of
GRPOTrainer's state are not in a Hugging Face checkpoint, and each made a resumed run diverge; they are saved
in ``checkpoint-*/oarl_state[_<process>].pt`` and restored:

- the micro-step counter that decides when to generate: a resumed run counted from 0, so it generated at the
  resumed step and then used stale slices of the wrong generation batch for the rest of the run;
- the buffered generation batch, when the checkpoint falls inside a ``steps_per_generation`` cycle: the
  remaining steps of the cycle train on the completions generated at its start, not on new ones;
- the order of the prompts: TRL's sampler draws one permutation per epoch from a generator that runs on, so a
  run resumed in epoch e > 0 replayed the first epoch's order; here epoch e is drawn from (seed, e).

The summary row's ``train_loss`` is the mean loss of every step of the run, resumed or not: the Trainer sums the
logged losses of one ``train()`` call and divides by its steps, so a resumed run reported the mean of the steps
after the resume only. The sum of the losses up to the checkpoint is saved there too, restored as the start of
the Trainer's sum, and ``train_loss`` divides the run's sum by the run's steps (the same floats in the same order).
The speed figures of that row (``train_runtime``, ``train_samples_per_second``, ...) are of the last session.

Tied weights (lm_head = input embeddings) are saved once and restored as one tensor; the Trainer's warning that
``lm_head.weight`` is missing from the checkpoint is answered by re-tying, not printed.

Random states (Python, NumPy, torch: generation, sampling) are the Trainer's ``rng_state.pth``; OAR-G's noise
comes from its own generator, seeded by (seed, step, process).

vLLM on a CPU. Generation with vLLM (``use_vllm=True``) is TRL's, in both of its modes, with one addition for vLLM's CPU build in
colocate mode: there TRL's weight sync fails (see :meth:`TRLFixes._reload_vllm_weights`), so the policy's weights
go to the engine through vLLM's in-place reload instead. TRL's server mode needs CUDA for its weight sync (NCCL).
"""

from __future__ import annotations

import contextlib
import os
from collections import defaultdict
from collections.abc import Iterator

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule
from transformers import TrainerCallback
from trl.distributed import DistributedBackend
from trl.models import unwrap_model_for_generation
from trl.trainer.utils import RepeatSampler

from oarl.devices import vllm_on_cpu


def check_supported(accelerator) -> None:
    """Raises ValueError for a backend under which the credit pass cannot run: FSDP1, or ZeRO-3 whose parameters
    TRL does not gather (``ds3_gather_for_generation=False``; checked by the trainer, which has the setting)."""
    if DistributedBackend(accelerator).fsdp_version == 1:
        raise ValueError(
            "OAR's credit pass supports FSDP2, not FSDP1: set fsdp_version: 2 in the accelerate config "
            "(or fsdp_config={'fsdp_version': 2}), or credit='none'."
        )


@contextlib.contextmanager
def credit_policy(
    model_wrapped: nn.Module, accelerator, gradient_checkpointing_kwargs: dict | None = None
) -> Iterator[nn.Module]:
    """The unwrapped policy with all of its parameters on this process, whose forwards and backwards (to the inputs)
    issue no collective, for the duration of the block (see the module doc). Entering and leaving are collective:
    every process must enter, also one with nothing to compute. Transformers' activation checkpointing is off inside
    (as in TRL's generation); the credit pass checkpoints by itself when asked to."""
    with unwrap_model_for_generation(
        model_wrapped,
        accelerator,
        gather_deepspeed3_params=True,
        gradient_checkpointing_kwargs=gradient_checkpointing_kwargs,
    ) as policy:
        if DistributedBackend(accelerator).is_zero3:
            fix = zero3_start_of_forward_hook_off(model_wrapped)
        elif any(isinstance(m, FSDPModule) for m in policy.modules()):
            fix = fsdp2_unsharded(policy)
        else:
            fix = contextlib.nullcontext()
        with fix:
            yield policy


def _no_op(*args, **kwargs) -> None:
    return None


@contextlib.contextmanager
def zero3_start_of_forward_hook_off(engine) -> Iterator[None]:
    """DeepSpeed ZeRO-3's start-of-forward hook on the root module is a no-op inside the block (its broadcast of the
    parameter trace is collective). Only valid while the parameters are gathered and the per-module hooks off (TRL's
    ``unwrap_model_for_generation``): it is what fetches nothing then."""
    import deepspeed  # lazy: an optional dependency, present whenever ZeRO-3 runs

    optimizer = getattr(engine, "optimizer", None)
    offload = getattr(optimizer, "parameter_offload", optimizer)
    handle = getattr(offload, "fwd_pre_hook", None)
    module = getattr(offload, "module", None)
    hooks = getattr(module, "_forward_pre_hooks", {})
    if handle is None or getattr(handle, "id", None) not in hooks:
        raise RuntimeError(
            f"DeepSpeed {deepspeed.__version__}: ZeRO-3's start-of-forward hook (DeepSpeedZeRoOffload.fwd_pre_hook, "
            "DeepSpeed 0.19) was not found on the model, so OAR's credit pass cannot be kept free of collectives. "
            "Use deepspeed 0.19.x (the version oarl is tested with), or credit='none'."
        )
    hook = hooks[handle.id]
    hooks[handle.id] = _no_op  # same key: the hook keeps its place, first among the root's pre-forward hooks
    try:
        yield
    finally:
        hooks[handle.id] = hook


@contextlib.contextmanager
def fsdp2_unsharded(model: nn.Module) -> Iterator[None]:
    """Every FSDP2 module in ``model`` unsharded (all-gathered once, in module order) and kept so inside the block:
    no resharding after forward or backward, no gradient reduction. Restored on exit; modules sharded before are
    resharded (frees the full parameters)."""
    modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    saved = []
    try:
        for module in modules:
            state = module._get_fsdp_state()
            groups = [
                (g, g.post_forward_mesh_info, g.reshard_after_backward, g.reduce_grads, g.all_reduce_grads)
                for g in state._fsdp_param_groups
            ]
            was_unsharded = all(g.is_unsharded for g in state._fsdp_param_groups)
            saved.append((module, state, state._auto_reshard_after_forward, groups, was_unsharded))
    except AttributeError as e:
        raise RuntimeError(
            f"torch {torch.__version__}: FSDP2's internal state has changed ({e}); OAR's credit pass "
            "is tested with torch 2.13. Use that version, or credit='none'."
        ) from None
    for module in modules:
        module.set_reshard_after_forward(False, recurse=False)
        module.set_reshard_after_backward(False, recurse=False)
        module.set_requires_gradient_sync(False, recurse=False)
    try:
        for module in modules:
            module.unshard()
        yield
    finally:
        for module, state, auto_reshard, groups, was_unsharded in saved:
            state._auto_reshard_after_forward = auto_reshard
            for group, mesh_info, after_backward, reduce_grads, all_reduce_grads in groups:
                group.post_forward_mesh_info, group.reshard_after_backward = mesh_info, after_backward
                group.reduce_grads, group.all_reduce_grads = reduce_grads, all_reduce_grads
            if not was_unsharded:
                module.reshard()


# ------------------------------------------------------------------------------------------------ resume and vLLM


class EpochSeededRepeatSampler(RepeatSampler):
    """TRL's RepeatSampler whose permutation of epoch e depends on (seed, e) only (epoch 0: TRL's), so that a run
    resumed in a later epoch sees the prompts in the order the uninterrupted run saw them. The Trainer calls
    ``set_epoch`` before each epoch."""

    epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if self.shuffle and self.seed is not None:
            self.generator.manual_seed(self.seed if self.epoch == 0 else hash((self.seed, self.epoch)) % 2**63)
        return super().__iter__()


class _RestoreLossTotal(TrainerCallback):
    """At the start of ``train()``, after the Trainer has set its loss sum to 0: the sum up to the checkpoint."""

    def __init__(self, trainer: TRLFixes):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer._total_loss_scalar = self.trainer._resumed_loss_total or 0.0


class TRLFixes:
    """Mixin for a ``GRPOTrainer`` subclass (``class OARTrainer(TRLFixes, GRPOTrainer)``): exact resume and vLLM's CPU
    build in colocate mode (module doc). ``_resume_state`` / ``_restore_state``: a subclass's own state saved in the
    checkpoint beside TRL's (OARTrainer: its credit timings)."""

    def _init_trl_fixes(self) -> None:
        """Call at the end of ``__init__``."""
        self._resumed_loss_total: float | None = 0.0  # the sum of the losses up to the checkpoint resumed from
        self.add_callback(_RestoreLossTotal(self))
        if self.use_vllm and self.vllm_mode == "colocate" and vllm_on_cpu():
            self.vllm_generation.sync_weights = self._reload_vllm_weights

    def _resume_state(self) -> dict:
        return {}

    def _restore_state(self, state: dict) -> None:
        pass

    def _reload_vllm_weights(self) -> None:
        """Send the policy's weights to the colocated engine on vLLM's CPU backend.

        That backend packs each matmul's weight into its kernel's layout (a oneDNN copy) when it loads a model and
        drops the original parameter of linear layers, so TRL's sync (``load_weights`` of one tensor at a time into
        the layers' original parameters) fails there ("'Parameter' object has no attribute 'weight_loader'"). vLLM's
        in-place reload (``reload_weights``: restore each layer's parameters, load its tensors, repack it) is made for
        this, with one gap (vLLM 0.32): a layer whose weight is another layer's (the output projection of a model
        with tied embeddings, ``lm_head.weight is embed_tokens.weight``) loads nothing, so it is not repacked, and its
        packed copy keeps the weights it was first packed from. The logits then come from the old embedding matrix
        and the rest of the model from the new weights: log-probabilities that match neither. Such layers are
        repacked here from their (reloaded) shared weight.
        """
        generation = self.vllm_generation
        runner = generation.llm.llm_engine.model_executor.driver_worker.model_runner
        # Copies: the reload must never write into (or alias) the policy's own tensors.
        weights = ((name, tensor.detach().clone()) for name, tensor in generation._iter_named_params())
        runner.reload_weights(weights_iterator=weights, is_checkpoint_format=True)
        sharing = defaultdict(list)  # id of a weight -> the layers that hold it
        for module in runner.model.modules():
            if isinstance(module._parameters.get("weight"), torch.Tensor):
                sharing[id(module.weight)].append(module)
        for module in (m for layers in sharing.values() if len(layers) > 1 for m in layers):
            if hasattr(module, "cpu_linear"):  # a CPU matmul packed from module.weight
                module.quant_method.process_weights_after_loading(module)
        generation.llm.reset_prefix_cache()

    def _get_train_sampler(self, dataset=None):
        s = super()._get_train_sampler(dataset)
        return EpochSeededRepeatSampler(
            s.data_source, s.mini_repeat_count, s.batch_size, s.repeat_count, s.shuffle, s.seed
        )

    def _oar_state_file(self, checkpoint: str) -> str:
        suffix = f"_{self.args.process_index}" if self.args.world_size > 1 else ""
        return os.path.join(checkpoint, f"oarl_state{suffix}.pt")

    def _save_checkpoint(self, model, trial):
        # Written before the Trainer's files: trainer_state.json, written last, marks a complete checkpoint.
        checkpoint = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
        os.makedirs(checkpoint, exist_ok=True)
        generate_every = self.args.steps_per_generation * self.num_iterations
        mid_cycle = self._step % generate_every != 0  # the next steps reuse the buffered generation batch
        buffer = None
        if mid_cycle and self._buffered_inputs is not None:
            buffer = [
                {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in b.items()} for b in self._buffered_inputs
            ]
        loss_total = self._total_loss_scalar + self._tr_loss.item()  # the Trainer's sum, and what it has not added yet
        torch.save(
            {"step": self._step, "buffered_inputs": buffer, "loss_total": loss_total, **self._resume_state()},
            self._oar_state_file(checkpoint),
        )
        super()._save_checkpoint(model, trial)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        path = None if checkpoint is None else self._oar_state_file(checkpoint)
        if path is None or not os.path.isfile(path):
            return
        state = torch.load(path, weights_only=True)
        self._step = state["step"]
        self._restore_state(state)
        self._resumed_loss_total = state.get("loss_total")  # None: a checkpoint of an older version, without it
        if state["buffered_inputs"] is not None:
            device = self.accelerator.device
            self._buffered_inputs = [
                {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in b.items()}
                for b in state["buffered_inputs"]
            ]

    def _issue_warnings_after_load(self, load_result):
        # A checkpoint stores a tied weight (lm_head = input embeddings) once, under the embeddings' name, and
        # loading them restores both. The Trainer still reports the tied name as missing (it looks for
        # _keys_to_ignore_on_save, which transformers 5 models leave empty): tie again, report only real losses.
        tied = getattr(self.model, "_tied_weights_keys", None)
        tied = tied if isinstance(tied, dict) else {}  # transformers 5: {tied name: source name}
        missing = [k for k in load_result.missing_keys if k not in tied or tied[k] in load_result.missing_keys]
        if len(missing) < len(load_result.missing_keys):
            self.model.tie_weights()
        super()._issue_warnings_after_load(load_result._replace(missing_keys=missing))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "train_loss" in logs and self.state.global_step > 0 and self._resumed_loss_total is not None:
            # the whole run's mean, also after a resume (module doc); the Trainer's own without the sum up to the checkpoint
            logs = {**logs, "train_loss": self._total_loss_scalar / self.state.global_step}
        super().log(logs, start_time)
