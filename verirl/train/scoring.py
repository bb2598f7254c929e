"""Scoring a generation batch and turning the scores into advantages and the loss mask.

``score_async`` scores single-turn completions in the background while the loop computes
π_old/π_ref; multi-turn episodes come scored from ``run_episodes``. ``reward_stats`` turns the
results into [P, G] tensors and the reward metrics; ``with_advantages`` applies the estimator
named by ``algo.advantage`` and returns a new ``Rollout``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import torch

from verirl.algos import (
    AdvantageInputs,
    compute_advantages,
    kl_penalty,
    length_penalty,
    masked_whiten,
    soft_overlong_penalty,
)
from verirl.envs.base import Environment, Row
from verirl.rewards.result import RewardResult
from verirl.rollout.base import Completion
from verirl.train.batch import Rollout
from verirl.train.config import AlgoSection


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


def scored(results: list[RewardResult]) -> Future[list[RewardResult]]:
    """Results already at hand (multi-turn episodes are scored as they end) as a done future,
    so the loop waits on both kinds of collection alike."""
    done: Future[list[RewardResult]] = Future()
    done.set_result(results)
    return done


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


# Per-episode means of a multi-turn batch (``episode_metrics``), reduced over ranks
# weighted by episodes.
EPISODE_METRICS = ("turns_mean", "tool_calls_mean", "tool_errors_mean", "truncated_frac")


def episode_stats(groups: list[list[Completion]]) -> dict[str, float]:
    """Turns, tool calls and tool errors per episode and the share of truncated episodes
    (``Completion.extra["episode"]``); {} for single-turn completions."""
    from verirl.rollout.episodes import episode_metrics

    eps = [c.extra["episode"] for g in groups for c in g if "episode" in c.extra]
    return episode_metrics(eps) if eps else {}


def shaped_rewards(
    ro: Rollout, algo: AlgoSection, max_new_tokens: int
) -> tuple[torch.Tensor, dict[str, float]]:
    """Each sequence's score [B]: the env's reward plus the length terms the config asks for
    (DAPO soft overlong punishment, linear length penalty), and the mean of each term.
    `max_new_tokens` is the budget after the prompt (a trajectory's: ``token_budget``)."""
    rewards = ro.rewards.view(-1).float()  # [B] group-major
    lengths = ro.batch.mask.sum(-1) if ro.lengths is None else ro.lengths  # [B]
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
    when distributed) for the estimators that whiten. Environment tokens of a trajectory are
    outside the mask from ``to_batch`` on, so no estimator gives them an advantage.
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
