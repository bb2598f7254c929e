"""Reductions and metrics over ranks: sums and maxima, the global loss normaliser, PPO's
whitening over the whole batch, metric rows, and picklable objects gathered or broadcast.

Each function is the identity (or a copy) for a single process, so callers need no branch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from verirl.train.distributed.launch import DistContext

T = TypeVar("T")


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
