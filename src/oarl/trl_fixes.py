"""What TRL lacks for OAR: the policy for the credit pass, whole on every process and free of collectives.

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
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule
from trl.distributed import DistributedBackend
from trl.models import unwrap_model_for_generation


def check_supported(accelerator) -> None:
    """Raises ValueError for a backend under which the credit pass cannot run: FSDP1, or ZeRO-3 whose parameters
    TRL does not gather (``ds3_gather_for_generation=False``; checked by the trainer, which has the setting)."""
    if DistributedBackend(accelerator).fsdp_version == 1:
        raise ValueError("OAR's credit pass supports FSDP2, not FSDP1: set fsdp_version: 2 in the accelerate config "
                         "(or fsdp_config={'fsdp_version': 2}), or credit='none'.")


@contextlib.contextmanager
def credit_policy(model_wrapped: nn.Module, accelerator, gradient_checkpointing_kwargs: dict | None = None
                  ) -> Iterator[nn.Module]:
    """The unwrapped policy with all of its parameters on this process, whose forwards and backwards (to the inputs)
    issue no collective, for the duration of the block (see the module doc). Entering and leaving are collective:
    every process must enter, also one with nothing to compute. Transformers' activation checkpointing is off inside
    (as in TRL's generation); the credit pass checkpoints by itself when asked to."""
    with unwrap_model_for_generation(model_wrapped, accelerator, gather_deepspeed3_params=True,
                                     gradient_checkpointing_kwargs=gradient_checkpointing_kwargs) as policy:
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
    import deepspeed  # an optional dependency, present whenever ZeRO-3 runs

    optimizer = getattr(engine, "optimizer", None)
    offload = getattr(optimizer, "parameter_offload", optimizer)
    handle = getattr(offload, "fwd_pre_hook", None)
    module = getattr(offload, "module", None)
    hooks = getattr(module, "_forward_pre_hooks", {})
    if handle is None or getattr(handle, "id", None) not in hooks:
        raise RuntimeError(
            f"DeepSpeed {deepspeed.__version__}: ZeRO-3's start-of-forward hook (DeepSpeedZeRoOffload.fwd_pre_hook, "
            "DeepSpeed 0.19) was not found on the model, so OAR's credit pass cannot be kept free of collectives. "
            "Use deepspeed 0.19.x (the version oarl is tested with), or credit='none'.")
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
            groups = [(g, g.post_forward_mesh_info, g.reshard_after_backward, g.reduce_grads, g.all_reduce_grads)
                      for g in state._fsdp_param_groups]
            was_unsharded = all(g.is_unsharded for g in state._fsdp_param_groups)
            saved.append((module, state, state._auto_reshard_after_forward, groups, was_unsharded))
    except AttributeError as e:
        raise RuntimeError(f"torch {torch.__version__}: FSDP2's internal state has changed ({e}); OAR's credit pass "
                           "is tested with torch 2.13. Use that version, or credit='none'.") from None
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
