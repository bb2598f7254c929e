"""Wrapping the model for data-parallel training (DDP, or FSDP2's ``fully_shard``), skipping the
gradient all-reduce while accumulating, and the gradient norm over shards.

References: PyTorch DDP (Li et al., 2020, "PyTorch Distributed: Experiences on Accelerating
Data Parallel Training"); FSDP2 / per-parameter sharding (``torch.distributed.fsdp.fully_shard``,
Zhao et al., 2023, "PyTorch FSDP").
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
import torch.distributed as dist

from verirl.errors import ConfigError, UserError
from verirl.train.distributed.launch import DistContext

STRATEGIES = ("none", "ddp", "fsdp2")


def _is_peft(model: Any) -> bool:
    return hasattr(model, "peft_config")


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks FSDP2 shards one by one: modules whose class HF lists in
    ``_no_split_modules`` (e.g. ``Qwen2DecoderLayer``), also through a PEFT wrapper."""
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


def wrap_model(
    model: torch.nn.Module,
    ctx: DistContext,
    strategy: str = "ddp",
    find_unused_parameters: bool | None = None,
    mixed_precision: torch.dtype | None = None,
) -> torch.nn.Module:
    """The model ready for data-parallel training; call before building the optimizer.

    - ``none``: the model itself; an error with more than one rank (weights would diverge).
    - ``ddp``: ``DistributedDataParallel``; gradients of trainable parameters only (LoRA
      adapters for a PEFT model). ``find_unused_parameters`` defaults to True for PEFT models,
      where adapters on modules a forward skips would otherwise stall the reducer.
    - ``fsdp2``: ``fully_shard`` on every decoder layer, then on the root, sharding parameters,
      gradients and optimizer state over ranks; ``mixed_precision`` sets the dtype of
      parameters in compute (reductions stay float32).
    A single process gets the model unchanged for ddp (DDP would only add overhead) but a
    one-rank FSDP2 wrap for fsdp2, so its checkpoints look the same at any world size.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"distributed strategy must be one of {STRATEGIES}, got {strategy!r}")
    if strategy == "none":
        if ctx.world_size > 1:
            raise ConfigError(
                f"strategy 'none' with {ctx.world_size} ranks would let each rank's weights"
                " drift apart; use 'ddp' or 'fsdp2'"
            )
        return model
    if strategy == "ddp":
        if not ctx.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        if find_unused_parameters is None:
            find_unused_parameters = _is_peft(model)
        return DDP(
            model,
            device_ids=[ctx.local_rank] if ctx.device.startswith("cuda") else None,
            find_unused_parameters=find_unused_parameters,
        )
    if not ctx.distributed:
        raise UserError(
            "strategy fsdp2 needs a process group: launch with `torchrun --nproc-per-node N`"
            " (N = 1 works)"
        )
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=mixed_precision, reduce_dtype=torch.float32)
    layers = decoder_layers(model)
    if not layers:
        raise ConfigError(
            f"fsdp2: found no decoder layers in {type(model).__name__} (no `_no_split_modules`)"
        )
    # fully_shard keeps this rank's slice of its local tensors; unlike DDP it does not
    # broadcast, so a rank whose init differed (e.g. LoRA seeded differently) would silently
    # contribute a different slice. Start every rank from rank 0's weights.
    with torch.no_grad():
        for t in model.state_dict().values():
            dist.broadcast(t, src=0)
    for layer in layers:
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def unwrap(model: Any) -> Any:
    """The user's model under a DDP wrapper (``save_pretrained``, ``config``, adapters).
    FSDP2 shards in place, so its model is already the user's (with DTensor parameters)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    return model.module if isinstance(model, DDP) else model


def is_fsdp2(model: Any) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@contextmanager
def no_sync_if(accumulating: bool, *models: Any) -> Iterator[None]:
    """Skip the gradient all-reduce while `accumulating` (every micro-step but the last).

    Put the micro-step's forward AND backward inside: DDP decides at forward time whether the
    coming backward reduces. DDP uses ``no_sync()``; FSDP2 ``set_requires_gradient_sync``
    (unsharded gradients accumulate locally, the last micro-step reduce-scatters them).
    Several models (a policy and a separately wrapped value head) can be passed.
    """
    if not accumulating:
        yield
        return
    from torch.nn.parallel import DistributedDataParallel as DDP

    with ExitStack() as stack:
        for m in models:
            if isinstance(m, DDP):
                stack.enter_context(m.no_sync())
            elif is_fsdp2(m):
                m.set_requires_gradient_sync(False)
                stack.callback(m.set_requires_gradient_sync, True)
        yield


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> float:
    """Clip the global gradient norm and return it as a float; with FSDP2's sharded DTensor
    gradients the norm is reduced over ranks (so it equals the single-process norm)."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    full = getattr(norm, "full_tensor", None)
    return float(full() if full is not None else norm)
