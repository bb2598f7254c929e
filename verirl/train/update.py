"""The update: π_old/π_ref logprobs of a batch, the rows worth a backward pass, and one
optimisation pass (micro-steps of forward → ``policy_objective`` → backward).

Batch building lives in ``batch.py`` and scoring/advantages in ``scoring.py``; their names
are re-exported here for callers that import them from the update (``batch_rows``, ``Rollout``,
``to_batch``, ``rollout_logprobs``, ``with_advantages`` …).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch

from verirl.algos import ObjectiveConfig, PolicyLossParams, policy_objective
from verirl.train.batch import (
    Rollout,
    batch_rows,
    rollout_logprobs,
    to_batch,
    truncated_rows,
)
from verirl.train.config import AlgoSection
from verirl.train.model import Batch, ValueHead, forward_logprobs
from verirl.train.scoring import reward_stats, score_async, shaped_rewards, with_advantages

__all__ = [
    "Rollout",
    "batch_rows",
    "fill_missing_grads",
    "objective_config",
    "pad_rows",
    "policy_update",
    "reward_stats",
    "rollout_logprobs",
    "rows_to_train",
    "score_async",
    "sequence_logprobs",
    "shaped_rewards",
    "to_batch",
    "truncated_rows",
    "with_advantages",
]


@torch.no_grad()
def sequence_logprobs(
    model: Any,
    batch: Batch,
    micro: int,
    value_head: ValueHead | None = None,
    temperature: float = 1.0,
    forward: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log softmax(z / T)[target] for every position [B, T] (and V [B, T] with a value head),
    no grad. The reference model is scored at the same T as the policy (TRL and verl divide
    its logits by the sampling temperature too), so the KL compares two tempered policies.
    `forward`: ``forward_logits``' choice, the same for π_old, π_ref and π_θ."""
    logps, values = [], []
    width = batch.targets.shape[1]
    for s in range(0, batch.targets.shape[0], micro):
        mb = batch.slice(slice(s, s + micro))
        first = mb.first_target()  # prompt columns left of it: 0, never read (masked)
        lp, _, h = forward_logprobs(model, mb, start=first, forward=forward,
                                    temperature=temperature, hidden=value_head is not None)  # fmt: skip
        logps.append(torch.nn.functional.pad(lp, (first, width - first - lp.shape[1])))
        if value_head is not None:
            v = value_head(h)
            values.append(torch.nn.functional.pad(v, (first, width - first - v.shape[1])))
    return torch.cat(logps), (torch.cat(values) if values else None)


def objective_config(algo: AlgoSection, max_new_tokens: int) -> ObjectiveConfig:
    """The objective ``algo`` describes (the policy loss by name, its clip ranges, KL, TIS)."""
    params = PolicyLossParams(clip_low=algo.clip_low, clip_high=algo.clip_high,
                              dual_clip_c=algo.dual_clip_c, cispo_max=algo.cispo_max)  # fmt: skip
    return ObjectiveConfig(
        policy_loss=algo.policy_loss,
        params=params,
        loss_agg=algo.loss_agg,
        max_len=float(max_new_tokens),
        kl_coef=algo.beta if algo.kl_in_loss else 0.0,
        kl_estimator=algo.kl_estimator,
        tis_cap=algo.tis_cap,
        vf_coef=algo.vf_coef,
        value_clip=algo.value_clip,
    )


def _rows(t: torch.Tensor | None, idx: torch.Tensor, cols: slice) -> torch.Tensor | None:
    return None if t is None else t[idx, cols]


def rows_to_train(ro: Rollout, algo: AlgoSection, value_head: Any) -> torch.Tensor:
    """Indices [R] of the rows whose loss can have a non-zero gradient, in batch order.

    A row with no token in the mask (an infra error, a DAPO-filtered group) adds nothing to
    the loss. With no KL term in the loss and no critic, a row's loss is −min(ρ·A, clip(ρ)·A)
    per token: a row whose advantage is 0 at every token (every row of a GRPO group whose
    rewards are all equal) has loss 0 and gradient 0 whatever θ is. The update skips both
    kinds (``algo.skip_zero_grad_rows``); the loss normalisers still count their tokens, so
    the gradient is the full batch's (up to float summation order).
    """
    assert ro.adv is not None
    live = ro.batch.mask.sum(-1) > 0
    kl_in_loss = ro.ref_logp is not None and algo.kl_in_loss
    if value_head is None and not kl_in_loss:
        live &= (ro.adv * ro.batch.mask).ne(0).any(-1)
    return live.nonzero().squeeze(-1)


def pad_rows(rows: torch.Tensor, k: int, total: int) -> torch.Tensor:
    """`rows` topped up to `k` indices with rows not in it (zero-gradient rows): under DDP/FSDP
    every rank must run the same number of micro-steps, as many as the busiest rank.

    >>> pad_rows(torch.tensor([1, 3]), 4, 5).tolist()
    [1, 3, 0, 2]
    """
    if len(rows) >= k:
        return rows
    rest = torch.ones(total, dtype=torch.bool, device=rows.device)
    rest[rows] = False
    return torch.cat([rows, rest.nonzero().squeeze(-1)[: k - len(rows)]])


def fill_missing_grads(params: list[torch.nn.Parameter]) -> None:
    """Zero gradients for parameters no micro-step reached (every row skipped): AdamW steps a
    parameter with a zero gradient (momentum, weight decay) but skips one whose grad is None,
    and the full batch's gradient would have been exactly zero, not absent."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)


def policy_update(
    model: Any,
    ro: Rollout,
    algo: AlgoSection,
    micro: int,
    max_new_tokens: int,
    value_head: Any,
    normalizers: tuple[float, float],
    no_sync: Callable[[bool], AbstractContextManager[Any]],
    rows: torch.Tensor | None = None,
    forward: str = "auto",
) -> dict[str, float]:
    """One optimisation pass over the batch with gradient accumulation (the caller steps).

    Each micro-step is forward → ``policy_objective`` (``objective_config(algo)``: the policy
    loss by name, + β·KL when in the loss, aggregated by `loss_agg` with whole-batch
    normalisers, so the accumulated gradient equals the full batch's; PPO adds `vf_coef` × the
    clipped value loss) → backward.

    `normalizers` = (tokens, sequences) of the global batch divided by the world size (this
    batch's counts for one process), so DDP's gradient mean is the global batch's gradient;
    `no_sync(accumulating)` wraps every micro-step's forward and backward, skipping the
    gradient all-reduce on all but the last (``distributed.no_sync_if``). `rows`: the rows to
    run (``rows_to_train``; default all), `micro` at a time. Entropy and the TIS weight are
    means over the tokens of the rows run; the losses and clip fraction are over the batch.
    `forward`: ``forward_logits``' choice (``resolve_forward``), as for π_old and π_ref.
    """
    assert ro.adv is not None
    b = ro.batch
    objective = objective_config(algo, max_new_tokens)
    acc: dict[str, float] = dict.fromkeys(("loss", "pg_loss", "clip_frac", "entropy"), 0.0)
    if rows is None:
        rows = torch.arange(b.targets.shape[0], device=b.mask.device)
    run_tokens = float(b.mask[rows].sum())
    for s0 in range(0, len(rows), micro):
        with no_sync(s0 + micro < len(rows)):
            step = _micro_step(model, ro, objective, rows[s0 : s0 + micro], value_head,
                               normalizers, forward)  # fmt: skip
        for k, v in step.items():
            acc[k] = acc.get(k, 0.0) + v
    for k in ("entropy", "tis_weight"):  # sums over the rows run -> their token means
        if k in acc:
            acc[k] /= max(run_tokens, 1.0)
    if not len(rows):
        del acc["entropy"]  # no token was run: no entropy to report
    return acc


def _micro_step(
    model: Any,
    ro: Rollout,
    objective: ObjectiveConfig,
    idx: torch.Tensor,
    value_head: Any,
    normalizers: tuple[float, float],
    forward: str = "auto",
) -> dict[str, float]:
    """Forward → objective → backward on the rows `idx`; returns their metric sums."""
    assert ro.adv is not None
    mb = ro.batch.slice(idx)
    # columns first…w: from the first completion token of any row to the longest row's end
    first, w = mb.first_target(), mb.targets.shape[1]
    cols = slice(first, w)
    logp, ent, h = forward_logprobs(model, mb, start=first, forward=forward,
                                    temperature=ro.temperature, hidden=value_head is not None)  # fmt: skip
    m = mb.mask[:, cols]
    loss, metrics = policy_objective(
        logp, _rows(ro.old_logp, idx, cols), ro.adv[idx, cols], m, objective,
        num_tokens=normalizers[0], num_seqs=normalizers[1],
        ref_logp=_rows(ro.ref_logp, idx, cols), rollout_logp=_rows(ro.rollout_logp, idx, cols),
        values=None if value_head is None else value_head(h),
        old_values=_rows(ro.old_values, idx, cols), returns=_rows(ro.returns, idx, cols),
    )  # fmt: skip
    loss.backward()
    if "tis_weight_sum" in metrics:
        metrics["tis_weight"] = metrics.pop("tis_weight_sum")
    metrics["entropy"] = float((ent * m).sum())
    return metrics
