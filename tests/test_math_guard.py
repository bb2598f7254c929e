"""The universal-answer guard (`verirl.rewards.math_guard`): no degenerate or catch-all answer
scores against any gold, in any answer style, through the math reward and through every
built-in environment's scorer (arithmetic, math, gsm8k, math500, reasoning_gym)."""

from __future__ import annotations

from collections import Counter

import pytest
from verirl.envs.registry import make_env
from verirl.rewards.math_guard import (
    ANSWER_STYLES,
    GUARD_GOLDS,
    UNIVERSAL_CANDIDATES,
    guard_completions,
)
from verirl.rewards.math_pool import CheckerPool
from verirl.rewards.math_reward import math_reward_batch

COMPLETIONS = guard_completions()


def test_the_guard_is_as_large_and_diverse_as_promised():
    assert len(set(UNIVERSAL_CANDIDATES)) == len(UNIVERSAL_CANDIDATES) >= 100
    assert len(GUARD_GOLDS) >= 30
    kinds = {kind for _, kind in GUARD_GOLDS}
    need = {
        "integer", "fraction", "radical", "pi", "expression", "interval", "set", "tuple",
        "equation", "matrix", "text", "choice", "percent", "degrees", "complex",
    }  # fmt: skip
    assert need <= kinds, need - kinds
    assert [name for name, _ in ANSWER_STYLES] == ["boxed", "answer_tag", "final_answer"]


def _false_positives(results, pairs):
    return [
        (c, style, g, r.detail)
        for (c, style, g), r in zip(pairs, results, strict=True)
        if r.reward > 0
    ]


def test_no_candidate_scores_against_any_gold_in_any_style():
    pairs = [(c, style, g) for c, style, _ in COMPLETIONS for g, _ in GUARD_GOLDS]
    texts = [text for _, _, text in COMPLETIONS for _ in GUARD_GOLDS]
    with CheckerPool(workers=2, timeout_s=2.0) as pool:
        pool.start(wait=True)
        results = math_reward_batch(texts, [g for _, _, g in pairs], pool)
    assert _false_positives(results, pairs) == []
    # the guard is not vacuous: almost every candidate is read as an answer and judged
    statuses = Counter(r.status for r in results)
    assert statuses["incorrect"] > 0.9 * len(results), statuses


def test_the_guard_catches_a_checker_that_is_not_fail_closed():
    """Sanity check of the guard itself: the same completions with the gold as the answer score
    1 (so a zero above means rejection, not a broken extraction)."""
    golds = [g for g, _ in GUARD_GOLDS]
    texts = [style(g) for g in golds for _, style in ANSWER_STYLES]
    with CheckerPool(workers=2, timeout_s=5.0) as pool:
        results = math_reward_batch(texts, [g for g in golds for _ in ANSWER_STYLES], pool)
    wrong = [(t, r.detail) for t, r in zip(texts, results, strict=True) if r.reward != 1.0]
    assert wrong == []


def _env_guard(env, rows, styles):
    comps = [(c, name, text) for c in UNIVERSAL_CANDIDATES for name, text in styles(c)]
    texts = [text for _, _, text in comps for _ in rows]
    batch_rows = [row for _ in comps for row in rows]
    results = env.score_batch(texts, batch_rows, workers=2)
    return [
        (c, name, row["answer"], r.detail)
        for (c, name, _), row, r in zip(
            [x for x in comps for _ in rows], batch_rows, results, strict=True
        )
        if r.status == "correct" or r.reward >= 1.0
    ]


def _styled(c):
    return [(name, style(c)) for name, style in ANSWER_STYLES] + [("bare", c)]


def test_arithmetic_env_fails_closed():
    env = make_env("arithmetic")
    rows = [{"answer": g} for g, kind in GUARD_GOLDS if kind == "integer"]
    assert _env_guard(env, rows, _styled) == []


@pytest.mark.parametrize("name", ["math", "gsm8k", "math500"])
def test_math_envs_fail_closed(name):
    # The full product runs through the reward above; here each env's own scoring path (gold
    # conversion, pool, batch threads) sees every candidate against a spread of golds.
    golds = [g for g, _ in GUARD_GOLDS]
    if name == "gsm8k":  # GSM8K golds are integers after "####"
        ints = [g for g, kind in GUARD_GOLDS if kind == "integer"]
        rows = [{"answer": f"so\n#### {g}"} for g in ints[:4]]
    else:
        rows = [{"answer": g} for g in golds[:: 6 if name == "math" else 14]]
    with make_env(name, workers=2, timeout_s=2.0) as env:
        assert _env_guard(env, rows, _styled) == []


def test_reasoning_gym_env_fails_closed():
    with make_env("reasoning_gym", task="basic_arithmetic", train_size=4, test_size=1) as env:
        rows = list(env.rows("train"))
        assert _env_guard(env, rows, _styled) == []
