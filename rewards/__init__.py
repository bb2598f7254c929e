"""Verifiable rewards: math answers (sympy), code (sandboxed unit tests), format tags.

Installed as ``verirl.rewards``. Importing this package must stay cheap: no torch, no vLLM.
"""

from verirl.rewards.result import STATUSES, RewardResult, Status

__all__ = ["STATUSES", "RewardResult", "Status"]
