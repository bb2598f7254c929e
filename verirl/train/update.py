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
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch

from verirl.algos import (
    aggregate_loss,
    clipped_policy_loss,
    gae_advantages,
    group_has_signal,
    grpo_advantages,
    kl_penalty,
    kl_shaped_rewards,
    masked_whiten,
    token_logprobs,
    truncated_is_weights,
    value_loss,
)
from verirl.algos.logprobs import token_logprobs_and_entropy
from verirl.envs.base import Environment, Row
from verirl.rewards.result import RewardResult
from verirl.rollout.base import Completion
from verirl.train.config import AlgoSection
from verirl.train.model import Batch, ValueHead, forward_logits, pack


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
        logits, h = forward_logits(model, mb, hidden=value_head is not None, start=first,
                                   forward=forward)  # fmt: skip
        lp = token_logprobs(logits, mb.targets[:, first:], temperature=temperature)
        logps.append(torch.nn.functional.pad(lp, (first, width - first - lp.shape[1])))
        if value_head is not None:
            v = value_head(h)
            values.append(torch.nn.functional.pad(v, (first, width - first - v.shape[1])))
    return torch.cat(logps), (torch.cat(values) if values else None)


def grpo_advantage(ro: Rollout, algo: AlgoSection) -> None:
    """Sequence advantages spread over tokens; optional DAPO zero-variance filtering."""
    g = algo.group_size
    rewards, valid = ro.rewards.view(-1), ro.valid.view(-1) > 0  # group-major [B]
    adv = grpo_advantages(rewards, g, scale_by_std=algo.scale_rewards, valid=valid)  # [B]
    keep = ro.valid.clone()  # [P, G]
    if algo.filter_zero_variance:
        keep = keep * group_has_signal(rewards, g, valid=valid).float().unsqueeze(-1)
    ro.stats["groups_kept"] = float((keep.sum(-1) > 0).sum())
    ro.batch.mask = ro.batch.mask * keep.view(-1, 1)
    ro.adv = adv.view(-1, 1) * ro.batch.mask  # [B, T]


def ppo_advantage(
    ro: Rollout, algo: AlgoSection, whiten: Callable[..., torch.Tensor] = masked_whiten
) -> None:
    """Reward on the last token (minus β·k1 per token when KL is in the reward), then GAE.
    `whiten` normalises advantages over the batch (across ranks when distributed)."""
    assert ro.old_values is not None
    ro.batch.mask = ro.batch.mask * ro.valid.view(-1, 1)
    mask = ro.batch.mask
    kl = None
    if algo.beta > 0 and algo.kl_in == "reward":
        assert ro.ref_logp is not None and ro.old_logp is not None
        kl = kl_penalty(ro.old_logp, ro.ref_logp, "k1")
    token_r = kl_shaped_rewards(ro.rewards.view(-1), mask, kl, algo.beta)
    adv, ret = gae_advantages(token_r, ro.old_values, mask, algo.gamma, algo.lam)
    ro.adv, ro.returns = whiten(adv, mask), ret


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
    kl_in_loss = ro.ref_logp is not None and (algo.name == "grpo" or algo.kl_in == "loss")
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

    Loss per token: clipped policy loss (+ β·KL when in the loss) aggregated by `loss_agg` with
    whole-batch normalisers, so the accumulated gradient equals the full batch's; PPO adds
    `vf_coef` × the clipped value loss (token mean).

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
    n_tok, n_seq = normalizers
    acc: dict[str, float] = dict.fromkeys(("loss", "pg_loss", "clip_frac", "entropy"), 0.0)
    if rows is None:
        rows = torch.arange(b.targets.shape[0], device=b.mask.device)
    run_tokens = float(b.mask[rows].sum())
    for s0 in range(0, len(rows), micro):
        with no_sync(s0 + micro < len(rows)):
            _micro_step(model, ro, algo, rows[s0 : s0 + micro], max_new_tokens, value_head,
                        n_tok, n_seq, acc, forward)  # fmt: skip
    for k in ("entropy", "tis_weight"):  # sums over the rows run -> their token means
        if k in acc:
            acc[k] /= max(run_tokens, 1.0)
    if not len(rows):
        del acc["entropy"]  # no token was run: no entropy to report
    return dict(acc)


def _micro_step(
    model: Any,
    ro: Rollout,
    algo: AlgoSection,
    idx: torch.Tensor,
    max_new_tokens: int,
    value_head: Any,
    n_tok: float,
    n_seq: float,
    acc: dict[str, float],
    forward: str = "auto",
) -> None:
    """Forward and backward of the micro-batch of rows `idx`; adds its metrics into `acc`."""
    assert ro.adv is not None
    mb = ro.batch.slice(idx)
    # columns first…w: from the first completion token of any row to the longest row's end
    first, w = mb.first_target(), mb.targets.shape[1]
    cols = slice(first, w)
    logits, h = forward_logits(model, mb, hidden=value_head is not None, start=first,
                               forward=forward)  # fmt: skip
    logp, ent = token_logprobs_and_entropy(logits, mb.targets[:, cols],
                                           temperature=ro.temperature)  # fmt: skip
    old = _rows(ro.old_logp, idx, cols)
    old = logp.detach() if old is None else old  # epochs = 1: ratio is 1, one forward
    adv = ro.adv[idx, cols]
    m = mb.mask[:, cols]
    pg, clipped = clipped_policy_loss(logp, old, adv, m, algo.clip_low, algo.clip_high)
    if algo.tis_cap is not None and ro.rollout_logp is not None:
        tis = truncated_is_weights(old.detach(), ro.rollout_logp[idx, cols], algo.tis_cap)
        pg = pg * tis
        acc["tis_weight"] = acc.get("tis_weight", 0.0) + float((tis * m).sum())
    per_tok = pg
    if ro.ref_logp is not None:
        kl = kl_penalty(logp, ro.ref_logp[idx, cols], algo.kl_estimator)
        acc["kl"] = acc.get("kl", 0.0) + float((kl.detach() * m).sum()) / n_tok
        if algo.name == "grpo" or algo.kl_in == "loss":
            per_tok = per_tok + algo.beta * kl
    loss = aggregate_loss(per_tok, m, algo.loss_agg, max_len=float(max_new_tokens),
                          num_tokens=n_tok, num_seqs=n_seq)  # fmt: skip
    if value_head is not None:
        assert ro.old_values is not None and ro.returns is not None
        v = value_head(h)
        vloss = value_loss(v, ro.old_values[idx, cols], ro.returns[idx, cols], m, algo.value_clip,
                           num_tokens=n_tok)  # fmt: skip
        loss = loss + algo.vf_coef * vloss
        acc["value_loss"] = acc.get("value_loss", 0.0) + float(vloss.detach())
    loss.backward()
    with torch.no_grad():
        acc["loss"] += float(loss.detach())
        acc["pg_loss"] += float((pg.detach() * m).sum()) / n_tok
        acc["clip_frac"] += float(clipped.sum()) / n_tok
        acc["entropy"] += float((ent * m).sum())
