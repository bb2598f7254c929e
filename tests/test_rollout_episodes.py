"""The multi-turn driver on the hf engine (one vLLM-CPU test at the end): the trajectory is the
engine's own tokens plus rendered environment tokens, logprobs equal a teacher-forced forward,
budgets and turn limits truncate, failures are infra_error, and slow tool calls overlap with
other episodes' generation. A single-turn env gives exactly ``generate`` + ``score_batch``."""

from __future__ import annotations

import doctest
import threading
from collections.abc import Sequence
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from verirl.envs.arithmetic import ArithmeticEnv
from verirl.envs.base import Environment, Row
from verirl.envs.multiturn import Episode, InfraError, Turn
from verirl.rewards.result import RewardResult

from verirl.prompts import render_prompt
from verirl.rollout import episodes as episodes_module
from verirl.rollout.base import RolloutEngine, SamplingParams
from verirl.rollout.episodes import episode_metrics, run_episodes
from verirl.rollout.hf import HFRolloutEngine
from verirl.rollout.turns import plain_text


class ScriptedEnv(Environment):
    """Answers every model turn with a tool message ``r<turn>``; a row's fields script the rest:
    ``done_after`` (end after that many turns), ``fail`` ("infra" | "crash" | "score"),
    ``gate`` (respond waits for the test's event), ``barrier`` (respond waits until all
    episodes with one are responding at once)."""

    name = "test-scripted"
    max_turns = 4
    fields = ("prompt",)

    def __init__(self, rows: Sequence[Row]) -> None:
        self._rows = list(rows)
        self.gate = threading.Event()
        self.barrier: threading.Barrier | None = None
        self.finished: set[str] = set()  # rows whose respond has returned at least once
        self.responds = 0
        self.lock = threading.Lock()

    def rows(self, split: str = "train") -> Sequence[Row]:
        return self._rows

    def prompt(self, row: Row) -> str:
        return str(row["prompt"])

    def score(self, completion: str, row: Row) -> RewardResult:
        return RewardResult(1.0 if completion else 0.0, "correct" if completion else "incorrect")

    def respond(self, episode: Episode, text: str) -> Turn:
        row = episode.row
        with self.lock:
            self.responds += 1
        try:
            assert episode.messages[-1] == {"role": "assistant", "content": text}
            if row.get("fail") == "infra":
                raise InfraError("sandbox is down")
            if row.get("fail") == "crash":
                raise RuntimeError("env bug")
            if row.get("gate"):
                episode.state["gate_opened"] = self.gate.wait(timeout=30)
            if row.get("barrier"):
                assert self.barrier is not None
                self.barrier.wait()  # BrokenBarrierError (-> infra_error) unless concurrent
            if episode.turns >= row.get("done_after", 99):
                return Turn(done=True)
            msg = {"role": "tool", "content": f"r{episode.turns}"}
            return Turn([msg], tool_calls=1, tool_errors=int(episode.turns == 2))
        finally:
            with self.lock:
                self.finished.add(row["prompt"])

    def score_episode(self, episode: Episode) -> RewardResult:
        if episode.row.get("fail") == "score":
            raise ValueError("checker bug")
        return super().score_episode(episode)


class Recorder(RolloutEngine):
    """Wraps an engine and keeps every generate_ids call (inputs and completions)."""

    def __init__(self, inner: Any, on_call: Any = None) -> None:
        self.inner, self.on_call, self.end_ids = inner, on_call, inner.end_ids
        self.calls: list[tuple[list[list[int]], list[Any]]] = []

    def generate(self, prompts: list[str], n: int, sampling: SamplingParams) -> Any:
        return self.inner.generate(prompts, n, sampling)

    def generate_ids(self, prompt_ids, n, sampling, max_new_tokens=None):  # type: ignore[no-untyped-def]
        if self.on_call is not None:
            self.on_call(len(self.calls), prompt_ids)
        out = self.inner.generate_ids(prompt_ids, n, sampling, max_new_tokens)
        self.calls.append((prompt_ids, out))
        return out

    def update_weights(self, model: Any) -> float:
        return 0.0


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def runs(mask: list[int]) -> list[tuple[int, int, int]]:
    """(value, start, end) of each run of equal values."""
    out: list[tuple[int, int, int]] = []
    for i, m in enumerate(mask):
        if out and out[-1][0] == m:
            out[-1] = (m, out[-1][1], i + 1)
        else:
            out.append((m, i, i + 1))
    return out


def test_doctests():
    assert doctest.testmod(episodes_module).failed == 0


def test_single_turn_env_is_exactly_generate_plus_score_batch(policy):
    model, tok = policy
    env = ArithmeticEnv()
    rows = list(env.rows("train")[:3])
    sp = SamplingParams(max_new_tokens=8, temperature=1.0, seed=3)
    engine = HFRolloutEngine(model, tok)
    ref = engine.generate([render_prompt(env.prompt(r), tok, "auto") for r in rows], 4, sp)
    ref_scores = env.score_batch([c.text for g in ref for c in g], [r for r in rows for _ in range(4)])  # fmt: skip
    got = run_episodes(engine, env, rows, 4, sp, tok, "auto")
    assert len(got.completions) == 3 and all(len(g) == 4 for g in got.completions)
    for g_ref, g_got in zip(ref, got.completions, strict=True):
        for a, b in zip(g_ref, g_got, strict=True):
            assert (b.prompt_index, b.sample_index, b.prompt_token_ids) == (a.prompt_index, a.sample_index, a.prompt_token_ids)  # fmt: skip
            assert (b.token_ids, b.logprobs, b.text, b.finish_reason) == (a.token_ids, a.logprobs, a.text, a.finish_reason)  # fmt: skip
            assert b.mask == [1] * len(a.token_ids)
            ep = b.extra["episode"]
            assert ep.turns == 1 and ep.truncated == (a.finish_reason == "length")
    assert [(r.reward, r.status) for g in got.rewards for r in g] == [(r.reward, r.status) for r in ref_scores]  # fmt: skip


def test_trajectory_is_the_engines_tokens_plus_rendered_env_tokens(policy):
    """Every model run of the mask is exactly one completion the engine returned for exactly
    the trajectory so far (no decode/re-encode anywhere); env runs are the rendered messages;
    logprobs equal a teacher-forced forward log softmax(z/T) over the whole trajectory."""
    model, tok = policy
    rows = [{"prompt": "a:", "done_after": 1}, {"prompt": "bb:", "done_after": 2},
            {"prompt": "c:", "done_after": 3}, {"prompt": "dd:"}]  # fmt: skip
    env = ScriptedEnv(rows)
    temperature = 0.7
    sp = SamplingParams(max_new_tokens=6, temperature=temperature, seed=1)
    engine = Recorder(HFRolloutEngine(model, tok))
    got = run_episodes(engine, env, rows, 2, sp, tok, max_turns=3, max_tokens=200)
    sampled = [(p, c) for ps, out in engine.calls for p, g in zip(ps, out, strict=True) for c in g]
    for i, group in enumerate(got.completions):
        for c in group:
            ep = c.extra["episode"]
            assert len(c.token_ids) == len(c.logprobs) == len(c.mask)
            full = c.prompt_token_ids + c.token_ids
            model_runs = [r for r in runs(c.mask) if r[0] == 1]
            env_runs = [r for r in runs(c.mask) if r[0] == 0]
            assert len(model_runs) == ep.turns == min(rows[i].get("done_after", 3), 3)
            assert len(env_runs) == ep.turns - 1  # the last message is never shown
            texts = []
            for _, s, e in model_runs:
                prefix = full[: len(c.prompt_token_ids) + s]
                match = [x for p, x in sampled if p == prefix and x.token_ids == c.token_ids[s:e]]
                assert match, "a model turn that the engine did not sample for this prefix"
                assert c.logprobs[s:e] == match[0].logprobs
                texts.append(match[0].text)
            for k, (_, s, e) in enumerate(env_runs, 1):
                text = plain_text([{"role": "tool", "content": f"r{k}"}])
                assert c.token_ids[s:e] == tok(text, add_special_tokens=False)["input_ids"]
                assert set(c.logprobs[s:e]) == {0.0}
            assert ep.model_turns == texts
            roles = [m["role"] for m in ep.messages]
            tail = ["tool"] if ep.truncated else []  # recorded after the last turn, not shown
            assert roles == ["user", *["assistant", "tool"] * (ep.turns - 1), "assistant", *tail]
            assert ep.truncated == ("done_after" not in rows[i])  # the turn limit (3)
            assert ep.tool_calls == sum(m["role"] == "tool" for m in ep.messages)
            assert ep.tool_errors == int(ep.tool_calls >= 2)  # the answer to turn 2 is one
            # The core claim: the engine's logprobs are the policy's at every model token.
            with torch.no_grad():
                z = model(torch.tensor([full])).logits[0, len(c.prompt_token_ids) - 1 : -1]
            ref = torch.log_softmax(z.float() / temperature, -1)
            ref = ref.gather(-1, torch.tensor(c.token_ids)[:, None])[:, 0]
            m = torch.tensor(c.mask, dtype=torch.bool)
            assert float((ref[m] - torch.tensor(c.logprobs)[m]).abs().max()) <= 1e-5
    metrics = episode_metrics(got.episodes)
    assert metrics["truncated_frac"] == 0.25 and metrics["turns_mean"] == (1 + 2 + 3 + 3) / 4


def test_token_budget_cuts_env_tokens_and_turns(policy):
    model, tok = policy
    env = ScriptedEnv([{"prompt": "a:"}, {"prompt": "b:"}])
    engine = HFRolloutEngine(model, tok)
    # 10 tokens in all, 6 per turn: the 23-token tool message after the first turn is cut.
    got = run_episodes(engine, env, env.rows(), 3, SamplingParams(6, seed=0), tok, max_tokens=10)
    for c in (c for g in got.completions for c in g):
        ep = c.extra["episode"]
        assert len(c.token_ids) == 10 and ep.truncated and c.finish_reason == "length"
        k = sum(c.mask)  # the first turn's tokens, then the cut message's
        assert ep.turns == 1 and k <= 6 and c.mask == [1] * k + [0] * (10 - k)
        assert set(c.logprobs[k:]) == {0.0}
    assert env.responds == 6
    # 4 tokens in all: the first turn runs out mid-way; nothing is sent to the environment.
    env = ScriptedEnv([{"prompt": "a:"}])
    got = run_episodes(engine, env, env.rows(), 2, SamplingParams(6, seed=0), tok, max_tokens=4)
    assert env.responds == 0
    assert all(len(c.token_ids) == 4 and c.mask == [1] * 4 for c in got.completions[0])
    assert all(e.truncated for e in got.episodes)


def test_turn_limit_argument_lowers_the_envs(policy):
    model, tok = policy
    env = ScriptedEnv([{"prompt": "a:"}])
    got = run_episodes(HFRolloutEngine(model, tok), env, env.rows(), 2, SamplingParams(4, seed=0),
                       tok, max_turns=2, max_tokens=100)  # fmt: skip
    for c in got.completions[0]:
        ep = c.extra["episode"]
        assert ep.turns == 2 and ep.truncated
        assert c.mask[-1] == 1  # the message after the last allowed turn is not appended
        assert ep.messages[-1] == {"role": "tool", "content": "r2"}  # but it is recorded
    assert all(r.status in ("correct", "incorrect") for r in got.rewards[0])
    assert run_episodes(HFRolloutEngine(model, tok), env, [], 2, SamplingParams(4), tok) == ([], [])


def test_respond_and_score_failures_are_infra_errors(policy):
    model, tok = policy
    rows = [{"prompt": "a:", "fail": "infra"}, {"prompt": "b:", "fail": "crash"},
            {"prompt": "c:", "fail": "score", "done_after": 2}, {"prompt": "d:", "done_after": 2}]  # fmt: skip
    env = ScriptedEnv(rows)
    got = run_episodes(HFRolloutEngine(model, tok), env, rows, 2, SamplingParams(4, seed=0), tok,
                       max_tokens=100)  # fmt: skip
    details = [[r.detail for r in g] for g in got.rewards]
    assert [[r.status for r in g] for g in got.rewards][:3] == [["infra_error"] * 2] * 3
    assert all("respond infrastructure error: InfraError: sandbox is down" in d for d in details[0])
    assert all("respond crashed: RuntimeError: env bug" in d for d in details[1])
    assert all("score_episode crashed: ValueError: checker bug" in d for d in details[2])
    assert all(r.status in ("correct", "incorrect") for r in got.rewards[3])
    assert [e.turns for e in got.episodes] == [1, 1, 1, 1, 2, 2, 2, 2]


def test_slow_tool_calls_overlap_with_other_episodes_generation(policy):
    """The slow episode's respond blocks until the second generation call has started: that
    call must hold only the fast episode (generated while the slow tool call is running); a
    driver that waited for every response would deadlock here until the gate's timeout."""
    model, tok = policy
    rows = [{"prompt": "slow:", "gate": True, "done_after": 2}, {"prompt": "fast:", "done_after": 3}]  # fmt: skip
    env = ScriptedEnv(rows)
    seen: list[tuple[int, set[str]]] = []

    def on_call(k: int, prompt_ids: list[list[int]]) -> None:
        seen.append((len(prompt_ids), set(env.finished)))
        if k == 1:
            env.gate.set()

    engine = Recorder(HFRolloutEngine(model, tok), on_call)
    got = run_episodes(engine, env, rows, 1, SamplingParams(4, seed=0), tok, max_tokens=100)
    assert seen[0] == (2, set())
    assert seen[1] == (1, {"fast:"})  # the fast episode alone, the slow tool call unfinished
    fast = engine.calls[1][0][0]
    assert fast[: len(tok("fast:")["input_ids"])] == tok("fast:")["input_ids"]
    assert got.episodes[0].state["gate_opened"] and [e.turns for e in got.episodes] == [2, 3]
    assert all(r.status in ("correct", "incorrect") for g in got.rewards for r in g)


def test_tool_calls_of_different_episodes_run_concurrently(policy):
    model, tok = policy
    rows = [{"prompt": f"{i}:", "barrier": True, "done_after": 1} for i in range(3)]
    env = ScriptedEnv(rows)
    env.barrier = threading.Barrier(3, timeout=30)  # broken (-> infra_error) unless concurrent
    got = run_episodes(HFRolloutEngine(model, tok), env, rows, 1, SamplingParams(4, seed=0), tok)
    assert all(r.status in ("correct", "incorrect") for g in got.rewards for r in g)


def _find_stop(tok, out):
    """(sample j, k, tokens up to k, their text) for a sample whose first k+1 tokens decode to
    printable ASCII with the k-th character new (a random byte model emits arbitrary bytes)."""
    for j, c in enumerate(out):
        for k in (2, 1):
            head = tok.decode(c.token_ids[: k + 1])
            if len(c.token_ids) > k + 1 and head.isascii() and head.isprintable() and head[k] not in head[:k]:  # fmt: skip
                return j, k, c.token_ids[: k + 1], head
    raise AssertionError("no sample starts with printable ASCII")


@pytest.mark.parametrize("lean", [None, False], ids=["lean", "transformers"])
def test_hf_generate_ids_continues_and_stops_at_stop_strings(policy, lean):
    model, tok = policy
    engine = HFRolloutEngine(model, tok, lean=lean)
    sp = SamplingParams(max_new_tokens=8, temperature=1.0, seed=5)
    prompt = tok("7*8=", add_special_tokens=False)["input_ids"]
    by_text = engine.generate(["7*8="], 16, sp)[0]
    by_ids = engine.generate_ids([prompt], 16, sp)[0]
    assert [c.token_ids for c in by_ids] == [c.token_ids for c in by_text]
    j, k, ids, head = _find_stop(tok, by_ids)
    for stop in (head[k], head[k - 1 :]):  # one character, and two spanning a token boundary
        cut = engine.generate_ids([prompt], 16, SamplingParams(8, 1.0, stop=("zz", stop), seed=5))[
            0
        ]
        assert (cut[j].token_ids, cut[j].text, cut[j].finish_reason) == (ids, head, "stop")
        assert cut[j].logprobs == by_ids[j].logprobs[: k + 1]
    # Per-prompt limits on top of max_new_tokens.
    out = engine.generate_ids([prompt, prompt], 1, sp, max_new_tokens=[2, 50])
    assert len(out[0][0].token_ids) <= 2 and len(out[1][0].token_ids) <= 8


@pytest.mark.vllm
def test_vllm_generate_ids_continues_a_trajectory(policy, tiny_model_dir):
    """One vLLM-CPU engine: the driver on vLLM keeps its tokens exactly, continuing trajectories
    from token prompts, with logprobs equal to the policy's (float32, 1e-4 as test_vllm)."""
    from verirl.rollout.vllm import VLLMRolloutEngine

    model, tok = policy
    vllm = VLLMRolloutEngine(tiny_model_dir, kv_cache_gib=0.0625, max_num_seqs=32)
    try:
        vllm.update_weights(model)
        rows = [{"prompt": "a:", "done_after": 2}, {"prompt": "bb:"}]
        env = ScriptedEnv(rows)
        engine = Recorder(vllm)
        got = run_episodes(engine, env, rows, 2, SamplingParams(5, 1.0, seed=2), tok,
                           max_turns=3, max_tokens=200, batch_frac=1.0)  # fmt: skip
        sampled = [(p, c) for ps, out in engine.calls for p, g in zip(ps, out, strict=True) for c in g]  # fmt: skip
        for c in (c for g in got.completions for c in g):
            full = c.prompt_token_ids + c.token_ids
            for _, s, e in (r for r in runs(c.mask) if r[0] == 1):
                prefix = full[: len(c.prompt_token_ids) + s]
                assert any(p == prefix and x.token_ids == c.token_ids[s:e] for p, x in sampled)
            with torch.no_grad():
                z = model(torch.tensor([full])).logits[0, len(c.prompt_token_ids) - 1 : -1]
            ref = torch.log_softmax(z.float(), -1).gather(-1, torch.tensor(c.token_ids)[:, None])[:, 0]  # fmt: skip
            m = torch.tensor(c.mask, dtype=torch.bool)
            assert float((ref[m] - torch.tensor(c.logprobs)[m]).abs().max()) <= 1e-4
        assert [e.turns for e in got.episodes] == [2, 2, 3, 3]
        # Greedy continuation of a trajectory from ids equals the hf engine's; limits per prompt.
        traj = got.completions[1][0]
        ids = traj.prompt_token_ids + traj.token_ids[: len(traj.token_ids) // 2]
        greedy = SamplingParams(6, temperature=0.0)
        v = vllm.generate_ids([ids, ids], 1, greedy, max_new_tokens=[6, 2])
        h = HFRolloutEngine(model, tok).generate_ids([ids, ids], 1, greedy, max_new_tokens=[6, 2])
        assert [g[0].token_ids for g in v] == [g[0].token_ids for g in h]
        assert len(v[1][0].token_ids) <= 2
    finally:
        vllm.close()


def test_stop_strings_match_across_tokens_and_split_characters(policy):
    """The hf engine's stop-string check on byte tokens: a stop ending in a two-byte character
    completes only at its second byte (each byte alone decodes to U+FFFD: still a candidate)."""
    from verirl.rollout.hf import _StopStrings

    _, tok = policy
    seqs = ["xaé!", "xa</p>", "xa\u00e8!!"]  # the last one never matches
    rows = [tok(s, add_special_tokens=False)["input_ids"] for s in seqs]
    width = max(len(r) for r in rows)
    toks = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
    stops = _StopStrings(tok, ("aé", "</p>"), {})
    for t in range(width):
        stops.check(toks, t, torch.tensor([t < len(r) and i not in stops.at for i, r in enumerate(rows)]), len(tok))  # fmt: skip
    assert stops.at == {0: 4, 1: 6}  # "x", "a", 0xC3, 0xA9; "x", "a", "<", "/", "p", ">"
    assert stops.cut("xaé!") == "xaé" and stops.cut("nothing") == "nothing"
