"""Training on multi-turn trajectories: only the model's tokens are in the loss.

A trajectory is the prompt, then model tokens and environment tokens (tool output) in turn;
``Completion.mask`` is 1 at the model's. These tests check the trainer's side of the contract:
the loss mask, GAE over the model's tokens only, exactly zero gradient at the environment's
tokens, logprobs equal to the engine's, and GRPO/PPO end to end on a scripted tool env.
"""

from __future__ import annotations

import json
import math
from contextlib import nullcontext

import pytest
import torch
import vr_train_envs
from transformers import AutoModelForCausalLM
from verirl.envs.base import Environment
from verirl.envs.multiturn import Episode, Turn
from verirl.envs.registry import register_env
from verirl.rewards.result import RewardResult

from verirl.algos import gae_advantages, policy_objective
from verirl.config import validate_config
from verirl.errors import ConfigError
from verirl.rollout import SamplingParams, make_engine
from verirl.rollout.base import Completion
from verirl.rollout.episodes import run_episodes
from verirl.train import update
from verirl.train.batch import Rollout, rollout_logprobs, to_batch
from verirl.train.config import AlgoSection, TrainConfig
from verirl.train.loop import train
from verirl.train.metrics import read_metrics
from verirl.train.phases import _metric_counts
from verirl.train.scoring import episode_stats, with_advantages
from verirl.train.update import objective_config, policy_update

# Two trajectories of one prompt: model [10, 11], env [20, 21, 22], model [12, 13]; and a
# shorter one, model [30], env [40], model [31, 32].
PROMPT = [1, 2, 3]
TRAJ = [
    ([10, 11, 20, 21, 22, 12, 13], [1, 1, 0, 0, 0, 1, 1]),
    ([30, 40, 31, 32], [1, 0, 1, 1]),
]


def _completion(i: int, tokens: list[int], mask: list[int]) -> Completion:
    lps = [-0.5 - 0.1 * t if m else 0.0 for t, m in enumerate(mask)]
    return Completion(0, i, "", PROMPT, tokens, lps, "stop", mask=mask)


def _groups(traj=TRAJ) -> list[list[Completion]]:
    return [[_completion(i, t, m) for i, (t, m) in enumerate(traj)]]


def test_the_loss_mask_is_the_model_tokens_and_logprobs_keep_the_targets_layout():
    groups = _groups()
    batch = to_batch(groups, pad=0, device="cpu")
    # target t is token t+1: the completion starts at column len(PROMPT) - 1 = 2
    assert batch.mask.tolist() == [
        [0, 0, 1, 1, 0, 0, 0, 1, 1],
        [0, 0, 1, 0, 1, 1, 0, 0, 0],
    ]
    lp = rollout_logprobs(groups, batch)
    assert lp[0, 2:].tolist() == pytest.approx([-0.5, -0.6, 0, 0, 0, -1.0, -1.1])
    assert lp[1, 2:6].tolist() == pytest.approx([-0.5, 0.0, -0.7, -0.8])
    # single-turn completions (mask None) are all the model's, as before
    plain = to_batch([[Completion(0, 0, "", PROMPT, [7, 8], [-1.0, -1.0], "stop")]], 0, "cpu")
    assert plain.mask.tolist() == [[0, 0, 1, 1]]
    groups[0][1].mask = [1, 0]
    with pytest.raises(ValueError, match="completion 1: a mask of 2 for 4 tokens"):
        to_batch(groups, pad=0, device="cpu")


def test_gae_on_trajectories_with_gaps_by_hand():
    # γ = 1, λ = .5; row 0 steps at columns 1, 2, 5 (V .5 .6 .7, reward 1 on the last):
    #   δ = (.6 − .5, .7 − .6, 1 − .7) = (.1, .1, .3)
    #   A5 = .3, A2 = .1 + .5·.3 = .25, A1 = .1 + .5·.25 = .225
    # row 1 steps at columns 0, 2 (V .2 .4, reward 2): A2 = 2 − .4 = 1.6, A0 = .2 + .5·1.6 = 1
    # Columns outside the mask (prompt, tool output, padding) carry junk that must not leak.
    mask = torch.tensor([[0, 1, 1, 0, 0, 1, 0], [1, 0, 1, 0, 0, 0, 0]])
    nan = float("nan")
    v = torch.tensor([[9, 0.5, 0.6, 9, nan, 0.7, 9], [0.2, 9, 0.4, nan, 9, 9, 9]])
    r = torch.tensor([[5, 0, 0, 5, 5, 1, 5], [0, 5, 2, 5, 5, 5, 5.0]])
    adv, ret = gae_advantages(r, v, mask, gamma=1.0, gae_lambda=0.5)
    want = torch.tensor([[0, 0.225, 0.25, 0, 0, 0.3, 0], [1.0, 0, 1.6, 0, 0, 0, 0]])
    torch.testing.assert_close(adv, want)
    torch.testing.assert_close(ret, want + torch.where(mask > 0, v, 0.0))


def _reference_gae(r, v, mask, gamma, lam):
    """Per row, in plain Python: the masked positions as the episode's steps."""
    adv = torch.zeros_like(v)
    for b in range(v.shape[0]):
        steps = [t for t in range(v.shape[1]) if mask[b, t] > 0]
        running, next_v = 0.0, 0.0
        for t in reversed(steps):
            running = float(r[b, t]) + gamma * next_v - float(v[b, t]) + gamma * lam * running
            next_v = float(v[b, t])
            adv[b, t] = running
    return adv


def test_gae_equals_the_per_row_recursion_on_random_gaps():
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(6, 20, generator=g) > 0.4).long()
    mask[2] = 0  # a row with no step at all
    r, v = torch.randn(6, 20, generator=g), torch.randn(6, 20, generator=g)
    adv, ret = gae_advantages(r, v, mask, gamma=0.9, gae_lambda=0.7)
    ref = _reference_gae(r, v, mask, 0.9, 0.7)
    torch.testing.assert_close(adv, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ret, (ref + v) * mask, rtol=1e-5, atol=1e-6)


def test_ppo_advantages_and_returns_are_zero_at_environment_tokens():
    groups = _groups()
    batch = to_batch(groups, pad=0, device="cpu")
    algo = AlgoSection(name="ppo", batch_size=2, group_size=1)
    values = torch.randn(batch.mask.shape, generator=torch.Generator().manual_seed(1))
    ro = Rollout(batch, torch.tensor([[1.0], [0.0]]), torch.ones(2, 1), old_values=values)
    out = with_advantages(ro, algo, 16)
    env = (batch.mask == 0) & (torch.arange(9) >= 2)  # completion columns that are the env's
    env[1, 6:] = False  # row 1's padding
    assert env.sum() == 4
    assert out.adv is not None and out.returns is not None
    assert (out.adv[env] == 0).all() and (out.returns[env] == 0).all()
    assert (out.adv[batch.mask > 0] != 0).all()


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)


def _rollout(groups, rewards, **extra) -> Rollout:
    batch = to_batch(groups, pad=0, device="cpu")
    ro = Rollout(batch, torch.tensor([rewards]), torch.ones(1, len(rewards)), **extra)
    return ro


def _captured_logprobs(monkeypatch) -> list[torch.Tensor]:
    """Make the update keep each micro-step's log π_θ [B, T'] with its gradient."""
    seen: list[torch.Tensor] = []
    real = update.forward_logprobs

    def keep(*args, **kwargs):
        lp, ent, h = real(*args, **kwargs)
        lp.retain_grad()
        seen.append(lp)
        return lp, ent, h

    monkeypatch.setattr(update, "forward_logprobs", keep)
    return seen


@pytest.mark.parametrize("loss", ["ppo_clip", "gspo", "cispo"])
def test_gradients_at_environment_tokens_are_exactly_zero(tiny, monkeypatch, loss):
    """The objective's gradient w.r.t. log π at every environment position is 0.0 exactly,
    with the KL in the loss and the TIS weight on, while every model token gets one."""
    groups = _groups()
    g = torch.Generator().manual_seed(2)
    shape = to_batch(groups, 0, "cpu").mask.shape
    ref = -torch.rand(shape, generator=g) - 1
    algo = AlgoSection(batch_size=2, group_size=2, beta=0.1, tis_cap=2.0, policy_loss=loss)
    ro = _rollout(groups, [1.0, 0.0], ref_logp=ref)
    ro.rollout_logp = rollout_logprobs(groups, ro.batch)
    ro = with_advantages(ro, algo, 16)
    seen = _captured_logprobs(monkeypatch)
    tokens = float(ro.batch.mask.sum())
    policy_update(tiny, ro, algo, 2, 16, None, (tokens, 2.0), lambda _: nullcontext(),
                  forward="transformers")  # fmt: skip
    (lp,) = seen
    first = ro.batch.first_target()
    mask = ro.batch.mask[:, first:]
    env = (mask == 0) & (ro.batch.attention_mask[:, first + 1 :] > 0)
    assert env.sum() == 4
    assert lp.grad is not None
    assert (lp.grad[env] == 0).all()
    assert (lp.grad[mask > 0] != 0).all()
    tiny.zero_grad(set_to_none=True)


def test_the_objective_ignores_logprobs_at_environment_tokens():
    groups = _groups()
    batch = to_batch(groups, pad=0, device="cpu")
    algo = AlgoSection(batch_size=2, group_size=2, beta=0.1, tis_cap=2.0)
    g = torch.Generator().manual_seed(3)
    ro = _rollout(groups, [1.0, 0.0], ref_logp=-torch.rand(batch.mask.shape, generator=g))
    ro = with_advantages(ro, algo, 16)
    assert ro.adv is not None and ro.ref_logp is not None
    logp = -torch.rand(batch.mask.shape, generator=g)
    noise = torch.randn(batch.mask.shape, generator=g) * 5 * (batch.mask == 0)
    cfg = objective_config(algo, 16)
    kwargs = dict(num_tokens=float(batch.mask.sum()), num_seqs=2.0, ref_logp=ro.ref_logp,
                  rollout_logp=rollout_logprobs(groups, batch))  # fmt: skip
    a, ma = policy_objective(logp, None, ro.adv, ro.batch.mask, cfg, **kwargs)
    b, mb = policy_objective(logp + noise, None, ro.adv, ro.batch.mask, cfg, **kwargs)
    assert torch.equal(a, b) and ma == mb


def test_environment_tokens_after_the_last_model_turn_do_not_move_the_loss(tiny):
    """A trajectory cut by the budget inside a tool message ends with environment tokens:
    what they say reaches no model token, so the loss is the same to the last bit."""
    algo = AlgoSection(batch_size=2, group_size=2)

    def loss_with(tail: list[int]) -> float:
        traj = [([10, 11, 20, 12, *tail], [1, 1, 0, 1, 0, 0]), ([30, 31, 32, 33, 34, 35], [1] * 6)]
        ro = with_advantages(_rollout(_groups(traj), [1.0, 0.0]), algo, 16)
        tokens = float(ro.batch.mask.sum())
        out = policy_update(tiny, ro, algo, 2, 16, None, (tokens, 2.0), lambda _: nullcontext(),
                            forward="transformers")  # fmt: skip
        tiny.zero_grad(set_to_none=True)
        return out["loss"]

    assert loss_with([40, 41]) == loss_with([99, 7])


# ---- end to end, on a scripted tool env (pure Python, no sandbox) ---------------------------


@register_env
class ScriptedToolEnv(Environment):
    """Every model turn is answered with the same tool message until the model has taken
    three turns (or sends a turn with an even number of characters after the first); the
    reward is the ASCII share of the model's turns (dense, like ``test-ascii-fraction``)."""

    name = "test-scripted-tool"
    description = "test only: a fixed tool answer each turn; reward = ASCII share of the turns"
    fields = ("prompt",)
    max_turns = 3
    protocol = "model turn -> tool message 'ok' -> model turn ...; ends after 3 turns"

    def rows(self, split: str = "train") -> list[dict]:
        return [{"prompt": f"{i}:"} for i in range(16)]

    def prompt(self, row: dict) -> str:
        return str(row["prompt"])

    def score(self, completion: str, row: dict) -> RewardResult:
        if not completion:
            return RewardResult(0.0, "format_error", detail="empty")
        frac = sum(ch.isascii() for ch in completion) / len(completion)
        return RewardResult(frac, "correct" if frac > 0.9 else "incorrect", {"ascii": frac})

    def respond(self, episode: Episode, text: str) -> Turn:
        if episode.turns > 1 and len(text) % 2 == 0:
            return Turn(done=True)
        return Turn([{"role": "tool", "content": "ok"}], tool_calls=1, tool_errors=int("!" in text))

    def score_episode(self, episode: Episode) -> RewardResult:
        return self.score("".join(episode.model_turns), episode.row)


def _episodes(tiny_model_dir, model, lean: bool):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    engine = make_engine("hf", model=model, tokenizer=tok, lean=lean)
    env = ScriptedToolEnv()
    torch.manual_seed(4)
    out = run_episodes(engine, env, env.rows()[:2], 2, SamplingParams(max_new_tokens=6), tok,
                       max_tokens=24)  # fmt: skip
    return out.completions


@pytest.mark.parametrize("forward", ["transformers", "lean"])
def test_old_and_new_logprobs_at_policy_tokens_equal_the_engines(
    tiny, tiny_model_dir, monkeypatch, forward
):
    """hf engine, float32: π_old recomputed by the trainer equals the engine's logprobs at
    every model token of real trajectories, and the first epoch's PPO ratio there is 1."""
    groups = _episodes(tiny_model_dir, tiny, lean=forward == "lean")
    assert any(0 in c.mask for g in groups for c in g)  # the env did answer
    batch = to_batch(groups, pad=0, device="cpu")
    model = batch.mask > 0
    engine = rollout_logprobs(groups, batch)
    old, _ = update.sequence_logprobs(tiny, batch, 2, None, 1.0, forward)
    torch.testing.assert_close(old[model], engine[model], rtol=0, atol=1e-5)
    algo = AlgoSection(batch_size=4, group_size=2, epochs=2)
    ro = with_advantages(_rollout(groups, [1.0, 0.0, 0.5, 0.25], old_logp=old), algo, 24)
    ro = Rollout(**{**ro.__dict__, "rewards": ro.rewards.view(2, 2)})
    seen = _captured_logprobs(monkeypatch)
    stats = policy_update(tiny, ro, algo, 4, 24, None, (float(model.sum()), 4.0),
                          lambda _: nullcontext(), forward=forward)  # fmt: skip
    tiny.zero_grad(set_to_none=True)
    (lp,) = seen
    first = batch.first_target()
    ratio = (lp.detach() - old[:, first:]).exp()[model[:, first:]]
    torch.testing.assert_close(ratio, torch.ones_like(ratio), rtol=0, atol=1e-5)
    assert stats["clip_frac"] == 0.0


def _train(tiny_model_dir, tmp_path, rollout=None, **sections):
    rollout = {"max_new_tokens": 6, "max_tokens": 64, "score_workers": 1, **(rollout or {})}
    cfg = vr_train_envs.train_config(tiny_model_dir, tmp_path, env={"name": "test-scripted-tool"},
                                     rollout=rollout, **sections)  # fmt: skip
    return train(validate_config(TrainConfig, cfg, "test"))


@pytest.mark.parametrize(
    "algo",
    [{"name": "grpo"}, {"name": "ppo", "group_size": 2, "beta": 0.01, "kl_in": "reward"}],
    ids=["grpo", "ppo-gae"],
)
def test_grpo_and_ppo_train_on_trajectories(tiny_model_dir, tmp_path, algo):
    run_dir = _train(tiny_model_dir, tmp_path, algo={"batch_size": 8, "group_size": 4, **algo},
                     train={"steps": 2, "lr": 1e-2})  # fmt: skip
    rows = read_metrics(run_dir)
    assert len(rows) == 2
    for row in rows:
        assert 1.0 <= row["turns_mean"] <= 3.0
        assert 0.0 < row["tool_calls_mean"] <= row["turns_mean"]
        assert 0.0 <= row["tool_errors_mean"] <= row["tool_calls_mean"]
        assert 0.0 <= row["truncated_frac"] <= 1.0
        assert row["response_length"] <= 64  # rollout.max_tokens: model and env tokens
        assert math.isfinite(row["loss"]) and row["grad_norm"] > 0
    if algo["name"] == "ppo":
        assert "value_loss" in rows[0]
    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    after = AutoModelForCausalLM.from_pretrained(run_dir / "final").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    sample = json.loads((run_dir / "samples.jsonl").read_text().splitlines()[0])
    roles = [m["role"] for m in sample["messages"]]
    assert roles[:2] == ["user", "assistant"] and roles.count("assistant") == sample["turns"]
    if "tool" in roles:
        # the plain-text tool message (cut where the budget ran out)
        assert sample["tool_calls"] >= 1 and "\n<output>\n" in sample["completion"]
    assert {"turns", "tool_calls", "tool_errors", "truncated", "reward"} <= set(sample)


def test_rollout_max_turns_above_the_envs_is_a_config_error(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"rollout\.max_turns=5 exceeds env"):
        _train(tiny_model_dir, tmp_path, rollout={"max_turns": 5})
    assert not (tmp_path / "run").exists()


def test_episode_metrics_are_reduced_over_ranks_weighted_by_episodes():
    groups = _groups()
    groups[0][0].extra["episode"] = Episode(row={}, turns=2, tool_calls=1, truncated=True)
    groups[0][1].extra["episode"] = Episode(row={}, turns=1, tool_calls=0, tool_errors=0)
    stats = episode_stats(groups)
    assert stats == {"turns_mean": 1.5, "tool_calls_mean": 0.5, "tool_errors_mean": 0.0,
                     "truncated_frac": 0.5}  # fmt: skip
    ro = _rollout(groups, [1.0, 0.0], stats=stats)
    counts = _metric_counts(ro, None)
    assert all(counts[k] == 2.0 for k in stats)  # one weight per episode
    assert episode_stats([[_completion(0, [1], [1])]]) == {}  # single-turn: no episode keys


def test_lockstep_turns_make_a_multi_turn_run_reproducible(tiny_model_dir, tmp_path):
    """rollout.turn_batch_frac = 1: every turn is one batch of all running episodes, so the
    samples (and hence the whole run) do not depend on how fast the environment answers."""
    timing = {"step_seconds", "gen_seconds", "sync_seconds", "tokens_per_s"}

    def metrics(name: str) -> list[dict]:
        run_dir = _train(tiny_model_dir, tmp_path, rollout={"turn_batch_frac": 1.0}, name=name,
                         train={"steps": 2, "lr": 1e-2})  # fmt: skip
        return [{k: v for k, v in r.items() if k not in timing} for r in read_metrics(run_dir)]

    assert metrics("a") == metrics("b")
