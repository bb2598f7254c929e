"""The multi-turn driver: G episodes per row, advanced turn by turn in batches.

``run_episodes`` runs the contract of ``verirl.envs.multiturn``: every episode starts from its
row's prompt; all episodes ready to act generate their next turn in one
``engine.generate_ids`` call (token ids in, never re-tokenised); after each model turn the
environment's ``respond`` runs in a thread pool, concurrently across episodes, and its messages
are rendered as tokens (``verirl.rollout.turns``) and appended. Episodes whose response is ready
join the next generation batch while slow tool calls of others are still running: the driver
generates as soon as at least ``batch_frac`` of the episodes still running are ready (or none
is waiting on a tool), otherwise it waits for the next response. ``batch_frac=1.0`` advances
all episodes in lockstep, which makes a seeded run independent of tool timing. An engine with
``keeps_kv`` (hf) gets one ``cache_keys`` entry per episode, so a turn prefills only the tokens
appended since the episode's last turn; an episode's cached keys and values are released when
it ends, and all of them when the call returns or raises.

Each trajectory comes back as one ``Completion`` whose ``token_ids`` are every token after the
prompt (the model's and the environment's), ``logprobs`` the engine's at the model's tokens
and 0.0 at the environment's, ``mask`` 1 at the model's and 0 at the environment's, ``text``
the readable whole (model turns and rendered messages), and ``extra["episode"]`` the
``Episode`` (messages with roles, counters). An episode ends when ``respond`` says done, at the
turn limit, or when the token budget (``max_tokens`` after the prompt, model and environment
tokens together) is spent; the last two set ``episode.truncated``. Environment tokens that do
not fit the budget are cut. ``respond``, ``start`` or ``score_episode`` raising (``InfraError``
or anything else) makes the episode's result ``infra_error``, never a silent 0.

A single-turn environment is one ``generate_ids`` call of the prompts with ``n`` samples each,
then ``score_episode`` (= ``score`` of the completion): exactly ``engine.generate`` followed by
``env.score_batch``. ``respond`` and ``score_episode`` are called from worker threads, several
at once for different episodes: environments must allow that (each episode has its own state).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple, cast

from verirl.envs.base import Environment, Prompt, Row
from verirl.envs.multiturn import Episode, InfraError, Message, Turn
from verirl.prompts import render_prompt
from verirl.rewards.result import RewardResult
from verirl.rollout.base import Completion, RolloutEngine, SamplingParams, end_token_ids
from verirl.rollout.turns import render_messages, uses_template

SEED_STRIDE = 1_000_003  # generation call k >= 1 samples with seed + k * stride (distinct streams)


class EpisodeBatch(NamedTuple):
    """``completions[i][j]``: trajectory j of row i; ``rewards[i][j]``: its score."""

    completions: list[list[Completion]]
    rewards: list[list[RewardResult]]

    @property
    def episodes(self) -> list[Episode]:
        """Every episode, row by row."""
        return [c.extra["episode"] for group in self.completions for c in group]


@dataclass
class _Trajectory:
    """One episode's tokens so far (after the prompt) and what the driver knows of it."""

    row: int
    sample: int
    episode: Episode
    prompt_ids: list[int]
    templated: bool
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)
    finish: str = "length"
    ended_with: int | None = None  # the end token the last model turn sampled, if any
    result: RewardResult | None = None
    key: object = field(default_factory=object)  # the engine's KV cache key of this trajectory

    def completion(self) -> Completion:
        return Completion(
            prompt_index=self.row,
            sample_index=self.sample,
            text="".join(self.parts),
            prompt_token_ids=self.prompt_ids,
            token_ids=self.ids,
            logprobs=self.logprobs,
            finish_reason=self.finish,
            extra={"episode": self.episode},
            mask=self.mask,
        )


def run_episodes(
    engine: RolloutEngine,
    env: Environment,
    rows: Sequence[Row],
    n: int,
    sampling: SamplingParams,
    tokenizer: Any,
    chat_template: str = "auto",
    max_turns: int | None = None,
    max_tokens: int | None = None,
    pool: ThreadPoolExecutor | None = None,
    batch_frac: float = 0.5,
) -> EpisodeBatch:
    """Run `n` episodes of every row of `env` to the end and score them (module docstring).

    `sampling.max_new_tokens` caps each model turn; `max_tokens` (default: that same number)
    caps all tokens after the prompt, so each turn gets at most what remains. `max_turns`
    lowers ``env.max_turns``. ``env.turn_stop`` is added to the stop strings. `pool` runs
    ``respond``/``score_episode`` (default: a pool of this call, one thread per episode up to
    32). Prompts are rendered by ``verirl.prompts.render_prompt`` with `chat_template`, as
    training and evals render them; the environment's messages follow the template exactly
    when the prompt did (``uses_template``).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0.0 < batch_frac <= 1.0:
        raise ValueError(f"batch_frac must be in (0, 1], got {batch_frac}")
    budget = sampling.max_new_tokens if max_tokens is None else max_tokens
    if budget < 1:
        raise ValueError(f"max_tokens must be >= 1, got {budget}")
    turn_limit = env.max_turns if max_turns is None else min(env.max_turns, max_turns)
    if turn_limit < 1:
        raise ValueError(f"max_turns must be >= 1, got {turn_limit}")
    if not rows:
        return EpisodeBatch([], [])
    sp = replace(sampling, stop=tuple(dict.fromkeys((*sampling.stop, *env.turn_stop))))
    end_ids = set(getattr(engine, "end_ids", None) or end_token_ids(tokenizer))
    prompts = [env.prompt(r) for r in rows]
    prompt_ids = [
        tokenizer(render_prompt(p, tokenizer, chat_template), add_special_tokens=False)["input_ids"]
        for p in prompts
    ]

    trajs = []
    for i, (row, prompt) in enumerate(zip(rows, prompts, strict=True)):
        for j in range(n):
            messages = _messages(prompt)
            traj = _Trajectory(i, j, Episode(row=row, messages=messages), prompt_ids[i],
                               uses_template(prompt, tokenizer, chat_template))  # fmt: skip
            trajs.append(traj)
    own_pool = pool is None
    workers = pool if pool is not None else ThreadPoolExecutor(min(32, max(1, len(trajs))))
    driver = _Driver(engine, env, tokenizer, sp, budget, turn_limit, end_ids, workers)
    try:
        driver.run(trajs, prompt_ids, n, batch_frac)
    finally:
        if own_pool:
            workers.shutdown(wait=True, cancel_futures=True)
    completions: list[list[Completion]] = [[] for _ in rows]
    rewards: list[list[RewardResult]] = [[] for _ in rows]
    for t in trajs:
        assert t.result is not None  # every episode was scored or failed
        completions[t.row].append(t.completion())
        rewards[t.row].append(t.result)
    return EpisodeBatch(completions, rewards)


class _Driver:
    """The state machine behind ``run_episodes``: generate, respond, append, score."""

    def __init__(
        self,
        engine: RolloutEngine,
        env: Environment,
        tokenizer: Any,
        sampling: SamplingParams,
        budget: int,
        turn_limit: int,
        end_ids: set[int],
        pool: ThreadPoolExecutor,
    ) -> None:
        self.engine, self.env, self.tokenizer, self.sampling = engine, env, tokenizer, sampling
        self.budget, self.turn_limit, self.end_ids, self.pool = budget, turn_limit, end_ids, pool
        self.calls = 0
        # hf: each trajectory's keys/values stay cached between its turns (``cache_keys``)
        self.keeps_kv = bool(getattr(engine, "keeps_kv", False))
        self.responding: dict[Future[Turn], _Trajectory] = {}
        self.scoring: list[tuple[Future[RewardResult], _Trajectory]] = []

    def run(
        self, trajs: list[_Trajectory], prompt_ids: list[list[int]], n: int, batch_frac: float
    ) -> None:
        try:
            self._run(trajs, prompt_ids, n, batch_frac)
        finally:  # the cached keys/values of every episode, ended or not
            self._release(trajs)

    def _run(
        self, trajs: list[_Trajectory], prompt_ids: list[list[int]], n: int, batch_frac: float
    ) -> None:
        for t in trajs:
            try:
                t.episode.state = self.env.start(t.episode.row)
            except Exception as e:  # the boundary: an env that cannot start is not the model's
                t.result = _infra(self.env, "start", e)
        # Turn 1: the prompts with n samples each, exactly as ``generate`` would run them.
        limits = None if self.budget >= self.sampling.max_new_tokens else [self.budget] * len(prompt_ids)  # fmt: skip
        first = self._generate(prompt_ids, n, limits, trajs)  # trajs: row-major, as generate
        for t in trajs:
            self._model_turn(t, first[t.row][t.sample])
        ready: list[_Trajectory] = []
        while ready or self.responding:
            waiting = len(self.responding)
            if ready and (
                not waiting or len(ready) >= math.ceil(batch_frac * (len(ready) + waiting))
            ):
                batch, ready = ready, []
                left = [self.budget - len(t.ids) for t in batch]
                groups = self._generate([t.prompt_ids + t.ids for t in batch], 1, left, batch)
                for t, group in zip(batch, groups, strict=True):
                    self._model_turn(t, group[0])
            elif self.responding:
                wait(list(self.responding), return_when=FIRST_COMPLETED)
            for fut in [f for f in self.responding if f.done()]:
                t = self.responding.pop(fut)
                if self._env_turn(t, fut):
                    ready.append(t)
        for fut, t in self.scoring:
            t.result = _guarded_result(self.env, "score_episode", fut)

    def _generate(
        self,
        prompt_ids: list[list[int]],
        n: int,
        limits: list[int] | None,
        trajs: list[_Trajectory],
    ) -> list[list[Completion]]:
        """One generation call; `trajs` are the trajectories of its completions in order."""
        sp = self.sampling
        if sp.seed is not None and self.calls:
            sp = replace(sp, seed=(sp.seed + SEED_STRIDE * self.calls) % 2**31)
        self.calls += 1
        if self.keeps_kv:
            keys = [t.key for t in trajs]
            engine = cast(Any, self.engine)
            return engine.generate_ids(prompt_ids, n, sp, max_new_tokens=limits, cache_keys=keys)  # type: ignore[no-any-return]
        return self.engine.generate_ids(prompt_ids, n, sp, max_new_tokens=limits)

    def _release(self, trajs: list[_Trajectory]) -> None:
        if self.keeps_kv:
            cast(Any, self.engine).release([t.key for t in trajs])

    def _model_turn(self, t: _Trajectory, c: Completion) -> None:
        """Append the model's turn; then ask the environment, or end the episode."""
        ep = t.episode
        ep.messages.append({"role": "assistant", "content": c.text})
        ep.turns += 1
        t.ids += c.token_ids
        t.logprobs += c.logprobs
        t.mask += [1] * len(c.token_ids)
        t.parts.append(c.text)
        t.finish = c.finish_reason
        last = c.token_ids[-1] if c.token_ids else None
        t.ended_with = last if c.finish_reason == "stop" and last in self.end_ids else None
        if t.result is not None:  # start failed: the turn is kept for the record only
            return self._end(t, score=False)
        if c.finish_reason == "length" and len(t.ids) >= self.budget:
            ep.truncated = True  # the budget ran out mid-turn: nothing to respond to
            return self._end(t)
        self.responding[self.pool.submit(self.env.respond, ep, c.text)] = t

    def _env_turn(self, t: _Trajectory, fut: Future[Turn]) -> bool:
        """Apply the environment's answer; True when the episode goes on to another turn."""
        ep = t.episode
        try:
            turn = fut.result()
        except Exception as e:  # InfraError (sandbox down) or a crash: not the model's fault
            t.result = _infra(self.env, "respond", e)
            self._end(t, score=False)
            return False
        ep.messages.extend(turn.messages)
        ep.tool_calls += turn.tool_calls
        ep.tool_errors += turn.tool_errors
        if turn.done:
            self._end(t)
            return False
        if ep.turns >= self.turn_limit:
            ep.truncated = True  # its messages are recorded, never shown to the model
            self._end(t)
            return False
        ids, text = render_messages(turn.messages, self.tokenizer, t.templated, t.ended_with)
        room = self.budget - len(t.ids)
        if len(ids) + 1 > room:  # no token left for the model after them: cut, and stop here
            ids = ids[:room]
            text = self.tokenizer.decode(ids, skip_special_tokens=False)
            ep.truncated, t.finish = True, "length"
        t.ids += ids
        t.logprobs += [0.0] * len(ids)
        t.mask += [0] * len(ids)
        t.parts.append(text)
        if ep.truncated:
            self._end(t)
            return False
        return True

    def _end(self, t: _Trajectory, score: bool = True) -> None:
        t.episode.done = True
        self._release([t])  # it generates no more: its cached keys/values go now
        if score:  # scored in the pool too, while other episodes still generate
            self.scoring.append((self.pool.submit(self.env.score_episode, t.episode), t))


def episode_metrics(episodes: Sequence[Episode]) -> dict[str, float]:
    """Means over a batch of finished episodes, for the trainer's and evals' metrics.

    >>> episode_metrics([Episode(row={}, turns=3, tool_calls=2, tool_errors=1, truncated=True),
    ...                  Episode(row={}, turns=1)])
    {'turns_mean': 2.0, 'tool_calls_mean': 1.0, 'tool_errors_mean': 0.5, 'truncated_frac': 0.5}
    """
    k = max(1, len(episodes))
    return {
        "turns_mean": sum(e.turns for e in episodes) / k,
        "tool_calls_mean": sum(e.tool_calls for e in episodes) / k,
        "tool_errors_mean": sum(e.tool_errors for e in episodes) / k,
        "truncated_frac": sum(e.truncated for e in episodes) / k,
    }


def _messages(prompt: Prompt) -> list[Message]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [dict(m) for m in prompt]


def _infra(env: Environment, where: str, e: BaseException) -> RewardResult:
    kind = "infrastructure error" if isinstance(e, InfraError) else "crashed"
    return RewardResult.infra(f"{env.name}: {where} {kind}: {type(e).__name__}: {e}")


def _guarded_result(env: Environment, where: str, fut: Future[RewardResult]) -> RewardResult:
    try:
        return fut.result()
    except Exception as e:  # the boundary: report, never swallow into 0
        return _infra(env, where, e)
