"""Weighted composition of rewards, each component kept in the result.

r = Σ_k w_k · r_k over named component rewards (e.g. ``{"correct": 1.0, "format": 0.1}``). The
status is the *primary* component's (the one that decides correctness), except that any
component's ``infra_error``/``timeout``/``memory`` wins, because then the total says nothing
reliable about the completion.
"""

from __future__ import annotations

from collections.abc import Mapping

from verirl.rewards.result import RewardResult

_OVERRIDING = ("infra_error", "memory", "timeout")


def combine(
    results: Mapping[str, RewardResult], weights: Mapping[str, float], primary: str
) -> RewardResult:
    """Weighted sum of component rewards; `components` holds each raw component reward.

    >>> from verirl.rewards.result import RewardResult as R
    >>> r = combine({"correct": R(1.0, "correct"), "format": R(0.0, "format_error", detail="no tags")},
    ...             {"correct": 1.0, "format": 0.2}, primary="correct")
    >>> r.reward, r.status, r.components
    (1.0, 'correct', {'correct': 1.0, 'format': 0.0})
    """
    missing = set(results) ^ set(weights)
    if missing:
        raise ValueError(f"results and weights name different components: {sorted(missing)}")
    if primary not in results:
        raise ValueError(f"primary component {primary!r} not among {sorted(results)}")
    total = sum(weights[k] * res.reward for k, res in results.items())
    status = results[primary].status
    for k, res in results.items():
        if res.status in _OVERRIDING and k != primary and status not in _OVERRIDING:
            status = res.status
    detail = "; ".join(f"{k}: {res.detail}" for k, res in results.items() if res.detail)
    return RewardResult(total, status, {k: res.reward for k, res in results.items()}, detail)
