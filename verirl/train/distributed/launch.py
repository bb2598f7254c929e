"""Launch and context: which rank this process is, joining torchrun's process group, and
which share of the work (prompts, vLLM engine, seed) is this rank's.

Everything degrades to a single-process context (rank 0 of world size 1) when not launched by
torchrun, so the trainer runs one code path for 1 and N processes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from verirl.errors import ConfigError, UserError

# Variables torchrun sets for every worker; RANK alone marks "launched by torchrun".
TORCHRUN_ENV = "RANK WORLD_SIZE LOCAL_RANK LOCAL_WORLD_SIZE MASTER_ADDR MASTER_PORT".split()


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job. A single process is rank 0 of world size 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # index on this machine (selects the GPU)
    local_world_size: int = 1  # processes on this machine (shares its Docker pool)
    device: str = "cpu"
    backend: str | None = None  # "gloo" | "nccl"; None when no process group exists

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes logs, plots, samples and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when a process group is up, so collectives must be called on every rank."""
        return self.backend is not None and dist.is_available() and dist.is_initialized()


def init_distributed(
    backend: str = "auto", timeout_s: float = 1800.0, env: Mapping[str, str] | None = None
) -> DistContext:
    """Join the process group torchrun set up, or return a single-process context.

    Reads torchrun's ``RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR,
    MASTER_PORT``. ``backend="auto"`` picks NCCL when CUDA is available (and pins this rank to
    ``cuda:LOCAL_RANK``), gloo otherwise. Calling it twice returns the same context.
    """
    env = os.environ if env is None else env
    if backend not in ("auto", "gloo", "nccl"):
        raise ConfigError(f"distributed backend must be auto, gloo or nccl, got {backend!r}")
    if "RANK" not in env:
        return DistContext(device="cuda" if torch.cuda.is_available() else "cpu")
    missing = [k for k in TORCHRUN_ENV if k not in env]
    if missing:
        raise UserError(
            f"RANK is set but {', '.join(missing)} are not: launch with "
            "`torchrun --nproc-per-node N ...` (or set all of them)"
        )
    rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
    local_rank, local_world = int(env["LOCAL_RANK"]), int(env["LOCAL_WORLD_SIZE"])
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise UserError("backend nccl needs CUDA, which is not available here; use gloo")
        if local_rank >= torch.cuda.device_count():
            raise UserError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs are visible:"
                " --nproc-per-node must not exceed the GPUs per node"
            )
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    else:
        device = "cpu"
    if not dist.is_initialized():
        dist.init_process_group(
            backend,
            rank=rank,
            world_size=world,
            timeout=timedelta(seconds=timeout_s),
            # NCCL binds the group to this rank's GPU up front (eager init, no guessing later).
            device_id=torch.device(device) if backend == "nccl" else None,
        )
    return DistContext(rank, world, local_rank, local_world, device, backend)


def shutdown(ctx: DistContext) -> None:
    """Leave the process group (a no-op for a single process)."""
    if ctx.distributed:
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (e.g. before reading a file rank 0 just wrote)."""
    if ctx.distributed:
        dist.barrier()


def rank_seed(seed: int, ctx: DistContext) -> int:
    """Sampling seed of this rank: ranks must not draw the same random completions."""
    return seed + 1_000_003 * ctx.rank


def shard_groups(num_prompts: int, ctx: DistContext, tensor_parallel_size: int = 1) -> range:
    """Indices of the prompts of this step's global batch that this rank generates for.

    Every rank derives the same global prompt list from (seed, step), keeps a contiguous block
    of ``num_prompts / world_size`` prompts and samples all G completions of each of them, so
    every GRPO group lives on one rank and its advantages equal the single-process ones.
    With vLLM tensor parallelism the t ranks of one TP group run one engine together and must
    submit the same prompts: pass t to get the group's block (t times as long) for generation;
    each rank then trains on its own ``shard_groups(num_prompts, ctx)`` within it.

    >>> shard_groups(8, DistContext(rank=1, world_size=4))
    range(2, 4)
    >>> shard_groups(8, DistContext(rank=1, world_size=4, local_world_size=4), 2)
    range(0, 4)
    """
    if num_prompts % ctx.world_size:
        raise ConfigError(
            f"the global batch has {num_prompts} prompts (algo.batch_size / algo.group_size),"
            f" which does not split evenly over {ctx.world_size} ranks: make it a multiple of"
            " the world size"
        )
    _check_tp(tensor_parallel_size, ctx)
    k = num_prompts // ctx.world_size * tensor_parallel_size
    group = ctx.rank // tensor_parallel_size
    return range(group * k, (group + 1) * k)


def _check_tp(tp: int, ctx: DistContext) -> None:
    if tp < 1 or ctx.world_size % tp or (tp > 1 and ctx.local_world_size % tp):
        raise ConfigError(
            f"rollout.vllm.tensor_parallel_size={tp} must divide the world size"
            f" ({ctx.world_size}) and the processes per node ({ctx.local_world_size}):"
            " a tensor-parallel group lives on one node"
        )


def vllm_engine_options(ctx: DistContext, tensor_parallel_size: int = 1) -> dict[str, Any]:
    """Extra ``vllm.LLM`` arguments for one colocated engine per rank under torchrun.

    vLLM's ``external_launcher`` executor joins torchrun's world instead of starting its own:
    each rank's engine runs on its own device (LOCAL_RANK), consecutive groups of
    `tensor_parallel_size` ranks shard one model, and the groups are independent data-parallel
    replicas. Ranks of one TP group need the same seed and prompts (see ``shard_groups``); the
    plain uni-process executor would put every rank's engine on GPU 0. Nothing for 1 process.

    >>> vllm_engine_options(DistContext())
    {}
    """
    _check_tp(tensor_parallel_size, ctx)
    if not ctx.distributed:
        return {}
    return {
        "distributed_executor_backend": "external_launcher",
        "tensor_parallel_size": tensor_parallel_size,
        "seed": ctx.rank // tensor_parallel_size,
    }
