"""A deliberately lenient environment for the audit's tests: it reads only the leading
integer of a completion, as the arithmetic env once did, so ``36 or 3``, ``36-1`` and ``36.5``
all score 1 for the answer 36. `verirl audit` must flag it with those exact candidates.

Load it by path: ``verirl audit tests/vr_lenient_env.py:LenientEnv``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import ClassVar

from verirl.envs import Environment, Prompt, Row
from verirl.rewards.result import RewardResult

_LEADING_INT = re.compile(r"\s*(-?\d+)")


class LenientEnv(Environment):
    name = "vr-lenient"
    description = "Test only: scores the leading integer of a completion (hackable on purpose)."
    reward_kinds = ("exact-integer",)
    fields = ("question", "answer")
    example_row: ClassVar[Row] = {"question": "30+6", "answer": "36"}

    def __init__(self, size: int = 12) -> None:
        self.size = size

    def rows(self, split: str = "train") -> Sequence[Row]:
        pairs = [(30 + i, 6 + i) for i in range(self.size)]
        return [{"id": f"r{i}", "question": f"{a}+{b}", "answer": str(a + b)}
                for i, (a, b) in enumerate(pairs)]  # fmt: skip

    def prompt(self, row: Row) -> Prompt:
        return f"{row['question']}="

    def score(self, completion: str, row: Row) -> RewardResult:
        m = _LEADING_INT.match(completion)
        if m is None:
            return RewardResult(0.0, "format_error", detail="no leading integer")
        ok = m.group(1) == row["answer"]
        return RewardResult(float(ok), "correct" if ok else "incorrect", detail=m.group(1))
