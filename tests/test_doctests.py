"""Run the doctest examples of the modules listed here (rewards keep theirs as documentation)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "verirl.config",
    "verirl.progress",
    "verirl.train.metrics",
    "verirl.train.cli",
    "verirl.rewards.result",
    "verirl.envs.registry",
    "verirl.envs.arithmetic",
    "verirl.tiny",
    "verirl.algos.advantages",
    "verirl.algos.kl",
    "verirl.algos.logprobs",
    "verirl.algos.losses",
    "verirl.algos.reference",
    "verirl.algos.policy_losses",
    "verirl.algos.shaping",
    "verirl.evals.vote",
    "verirl.rewards.math_extract",
    "verirl.rewards.math_normalize",
    "verirl.rewards.math_equiv",
    "verirl.rewards.math_reward",
    "verirl.rewards.format",
    "verirl.rewards.combine",
    "verirl.envs.math_envs",
    "verirl.rewards.code",
    "verirl.sandboxes.runner",
    "verirl.sandboxes.sandbox",
]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    mod = importlib.import_module(name)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
