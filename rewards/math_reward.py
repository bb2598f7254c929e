"""The math reward: extract the final answer, compare it with the gold, under a hard deadline.

Pipeline per completion: `extract_answer` (linear-time, in the caller) → `fast_equiv` (plain
numbers and words, exact rationals, in the caller; most training answers stop here) → otherwise
`symbolic_equiv` in a `CheckerPool` worker process.

`verirl.rewards.math_pool` says why those are processes (not SIGALRM) and how they start.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from verirl.rewards.math_equiv import fast_equiv
from verirl.rewards.math_extract import extract_answer, final_boxes
from verirl.rewards.math_pool import CheckerPool, Verdict
from verirl.rewards.result import RewardResult

__all__ = [
    "CheckerPool",
    "Verdict",
    "default_pool",
    "gold_answer",
    "math_reward",
    "math_reward_batch",
]

_default_pool: CheckerPool | None = None
_default_lock = threading.Lock()


def default_pool() -> CheckerPool:
    """A process-wide pool, created on first use and closed at exit."""
    global _default_pool
    with _default_lock:
        if _default_pool is None:
            _default_pool = CheckerPool()
            atexit.register(_default_pool.close)
        return _default_pool


def gold_answer(gold: str) -> str:
    """The gold's own final answer: the boxes of a MATH solution's final sentence (several of
    them are one list answer), else the text itself.

    >>> gold_answer(r"So $x=\\boxed{\\frac{1}{2}}$."), gold_answer(r"\\boxed{1}\\boxed{2}")
    ('\\\\frac{1}{2}', '1, 2')
    """
    boxes = final_boxes(gold)
    return boxes[0] if boxes else gold.strip()


def math_reward(
    completion: str,
    gold: str,
    pool: CheckerPool | None = None,
    last_number_fallback: bool = True,
) -> RewardResult:
    """1.0 when the completion's final answer equals the gold, else 0.0 with a status.

    >>> math_reward(r"... so the total is $\\boxed{1{,}000}$.", "1000").status
    'correct'
    >>> math_reward("I think 3 or 5.", "3", last_number_fallback=False).status
    'format_error'
    >>> math_reward(r"\\boxed{3} or \\boxed{5}", "3").detail
    'hedged answer: 5'
    """
    found = extract_answer(completion, last_number_fallback)
    if found.answer is None:
        return RewardResult(0.0, "format_error", {"correct": 0.0}, "no final answer found")
    if found.hedged:
        return RewardResult(0.0, "incorrect", {"correct": 0.0}, f"hedged answer: {found.answer}")
    want = gold_answer(gold)
    fast = fast_equiv(found.answer, want)
    if fast is not None:
        verdict = Verdict("correct" if fast else "incorrect", "fast")
    else:
        verdict = (pool or default_pool()).check(found.answer, want)
    reward = 1.0 if verdict.correct else 0.0
    detail = f"{found.source}: {_short(found.answer)} vs {_short(want)} ({verdict.detail})"
    return RewardResult(reward, verdict.status, {"correct": reward}, detail)


def math_reward_batch(
    completions: Sequence[str],
    golds: Sequence[str],
    pool: CheckerPool | None = None,
    last_number_fallback: bool = True,
) -> list[RewardResult]:
    """`math_reward` for many pairs; symbolic checks run in parallel across the pool's workers.

    Threads only wait on worker pipes, so one thread per worker keeps every core busy.
    """
    if len(completions) != len(golds):
        raise ValueError(f"{len(completions)} completions but {len(golds)} golds")
    pool = pool or default_pool()

    def one(pair: tuple[str, str]) -> RewardResult:
        return math_reward(pair[0], pair[1], pool, last_number_fallback)

    pairs = list(zip(completions, golds, strict=True))
    if pool.size <= 1 or len(pairs) <= 1:
        return [one(p) for p in pairs]
    with ThreadPoolExecutor(max_workers=pool.size) as ex:
        return list(ex.map(one, pairs))


def _short(s: str, n: int = 60) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."
