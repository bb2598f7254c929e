"""The collect phase of a training step: G completions (single-turn) or G trajectories
(multi-turn) for each of this rank's prompts, with their scores on the way.

Single-turn: one ``engine.generate`` call, then the completions are scored in a background
thread (``score_async``) while the loop computes π_old/π_ref. Multi-turn
(``env.multi_turn``): ``run_episodes`` advances all episodes turn by turn, the environment
answering each model turn, and scores every trajectory as it ends; its results come as a done
future. Either way the loop sees the same ``Collected``.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from verirl.envs.base import Environment, Row
from verirl.errors import ConfigError
from verirl.prompts import render_prompt
from verirl.rewards.result import RewardResult
from verirl.rollout.base import Completion, RolloutEngine, SamplingParams
from verirl.train.batch import batch_rows
from verirl.train.config import TrainConfig
from verirl.train.scoring import score_async, scored


@dataclass(frozen=True)
class Turns:
    """How this run's episodes are collected: ``multi_turn`` False is the single-turn path
    (``engine.generate``). ``max_turns``: model turns per episode (``rollout.max_turns``,
    default the env's); ``budget``: tokens a sequence may have after its prompt (single-turn:
    ``rollout.max_new_tokens``; a trajectory: ``rollout.max_tokens``, model and environment
    tokens together, default max_turns × max_new_tokens). Length shaping and the
    seq-mean-token-sum-norm aggregation use it as L_max."""

    multi_turn: bool
    max_turns: int
    budget: int


def turns_of(cfg: TrainConfig, env: Environment) -> Turns:
    """The run's turn settings; a ConfigError when ``rollout.max_turns`` exceeds the env's."""
    r = cfg.rollout
    if not env.multi_turn:
        if r.max_turns not in (None, 1):
            raise ConfigError(f"rollout.max_turns={r.max_turns}: env {cfg.env.name!r} is "
                              "single-turn (max_turns 1)")  # fmt: skip
        return Turns(False, 1, r.max_new_tokens)
    max_turns = env.max_turns if r.max_turns is None else r.max_turns
    if max_turns > env.max_turns:
        raise ConfigError(f"rollout.max_turns={max_turns} exceeds env {cfg.env.name!r}'s "
                          f"max_turns={env.max_turns}; lower it or leave it unset")  # fmt: skip
    return Turns(True, max_turns, r.max_tokens or max_turns * r.max_new_tokens)


@dataclass
class Collected:
    """One step's samples: ``groups[i]`` are the G completions/trajectories of ``rows[i]``,
    ``prompts[i]`` its prompt as the engine saw it, ``results`` their scores (flat, group-major;
    a future: single-turn scoring runs in the background)."""

    rows: list[Row]
    prompts: list[str]
    groups: list[list[Completion]]
    results: Future[list[RewardResult]]
    seconds: float  # generation time (episodes: generation and the environment's turns)


def collect(
    engine: RolloutEngine,
    env: Environment,
    tok: Any,
    cfg: TrainConfig,
    data: Any,
    step: int,
    mine: range,
    sampling: SamplingParams,
    turns: Turns,
    pool: ThreadPoolExecutor,
) -> Collected:
    """G samples of each of this rank's (`mine`) prompts of batch `step`; `pool` scores
    single-turn completions in the background."""
    a = cfg.algo
    t0 = time.perf_counter()
    rows = batch_rows(data, step, a.batch_size // a.group_size, cfg.train.seed)
    rows = [rows[i] for i in mine]
    prompts = [render_prompt(env.prompt(x), tok, cfg.model.chat_template) for x in rows]
    if not turns.multi_turn:
        groups = engine.generate(prompts, a.group_size, sampling)
        seconds = time.perf_counter() - t0
        results = score_async(pool, env, groups, rows, cfg.rollout.score_workers)
        return Collected(rows, prompts, groups, results, seconds)
    from verirl.rollout.episodes import run_episodes

    # run_episodes' own pool: tool calls of different episodes run concurrently
    out = run_episodes(engine, env, rows, a.group_size, sampling, tok, cfg.model.chat_template,
                       max_turns=turns.max_turns, max_tokens=turns.budget,
                       batch_frac=cfg.rollout.turn_batch_frac)  # fmt: skip
    flat = [r for group in out.rewards for r in group]
    return Collected(rows, prompts, out.completions, scored(flat), time.perf_counter() - t0)


def samples(got: Collected, results: list[RewardResult], limit: int) -> list[dict[str, Any]]:
    """The first `limit` samples for samples.jsonl: prompt, completion (a trajectory's whole
    text after the prompt), verdict and, for episodes, the conversation with roles."""
    out = []
    flat = [(p, c) for p, g in zip(got.prompts, got.groups, strict=True) for c in g]
    for (prompt, c), res in list(zip(flat, results, strict=True))[:limit]:
        rec = {"prompt": prompt, "completion": c.text, "reward": res.reward,
               "status": res.status, "detail": res.detail}  # fmt: skip
        episode = c.extra.get("episode")
        if episode is not None:
            rec |= {"messages": episode.messages, "turns": episode.turns,
                    "tool_calls": episode.tool_calls, "tool_errors": episode.tool_errors,
                    "truncated": episode.truncated}  # fmt: skip
        out.append(rec)
    return out
