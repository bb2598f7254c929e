"""Multi-process training on torch.distributed, launched by ``torchrun``: the public face of
``launch`` (context, process group, per-rank shares), ``collectives`` (reductions, metrics),
``wrap`` (DDP/FSDP2, gradient sync) and ``state`` (state dicts, resume).

One process per device (gloo on CPU, NCCL on GPU). Each rank generates and scores whole GRPO
groups for its share of the prompts, so group statistics (advantages) need no communication;
the model is wrapped in DDP (or FSDP2's ``fully_shard``), which *averages* gradients over
ranks. Everything degrades to a no-op single-process context when not launched by torchrun,
so the trainer runs one code path for 1 and N processes.

The one identity to get right (token-mean loss, W ranks, global batch of N completion tokens,
rank r holding tokens T_r, micro-batches m)::

    L = (1/N) Σ_r Σ_m Σ_{t ∈ T_r,m} ℓ_t          (the single-process loss)
    ∇L = (1/W) Σ_r ∇ L_r   with   L_r = (W/N) Σ_m Σ_{t ∈ T_r,m} ℓ_t

DDP/FSDP2 compute the (1/W) Σ_r mean, so each rank divides its local sum by N/W
(``loss_normalizer``) instead of by its local count: a mean of per-rank means would weight a
rank's tokens by 1/N_r and differ whenever ranks hold different numbers of tokens.
"""

from verirl.train.distributed.collectives import (
    all_reduce_max,
    all_reduce_metrics,
    all_reduce_sum,
    broadcast_object,
    gather_objects,
    global_masked_whiten,
    loss_normalizer,
)
from verirl.train.distributed.launch import (
    DistContext,
    barrier,
    init_distributed,
    rank_seed,
    shard_groups,
    shutdown,
    vllm_engine_options,
)
from verirl.train.distributed.state import (
    check_world_size,
    dist_state,
    full_state_dict,
    load_full_state,
    optimizer_state_dict,
    restore_dist_state,
    save_pretrained,
)
from verirl.train.distributed.wrap import (
    clip_grad_norm,
    no_sync_if,
    unwrap,
    wrap_model,
)

__all__ = [
    "DistContext",
    "all_reduce_max",
    "all_reduce_metrics",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "check_world_size",
    "clip_grad_norm",
    "dist_state",
    "full_state_dict",
    "gather_objects",
    "global_masked_whiten",
    "init_distributed",
    "load_full_state",
    "loss_normalizer",
    "no_sync_if",
    "optimizer_state_dict",
    "rank_seed",
    "restore_dist_state",
    "save_pretrained",
    "shard_groups",
    "shutdown",
    "unwrap",
    "vllm_engine_options",
    "wrap_model",
]
