"""A dense-reward toy environment for trainer tests: a random tiny model gets a non-zero,
varying reward from its first step, so a few GRPO/PPO steps must visibly raise it.

reward = fraction of the completion's characters that are ASCII (a byte-level random model
starts near 0.5; invalid UTF-8 bytes decode to U+FFFD, which is not ASCII).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Sequence
from typing import Any

from verirl.envs.base import Environment, Row
from verirl.envs.registry import register_env
from verirl.rewards.result import RewardResult


@register_env
class AsciiFractionEnv(Environment):
    name = "test-ascii-fraction"
    description = "test only: reward = share of ASCII characters in the completion"
    reward_kinds = ("dense",)
    fields = ("prompt",)

    def __init__(
        self,
        size: int = 32,
        fail_every: int = 0,
        delay: float = 0.0,
        zero_for: Sequence[str] = (),
        threshold: float | None = None,
    ) -> None:
        """`fail_every`: crash on ~1/n of completions; `delay`: seconds per score (slow runs);
        `zero_for`: prompts whose completions all get 0 (groups with no signal); `threshold`:
        binary reward, 1 when the ASCII share reaches it."""
        self.size, self.fail_every, self.delay = size, fail_every, delay
        self.zero_for, self.threshold = set(zero_for), threshold

    def rows(self, split: str = "train") -> Sequence[Row]:
        return [{"prompt": f"{i}:"} for i in range(self.size)]

    def prompt(self, row: Row) -> str:
        return str(row["prompt"])

    def score(self, completion: str, row: Row) -> RewardResult:
        time.sleep(self.delay)
        if self.fail_every and zlib.crc32(completion.encode()) % self.fail_every == 0:
            raise RuntimeError("simulated checker crash")  # becomes infra_error
        if not completion:
            return RewardResult(0.0, "format_error", detail="empty")
        frac = sum(ch.isascii() for ch in completion) / len(completion)
        if row["prompt"] in self.zero_for:
            return RewardResult(0.0, "incorrect", {"ascii": 0.0})
        if self.threshold is not None:
            frac = float(frac >= self.threshold)
        return RewardResult(frac, "correct" if frac > 0.9 else "incorrect", {"ascii": frac})


def train_config(model_dir: Any, run_dir: Any, **sections: dict[str, Any]) -> dict[str, Any]:
    """A fast GRPO config on the toy env; `sections` update the named sections."""
    cfg: dict[str, Any] = {
        "name": "run",
        "run_dir": str(run_dir),
        "model": {"path": str(model_dir)},
        "env": {"name": "test-ascii-fraction"},
        "rollout": {"max_new_tokens": 8, "score_workers": 1},
        "algo": {"batch_size": 16, "group_size": 4},
        "train": {"steps": 2, "lr": 3e-3, "seed": 0},
        "log": {"progress": False, "tensorboard": False},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg
