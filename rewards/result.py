"""The result every reward returns, and the statuses it may carry.

`infra_error` is special: the verdict says nothing about the completion (sandbox or engine down,
checker crash), so the trainer masks such samples out of the loss and counts them instead of
teaching the model that its answer was wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Status = Literal[
    "correct", "incorrect", "format_error", "timeout", "memory", "error", "infra_error"
]
STATUSES: tuple[str, ...] = (
    "correct",
    "incorrect",
    "format_error",
    "timeout",
    "memory",
    "error",
    "infra_error",
)


@dataclass(frozen=True)
class RewardResult:
    """One completion's verdict.

    >>> RewardResult(1.0, "correct").ok
    True
    >>> RewardResult.infra("sandbox down").counts_for_training
    False
    """

    reward: float
    status: Status
    components: dict[str, float] = field(default_factory=dict)
    detail: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown reward status {self.status!r}; expected one of {STATUSES}")

    @property
    def ok(self) -> bool:
        return self.status == "correct"

    @property
    def counts_for_training(self) -> bool:
        """False for infra errors: such a sample says nothing about the policy."""
        return self.status != "infra_error"

    @classmethod
    def infra(cls, detail: str) -> RewardResult:
        return cls(0.0, "infra_error", {}, detail)

    def to_dict(self) -> dict[str, object]:
        return {
            "reward": self.reward,
            "status": self.status,
            "components": dict(self.components),
            "detail": self.detail,
        }
