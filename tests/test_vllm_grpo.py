"""A short GRPO run with the vllm backend behaves like one with the hf backend.

Each run is a subprocess (vLLM's in-process engine is one per process) that registers a toy
environment whose reward a random tiny model can climb: the share of digits among 4 generated
characters (~4% by chance). Runs are seeded, so the curves are reproducible.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

STEPS = 12

SCRIPT = textwrap.dedent(
    """
    import sys
    from verirl.config import load_config
    from verirl.envs.base import Environment
    from verirl.envs.registry import register_env
    from verirl.rewards.result import RewardResult
    from verirl.train.config import TrainConfig
    from verirl.train.loop import train

    @register_env
    class DigitsEnv(Environment):
        name = "test-digits"
        description = "share of digits in the completion"
        fields = ("question",)

        def rows(self, split="train"):
            return [{"question": f"{i}+{i % 7}="} for i in range(64)]

        def prompt(self, row):
            return row["question"]

        def score(self, completion, row):
            r = sum(ch.isdigit() for ch in completion) / 4
            return RewardResult(r, "correct" if r == 1 else "incorrect")

    train(load_config(TrainConfig, None, sys.argv[1:]))
    """
)


def run_grpo(backend: str, model_dir, out_dir) -> list[dict]:
    overrides = [
        f"name={backend}",
        f"run_dir={out_dir}",
        f"model.path={model_dir}",
        "env.name=test-digits",
        f"rollout.backend={backend}",
        "rollout.max_new_tokens=4",
        "algo.batch_size=64",
        "algo.group_size=8",
        "algo.tis_cap=2.0",
        f"train.steps={STEPS}",
        "train.lr=3e-3",
        "log.progress=false",
        "log.tensorboard=false",
        "log.samples_every=0",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, *overrides],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = (out_dir / backend / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_grpo_with_vllm_backend_learns_like_hf(tiny_model_dir, tmp_path):
    curves = {b: run_grpo(b, tiny_model_dir, tmp_path) for b in ("hf", "vllm")}
    summary = {}
    for backend, rows in curves.items():
        assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
        rewards = [r["reward_mean"] for r in rows]
        first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
        summary[backend] = (first, last)
        assert first < 0.08, (backend, rewards)  # near chance (~4%) before learning
        assert last > first + 0.05, (backend, rewards)  # and the reward rises
    # Same task, same seeds, different samplers: the two curves end in the same place.
    assert abs(summary["vllm"][1] - summary["hf"][1]) < 0.06, summary
    syncs = [r["sync_seconds"] for r in curves["vllm"]]
    assert all(s > 0 for s in syncs)  # the vllm engine really copied weights every step
    assert all(r["sync_seconds"] == 0 for r in curves["hf"])  # hf shares the module itself
    # Truncated IS is on: the engines' logprobs match the trainer's, so the weights are ~1.
    for backend, tol in (("hf", 1e-5), ("vllm", 1e-3)):
        assert all(abs(r["tis_weight"] - 1.0) < tol for r in curves[backend]), backend
