"""The steps the RL loop calls by name: pick rows, roll out, score, advantages, update.

Each function does one thing on plain tensors/lists so the loop in ``loop.py`` reads top to
bottom, and so data sharding (``batch_rows``) can later take a rank without touching the rest.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

import torch

from verirl.algos import (
    AdvantageInputs,
    ObjectiveConfig,
    PolicyLossParams,
    compute_advantages,
    kl_penalty,
    length_penalty,
    masked_whiten,
    policy_objective,
    soft_overlong_penalty,
)
from verirl.envs.base import Environment, Row
from verirl.rewards.result import RewardResult
from verirl.rollout.base import Completion
from verirl.train.config import AlgoSection
from verirl.train.model import Batch, ValueHead, forward_logprobs, pack


def batch_rows(rows: Any, step: int, n: int, seed: int) -> list[Row]:
    """Rows of generation batch `step`: consecutive slices of a per-epoch shuffle, a pure
    function of (seed, step) so a resumed run sees exactly the data the killed one would."""
    out = []
    for k in range(step * n, step * n + n):
        epoch, pos = divmod(k, len(rows))
        out.append(rows[_epoch_order(len(rows), seed, epoch)[pos]])
    return out


@lru_cache(maxsize=4)
def _epoch_order(size: int, seed: int, epoch: int) -> tuple[int, ...]:
    order = list(range(size))
    random.Random(seed * 100_003 + epoch).shuffle(order)
    return tuple(order)


def score_async(
    pool: ThreadPoolExecutor,
    env: Environment,
    groups: list[list[Completion]],
    rows: list[Row],
    workers: int,
) -> Future[list[RewardResult]]:
    """Score every completion in a background thread; the loop computes logprobs meanwhile."""
    texts = [c.text for g in groups for c in g]
    flat_rows = [r for g, r in zip(groups, rows, strict=True) for _ in g]
    return pool.submit(env.score_batch, texts, flat_rows, workers)


@dataclass
class Rollout:
    """One generation batch as tensors: B = prompts x group sequences."""

    batch: Batch
    rewards: torch.Tensor  # [P, G]
    valid: torch.Tensor  # [P, G] 0 for infra errors (masked out of the loss, counted)
    old_logp: torch.Tensor | None = None  # [B, T] log π_old; None: reuse logp.detach()
    ref_logp: torch.Tensor | None = None  # [B, T]
    old_values: torch.Tensor | None = None  # [B, T] PPO critic at sampling time
    adv: torch.Tensor | None = None  # [B, T]
    returns: torch.Tensor | None = None  # [B, T] PPO
    stats: dict[str, float] = field(default_factory=dict)
    rollout_logp: torch.Tensor | None = None  # [B, T] the engine's log π at sampling time
    # T of every logprob of this batch (π_old, π_ref, π_θ, the engine's): log softmax(z / T),
    # ``logprob_temperature`` of the sampling temperature; the entropy metric is softmax(z/T)'s.
    temperature: float = 1.0
    truncated: torch.Tensor | None = None  # [B] bool: cut by max_new_tokens (``truncated_rows``)


def truncated_rows(groups: list[list[Completion]], device: str) -> torch.Tensor:
    """[B] True where a completion ended by running out of budget (finish_reason "length"),
    not on an end token or stop string: DAPO's overlong filtering drops these from the loss."""
    flat = [c.finish_reason == "length" for g in groups for c in g]
    return torch.tensor(flat, dtype=torch.bool, device=device)


def rollout_logprobs(groups: list[list[Completion]], batch: Batch) -> torch.Tensor:
    """The rollout engine's per-token logprobs laid out like ``batch.targets`` [B, T] (0 off the
    completion): each row's masked positions are its completion tokens, in order."""
    flat = [c for g in groups for c in g]
    out = torch.zeros_like(batch.mask, dtype=torch.float32)
    for b, c in enumerate(flat):
        if len(c.logprobs) != len(c.token_ids):
            raise ValueError(f"completion {b}: {len(c.logprobs)} logprobs for "
                             f"{len(c.token_ids)} tokens")  # fmt: skip
    values = torch.tensor([lp for c in flat for lp in c.logprobs], dtype=torch.float32)
    out[batch.mask > 0] = values.to(out.device)
    return out


def to_batch(groups: list[list[Completion]], pad: int, device: str) -> Batch:
    flat = [c for g in groups for c in g]
    return pack([c.prompt_token_ids for c in flat], [c.token_ids for c in flat], pad, device)


def reward_stats(results: list[RewardResult], shape: tuple[int, int]) -> dict[str, Any]:
    """Rewards/valid tensors [P, G] and the reward metrics of the batch."""
    rewards = torch.tensor([r.reward for r in results], dtype=torch.float32).view(shape)
    valid = torch.tensor([r.counts_for_training for r in results], dtype=torch.float32)
    ok = [r for r in results if r.counts_for_training]
    stats: dict[str, Any] = {
        "reward_mean": sum(r.reward for r in ok) / max(len(ok), 1),
        "pass_rate": sum(r.ok for r in ok) / max(len(ok), 1),
        "infra_errors": len(results) - len(ok),
    }
    comps: Counter[str] = Counter()
    for r in ok:
        comps.update(r.components)
    for k, v in comps.items():
        stats[f"reward/{k}"] = v / max(len(ok), 1)
    for status, count in Counter(r.status for r in results).items():
        stats[f"status/{status}"] = count
    return {"rewards": rewards, "valid": valid.view(shape), "stats": stats}


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


def shaped_rewards(
    ro: Rollout, algo: AlgoSection, max_new_tokens: int
) -> tuple[torch.Tensor, dict[str, float]]:
    """Each sequence's score [B]: the env's reward plus the length terms the config asks for
    (DAPO soft overlong punishment, linear length penalty), and the mean of each term."""
    rewards = ro.rewards.view(-1).float()  # [B] group-major
    lengths = ro.batch.mask.sum(-1)  # [B] completion tokens
    stats: dict[str, float] = {}
    if algo.overlong_cache is not None:
        term = soft_overlong_penalty(lengths, max_new_tokens, algo.overlong_cache).to(rewards)
        rewards, stats["shaping/overlong"] = rewards + term, float(term.mean())
    if algo.length_penalty > 0:
        term = length_penalty(lengths, max_new_tokens, algo.length_penalty).to(rewards)
        rewards, stats["shaping/length"] = rewards + term, float(term.mean())
    return rewards, stats


def with_advantages(
    ro: Rollout,
    algo: AlgoSection,
    max_new_tokens: int,
    whiten: Callable[..., torch.Tensor] = masked_whiten,
) -> Rollout:
    """A new Rollout with advantages [B, T], the loss mask and (PPO) returns, by the estimator
    ``algo.advantage`` (``ADVANTAGE_ESTIMATORS``); ``ro`` itself is not changed.

    The mask loses infra errors, DAPO-filtered groups (``filter_zero_variance``) and, with
    ``mask_truncated``, completions cut by the budget. With the KL in the reward (PPO), the
    token rewards carry −β·k1(π_old ‖ π_ref). `whiten` normalises over the batch (across ranks
    when distributed) for the estimators that whiten.
    """
    rewards, stats = shaped_rewards(ro, algo, max_new_tokens)
    mask = ro.batch.mask
    if algo.mask_truncated and ro.truncated is not None:
        mask = mask * (~ro.truncated).to(mask.dtype).unsqueeze(-1)
        stats["truncated"] = float(ro.truncated.sum())
    kl = None
    if algo.beta > 0 and not algo.kl_in_loss:
        assert ro.ref_logp is not None and ro.old_logp is not None
        kl = kl_penalty(ro.old_logp, ro.ref_logp, "k1")
    x = AdvantageInputs(rewards, mask, algo.group_size, valid=ro.valid.view(-1) > 0,
                        values=ro.old_values, token_kl=kl, beta=algo.beta, gamma=algo.gamma,
                        lam=algo.lam, scale_by_std=algo.scale_rewards, whiten=whiten)  # fmt: skip
    out = compute_advantages(algo.advantage, x, filter_zero_variance=algo.filter_zero_variance)
    stats = {**ro.stats, **stats, "groups_kept": float(out.groups_kept)}
    return replace(ro, batch=replace(ro.batch, mask=out.mask), adv=out.advantages,
                   returns=out.returns, stats=stats)  # fmt: skip


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
