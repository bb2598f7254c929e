"""pass@k suites on a multi-turn env: each sample is a whole episode (``run_episodes``),
scored on its trajectory (``score_episode``), recorded with its messages, reproducible."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from verirl.envs.base import Environment
from verirl.envs.multiturn import Episode, Turn
from verirl.envs.registry import register_env
from verirl.evals import runner
from verirl.evals.suite import load_suite
from verirl.rewards.result import RewardResult


@register_env
class TwoStepEnv(Environment):
    """A row's ``steps`` is how many model turns its episode takes: every turn before that is
    answered with the feedback "again" (a user message: short in the plain format, so the
    trajectory budget, max_turns x sampling.max_tokens, holds both turns). The verdict is on the trajectory, not the text:
    correct iff the episode took 2 turns (``score`` itself always says incorrect, so a pass
    proves the runner scored the episode)."""

    name = "test-eval-two-step"
    description = "test only: the row says how many turns an episode takes"
    fields = ("steps",)
    max_turns = 3
    protocol = "model turn -> feedback 'again' until the row's steps are taken"

    def rows(self, split: str = "train") -> list[dict]:
        return [{"id": "one", "steps": 1}, {"id": "two", "steps": 2}]

    def prompt(self, row: dict) -> str:
        return f"{row['id']}:"

    def score(self, completion: str, row: dict) -> RewardResult:
        return RewardResult(0.0, "incorrect")

    def respond(self, episode: Episode, text: str) -> Turn:
        if episode.turns >= episode.row["steps"]:
            return Turn(done=True)
        return Turn([{"role": "user", "content": "again"}], tool_calls=1)

    def score_episode(self, episode: Episode) -> RewardResult:
        ok = episode.turns == 2 and episode.model_turns[-1] == episode.final_text
        return RewardResult(float(ok), "correct" if ok else "incorrect")


def _suite(tmp_path: Path) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({
        "name": "two-step", "envs": [{"name": "test-eval-two-step", "split": "test"}],
        "n": 4, "ks": [1, 4], "sampling": {"temperature": 1.0, "max_tokens": 8}, "seed": 0,
        "bootstrap": {"samples": 10},
    }))  # fmt: skip
    return path


def _cached_samples(out: Path) -> dict[str, list[dict]]:
    (cache,) = (out / "cache").glob("*.jsonl")
    recs = [json.loads(line) for line in cache.read_text().splitlines()]
    return {r["problem_id"]: r["samples"] for r in recs}


def test_multi_turn_suite_scores_episodes_and_records_their_messages(tiny_model_dir, tmp_path):
    suite = load_suite(_suite(tmp_path))
    summary = runner.evaluate_models(suite, {"m": tiny_model_dir}, tmp_path / "a", progress=False)
    assert summary["models"]["m"]["pass@1"] == 0.5  # problem "two" always, "one" never
    samples = _cached_samples(tmp_path / "a")
    for s in samples["two"]:
        assert s["status"] == "correct" and s["turns"] == 2 and s["tool_calls"] == 1
        assert [m["role"] for m in s["messages"]] == ["user", "assistant", "user", "assistant"]
        assert s["messages"][2]["content"] == "again"
        assert s["text"] == s["messages"][-1]["content"]  # the final submission (maj@k's)
        assert not s["truncated"]
    assert all(s["status"] == "incorrect" and s["turns"] == 1 for s in samples["one"])
    # seeded and in lockstep: a second run samples the very same episodes
    runner.evaluate_models(suite, {"m": tiny_model_dir}, tmp_path / "b", progress=False)
    assert _cached_samples(tmp_path / "b") == samples


def test_a_multi_turn_trajectory_budget_is_max_turns_times_the_per_turn_tokens():
    env = TwoStepEnv()
    assert runner.turn_budget(env, 8) == 24
    arithmetic = runner.make_env("arithmetic")
    assert runner.turn_budget(arithmetic, 4) == 4
