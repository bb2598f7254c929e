"""Multi-process training on torch.distributed, launched by ``torchrun``.

One process per device (gloo on CPU, NCCL on GPU). Each rank generates and scores whole GRPO
groups for its share of the prompts, so group statistics (advantages) need no communication;
the model is wrapped in DDP (or FSDP2's ``fully_shard``), which *averages* gradients over
ranks. Everything here degrades to a no-op single-process context when not launched by
torchrun, so the trainer runs one code path for 1 and N processes.

The one identity to get right (token-mean loss, W ranks, global batch of N completion tokens,
rank r holding tokens T_r, micro-batches m)::

    L = (1/N) Σ_r Σ_m Σ_{t ∈ T_r,m} ℓ_t          (the single-process loss)
    ∇L = (1/W) Σ_r ∇ L_r   with   L_r = (W/N) Σ_m Σ_{t ∈ T_r,m} ℓ_t

DDP/FSDP2 compute the (1/W) Σ_r mean, so each rank divides its local sum by N/W
(``loss_normalizer``) instead of by its local count: a mean of per-rank means would weight a
rank's tokens by 1/N_r and differ whenever ranks hold different numbers of tokens.

References: PyTorch DDP (Li et al., 2020, "PyTorch Distributed: Experiences on Accelerating
Data Parallel Training"); FSDP2 / per-parameter sharding (``torch.distributed.fsdp.fully_shard``,
Zhao et al., 2023, "PyTorch FSDP").
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from verirl.errors import ConfigError, UserError

T = TypeVar("T")

STRATEGIES = ("none", "ddp", "fsdp2")
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


# ---------------------------------------------------------------- data sharding


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


def micro_batches(n: int, micro: int) -> Iterator[tuple[slice, bool]]:
    """(slice, is_last) over n rows: gradients are all-reduced only on the last micro-step.

    >>> [(s.start, s.stop, last) for s, last in micro_batches(5, 2)]
    [(0, 2, False), (2, 4, False), (4, 6, True)]
    """
    for s in range(0, n, micro):
        yield slice(s, s + micro), s + micro >= n


# ---------------------------------------------------------------- reductions


def all_reduce_sum(x: torch.Tensor | float, ctx: DistContext) -> torch.Tensor:
    """Σ over ranks (float64, on the rank's device; a copy of x for a single process)."""
    t = torch.as_tensor(x, dtype=torch.float64).detach().clone().to(ctx.device)
    if ctx.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(x: torch.Tensor | float, ctx: DistContext) -> torch.Tensor:
    """max over ranks (float64, on the rank's device; a copy of x for a single process)."""
    t = torch.as_tensor(x, dtype=torch.float64).detach().clone().to(ctx.device)
    if ctx.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def loss_normalizer(local_count: torch.Tensor | float, ctx: DistContext) -> float:
    """N_global / W: divide a rank's summed loss by this so DDP's mean is the global mean.

    ``local_count`` is this rank's number of loss terms (completion tokens for token-mean,
    sequences for the seq-mean modes) over all its micro-batches. The result replaces the
    local count as ``num_tokens``/``num_seqs`` of ``aggregate_loss``; a rank's loss value is
    then W × its share, and the mean of the ranks' losses is the single-process loss.
    Clamped to ≥ 1 token/W, like the single-process ``clamp(min=1)``.
    """
    total = float(all_reduce_sum(local_count, ctx))
    return max(total, 1.0) / ctx.world_size


def global_masked_whiten(
    x: torch.Tensor,
    mask: torch.Tensor,
    ctx: DistContext,
    shift_mean: bool = True,
    eps: float = 1e-8,
) -> torch.Tensor:
    """``verirl.algos.masked_whiten`` with mean and unbiased variance over every rank's masked
    entries.

    PPO whitens advantages over the whole batch; per-rank statistics would change the update.
    """
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    on = mask > 0
    x = torch.where(on, x, 0.0)
    stats = all_reduce_sum(torch.stack([x.sum(), on.sum()]).double(), ctx)
    n = stats[1]
    mean = (stats[0] / n.clamp(min=1)).to(x.dtype)
    sq = all_reduce_sum(torch.where(on, (x - mean) ** 2, 0.0).sum().double(), ctx)
    var = (sq / (n - 1).clamp(min=1)).to(x.dtype)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(on, out, 0.0)


# How each trainer metric combines over ranks (a key ending in "/" is a prefix). Everything
# else is a count-weighted mean, which is also right for the policy losses: each rank's loss
# is already W × its share of the global loss (see `loss_normalizer`).
TRAIN_METRIC_OPS: dict[str, str] = {
    "infra_errors": "sum",
    "groups_kept": "sum",
    "rows_trained": "sum",
    "status/": "sum",
    "tokens_per_s": "sum",
    "step_seconds": "max",
    "gen_seconds": "max",
    "sync_seconds": "max",
}
OPS = ("mean", "sum", "max", "min")


def _op_for(key: str, ops: Mapping[str, str]) -> str:
    if key in ops:
        return ops[key]
    for prefix, op in ops.items():
        if prefix.endswith("/") and key.startswith(prefix):
            return op
    return "mean"


def all_reduce_metrics(
    metrics: Mapping[str, float],
    ctx: DistContext,
    counts: Mapping[str, float] | float = 1.0,
    ops: Mapping[str, str] | None = None,
) -> dict[str, float]:
    """Global value of each metric, the same on every rank.

    op "mean" (default): Σ_r c_r·v_r / Σ_r c_r with c_r = ``counts[key]`` (or the scalar
    ``counts``), the mean over all samples — not the mean of the ranks' means, which
    overweights a rank with few samples. "sum", "max", "min" as named. A key missing on some
    rank (a status no completion of that rank had) counts as absent there: 0 to a sum, weight
    0 to a mean. Metrics are small, so ranks exchange them whole (``all_gather_object``).

    >>> all_reduce_metrics({"reward_mean": 0.5, "status/ok": 2}, DistContext(), counts=4,
    ...                    ops=TRAIN_METRIC_OPS)
    {'reward_mean': 0.5, 'status/ok': 2.0}
    """
    ops = TRAIN_METRIC_OPS if ops is None else ops
    for key, op in ops.items():
        if op not in OPS:
            raise ValueError(f"metric {key!r}: op must be one of {OPS}, got {op!r}")
    local = {
        k: (float(v), float(counts if isinstance(counts, int | float) else counts.get(k, 1.0)))
        for k, v in metrics.items()
    }
    everyone = gather_objects(local, ctx, to_all=True)
    assert everyone is not None
    keys = list(dict.fromkeys(k for part in everyone for k in part))
    out: dict[str, float] = {}
    for k in keys:
        vals = [part[k] for part in everyone if k in part]
        op = _op_for(k, ops)
        if op == "sum":
            out[k] = sum(v for v, _ in vals)
        elif op == "max":
            out[k] = max(v for v, _ in vals)
        elif op == "min":
            out[k] = min(v for v, _ in vals)
        else:
            weight = sum(c for _, c in vals)
            out[k] = sum(v * c for v, c in vals) / weight if weight else 0.0
    return out


def gather_objects(obj: T, ctx: DistContext, to_all: bool = False) -> list[T] | None:
    """Every rank's ``obj`` (picklable) as a list indexed by rank: on rank 0 only (others get
    None), or on every rank with ``to_all``. Used for sample logging and per-rank RNG states."""
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    if to_all:
        dist.all_gather_object(out, obj)
        return out
    dist.gather_object(obj, out if ctx.is_main else None, dst=0)
    return out if ctx.is_main else None


def broadcast_object(obj: T, ctx: DistContext, src: int = 0) -> T:
    """Rank `src`'s ``obj`` on every rank (e.g. a run directory rank 0 decided on)."""
    if not ctx.distributed:
        return obj
    box: list[Any] = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]  # type: ignore[no-any-return]


# ---------------------------------------------------------------- model wrapping


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


def _is_fsdp2(model: Any) -> bool:
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
            elif _is_fsdp2(m):
                m.set_requires_gradient_sync(False)
                stack.callback(m.set_requires_gradient_sync, True)
        yield


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> float:
    """Clip the global gradient norm and return it as a float; with FSDP2's sharded DTensor
    gradients the norm is reduced over ranks (so it equals the single-process norm)."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    full = getattr(norm, "full_tensor", None)
    return float(full() if full is not None else norm)


def full_state_dict(
    model: Any, ctx: DistContext, all_ranks: bool = False
) -> dict[str, torch.Tensor] | None:
    """The unsharded state dict on rank 0 (on CPU; None elsewhere), or on every rank (on its
    device) with `all_ranks`, e.g. to feed each rank's colocated vLLM engine. Collective under
    FSDP2: every rank must call it."""
    if _is_fsdp2(model):
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
    if _is_fsdp2(model):
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
    if _is_fsdp2(model):
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
    if _is_fsdp2(model):
        sd = full_state_dict(model, ctx)
        if ctx.is_main:
            unwrap(model).save_pretrained(str(out_dir), state_dict=sd)
    elif ctx.is_main:
        unwrap(model).save_pretrained(str(out_dir))
    barrier(ctx)


# ---------------------------------------------------------------- writing, resume, pools


def main_only(fn: Callable[..., T]) -> Callable[..., T | None]:
    """Run `fn` on rank 0 only (returns None elsewhere). The wrapped function takes the
    DistContext as keyword ``ctx``, or reads it from torchrun's RANK when not given.

    Only for functions that make no collective calls: a collective on one rank hangs the job.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, ctx: DistContext | None = None, **kwargs: Any) -> T | None:
        rank = ctx.rank if ctx is not None else int(os.environ.get("RANK", "0"))
        return fn(*args, **kwargs) if rank == 0 else None

    return wrapper


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


def per_rank_workers(total_per_machine: int, ctx: DistContext) -> int:
    """This rank's share of a per-machine limit (Docker sandbox pool), so the ranks on one
    host together run at most `total_per_machine` containers. Shares differ by at most 1;
    every rank gets at least 1 (so the bound becomes LOCAL_WORLD_SIZE if it is smaller).
    ``make_sandbox`` applies it to every sandbox it builds.

    >>> [per_rank_workers(5, DistContext(local_rank=i, local_world_size=2)) for i in (0, 1)]
    [3, 2]
    """
    from verirl.sandboxes.sandbox import machine_share

    try:
        return machine_share(total_per_machine, ctx.local_rank, ctx.local_world_size)
    except ValueError as e:
        raise ConfigError(str(e)) from None
