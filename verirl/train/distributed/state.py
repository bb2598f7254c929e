"""State dicts of a wrapped model and its optimizer, unsharded for checkpoints and saving, and
the per-rank state (world size, RNG streams) a resumed job needs back.

Under FSDP2 every function here is collective: every rank must call it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from verirl.errors import UserError
from verirl.train.distributed.collectives import gather_objects
from verirl.train.distributed.launch import DistContext, barrier
from verirl.train.distributed.wrap import is_fsdp2, unwrap


def full_state_dict(
    model: Any, ctx: DistContext, all_ranks: bool = False
) -> dict[str, torch.Tensor] | None:
    """The unsharded state dict on rank 0 (on CPU; None elsewhere), or on every rank (on its
    device) with `all_ranks`, e.g. to feed each rank's colocated vLLM engine. Collective under
    FSDP2: every rank must call it."""
    if is_fsdp2(model):
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=not all_ranks)
        sd = get_model_state_dict(model, options=opts)
        return dict(sd) if ctx.is_main or all_ranks else None  # type: ignore[arg-type]
    return unwrap(model).state_dict() if ctx.is_main or all_ranks else None


def optimizer_state_dict(model: Any, opt: Any, ctx: DistContext) -> dict[str, Any] | None:
    """The optimizer's full state on rank 0 for the checkpoint (None elsewhere). DDP keeps
    identical copies on every rank; FSDP2's sharded state is gathered (collective)."""
    if is_fsdp2(model):
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        sd = get_optimizer_state_dict(model, opt, options=opts)
        return dict(sd) if ctx.is_main else None  # type: ignore[arg-type]
    return opt.state_dict() if ctx.is_main else None  # type: ignore[no-any-return]


def load_full_state(
    model: Any,
    opt: Any,
    model_state: Mapping[str, torch.Tensor] | None = None,
    optim_state: Mapping[str, Any] | None = None,
    strict: bool = True,
) -> None:
    """Resume a wrapped model/optimizer from full (unsharded) states every rank has read from
    the checkpoint; FSDP2 keeps each rank's shard (collective). The optimizer state must come
    from a run with the same strategy (``optimizer_state_dict``'s format follows it)."""
    if is_fsdp2(model):
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, strict=strict)
        if model_state is not None:
            set_model_state_dict(model, dict(model_state), options=opts)
        if optim_state is not None:
            set_optimizer_state_dict(model, opt, dict(optim_state), options=opts)
        return
    if model_state is not None:
        unwrap(model).load_state_dict(model_state, strict=strict)
    if optim_state is not None:
        opt.load_state_dict(optim_state)


def save_pretrained(model: Any, out_dir: str | Path, ctx: DistContext) -> None:
    """``save_pretrained`` of the (unwrapped, unsharded) model, written by rank 0 only; all
    ranks must call it (FSDP2 gathers shards) and leave after the files exist."""
    if is_fsdp2(model):
        sd = full_state_dict(model, ctx)
        if ctx.is_main:
            unwrap(model).save_pretrained(str(out_dir), state_dict=sd)
    elif ctx.is_main:
        unwrap(model).save_pretrained(str(out_dir))
    barrier(ctx)


def check_world_size(saved: int | None, current: int) -> None:
    """Resume needs the world size the checkpoint was written with: each rank's data shard
    and RNG stream depend on it. A checkpoint without the field counts as world size 1."""
    saved = 1 if saved is None else saved
    if saved != current:
        raise UserError(
            f"the checkpoint was written by {saved} rank(s) but this run has {current}:"
            f" resume with `torchrun --nproc-per-node ...` totalling {saved} processes, or"
            " start a new run from its weights (model.path = <checkpoint dir>)"
        )


def dist_state(ctx: DistContext) -> dict[str, Any] | None:
    """What a checkpoint needs to resume this job: the world size and every rank's RNG
    states (gathered on rank 0, which writes it; None on other ranks). Collective."""
    from verirl.train.checkpoint import rng_state

    states = gather_objects(rng_state(), ctx)
    return {"world_size": ctx.world_size, "rng_per_rank": states} if ctx.is_main else None


def restore_dist_state(state: Mapping[str, Any] | None, ctx: DistContext) -> None:
    """Check the world size and give this rank its own RNG states back (every rank reads the
    same checkpoint file). A checkpoint without ``dist`` state is a world-size-1 one."""
    from verirl.train.checkpoint import set_rng_state

    check_world_size(None if state is None else state.get("world_size"), ctx.world_size)
    if state is not None and state.get("rng_per_rank"):
        set_rng_state(state["rng_per_rank"][ctx.rank])
