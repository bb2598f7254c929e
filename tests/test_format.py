"""Strict tag-format reward and the weighted composition with the math reward."""

from __future__ import annotations

import pytest
from verirl.rewards.combine import combine
from verirl.rewards.format import format_reward
from verirl.rewards.math_pool import CheckerPool
from verirl.rewards.math_reward import math_reward
from verirl.rewards.result import RewardResult

OK = "<think>2+2 is 4</think>\n<answer>4</answer>"


@pytest.mark.parametrize(
    "completion, expected",
    [
        (OK, 1.0),
        ("  <think>a</think><answer>4</answer>\n", 1.0),
        ("<think>a</think>", 0.0),  # answer block missing
        ("<think>a<answer>4</answer>", 0.0),  # think never closed
        ("<think>a</think><answer>4", 0.0),  # answer never closed
        ("<answer>4</answer><think>a</think>", 0.0),  # out of order
        ("<think>a</think><think>b</think><answer>4</answer>", 0.0),  # duplicated think
        ("<think>a</think><answer>4</answer><answer>5</answer>", 0.0),  # duplicated answer
        ("<think>a</answer><answer>4</think>", 0.0),  # mismatched
        ("<think>a<think>b</think></think><answer>4</answer>", 0.0),  # nested
        ("Sure! <think>a</think><answer>4</answer>", 0.0),  # text before
        ("<think>a</think><answer>4</answer> Hope it helps", 0.0),  # text after
        ("<think>a</think> and so <answer>4</answer>", 0.0),  # text between
        ("<think> </think><answer>4</answer>", 0.0),  # empty think
        ("<Think>a</Think><answer>4</answer>", 0.0),  # tag names are exact
        ("", 0.0),
    ],
)
def test_format_table(completion, expected):
    res = format_reward(completion)
    assert res.reward == expected, res
    assert res.status == ("correct" if expected else "format_error")
    assert res.components == {"format": expected}
    if not expected:
        assert res.detail  # says what is wrong


def test_configurable_tags_and_options():
    text = "<reasoning>r</reasoning><solution>7</solution>"
    assert format_reward(text, tags=("reasoning", "solution")).reward == 1.0
    assert format_reward(text).reward == 0.0
    assert format_reward("<think></think><answer>1</answer>", allow_empty=True).reward == 1.0
    assert format_reward("so 4</think><answer>4</answer>", prefilled=True).reward == 1.0
    assert format_reward("<answer>4</answer>", tags=("answer",)).reward == 1.0
    with pytest.raises(ValueError):
        format_reward(OK, tags=())


def test_weighted_composition_reports_each_component():
    with CheckerPool(workers=1) as pool:
        right_bad_format = "The answer is <answer>4</answer>"
        parts = {"correct": math_reward(right_bad_format, "4", pool)}
        parts["format"] = format_reward(right_bad_format)
        res = combine(parts, {"correct": 1.0, "format": 0.5}, primary="correct")
    assert (res.reward, res.status) == (1.0, "correct")
    assert res.components == {"correct": 1.0, "format": 0.0}
    assert "format:" in res.detail


def test_composition_status_rules():
    good = RewardResult(1.0, "correct", detail="ok")
    slow = RewardResult(0.0, "timeout", detail="late")
    res = combine({"correct": good, "format": slow}, {"correct": 1.0, "format": 0.1}, "correct")
    assert res.status == "timeout"  # an unreliable component makes the total unreliable
    res = combine({"correct": slow, "format": good}, {"correct": 1.0, "format": 0.1}, "correct")
    assert res.status == "timeout" and res.reward == pytest.approx(0.1)
    with pytest.raises(ValueError, match="different components"):
        combine({"correct": good}, {"correct": 1.0, "format": 0.1}, "correct")
    with pytest.raises(ValueError, match="primary"):
        combine({"correct": good}, {"correct": 1.0}, "format")
