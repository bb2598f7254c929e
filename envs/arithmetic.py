"""Procedural integer arithmetic: an offline, seeded, reproducible task for demos and tests.

Row i of a split comes from ``Random(f"{seed}:{split}:{i}")`` alone (as reasoning-gym does), so
any row can be regenerated without the others. Train and test are disjoint by construction: a
problem belongs to the test split iff a stable hash of its text falls in the held-out bucket.
"""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Sequence
from functools import cache
from typing import ClassVar

from verirl.envs.base import Environment, Prompt, Row
from verirl.envs.registry import register_env
from verirl.rewards.result import RewardResult

_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
# The whole first line must be the integer: reading only a leading integer accepted "36.5",
# "36-1" and "36 or 3" for 36 (a hedge and two wrong answers). Later lines are free.
_FIRST_LINE_INT = re.compile(r"[ \t]*(-?\d+)[ \t]*(?:\r?\n|$)")
_LEADING_INT = re.compile(r"\s*-?\d")
_INTEGER = re.compile(r"(-?)(\d+)")


@register_env
class ArithmeticEnv(Environment):
    name = "arithmetic"
    description = "Procedural integer arithmetic (seeded, offline); difficulty by operand range, count, operators."
    reward_kinds = ("exact-integer",)
    fields = ("question", "answer")
    example_row: ClassVar[Row] = {"question": "12+7", "answer": "19"}

    def __init__(
        self,
        seed: int = 0,
        train_size: int = 2000,
        test_size: int = 200,
        max_operand: int = 30,
        num_operands: int = 2,
        ops: str = "+",
        prompt_style: str = "bare",
        test_fraction: float = 0.2,
    ) -> None:
        bad = set(ops) - set(_OPS)
        if not ops or bad:
            raise ValueError(f"ops must be a string of {''.join(_OPS)}, got {ops!r}")
        if max_operand < 1 or num_operands < 2:
            raise ValueError("need max_operand >= 1 and num_operands >= 2")
        if prompt_style not in ("bare", "instruct"):
            raise ValueError(f"prompt_style must be 'bare' or 'instruct', got {prompt_style!r}")
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
        self.seed, self.max_operand, self.num_operands = seed, max_operand, num_operands
        self.ops, self.prompt_style, self.test_fraction = ops, prompt_style, test_fraction
        self.sizes = {"train": train_size, "test": test_size}

    def _split_of(self, question: str) -> str:
        bucket = zlib.crc32(f"{self.seed}:{question}".encode()) % 10_000
        return "test" if bucket < self.test_fraction * 10_000 else "train"

    def make_row(self, split: str, index: int) -> Row:
        """The `index`-th problem of `split`, a pure function of (seed, split, index)."""
        rng = random.Random(f"{self.seed}:{split}:{index}")
        while True:
            nums = [rng.randint(0, self.max_operand - 1) for _ in range(self.num_operands)]
            ops = [rng.choice(self.ops) for _ in range(self.num_operands - 1)]
            question = str(nums[0]) + "".join(f"{o}{n}" for o, n in zip(ops, nums[1:], strict=True))
            if self._split_of(question) == split:
                break
        value = _evaluate(nums, ops)
        return {"id": f"{split}-{index}", "question": question, "answer": str(value)}

    @cache  # noqa: B019 - environments live for a whole run; the cache is the dataset
    def rows(self, split: str = "train") -> Sequence[Row]:
        if split not in self.sizes:
            raise ValueError(f"unknown split {split!r}; arithmetic has 'train' and 'test'")
        return tuple(self.make_row(split, i) for i in range(self.sizes[split]))

    def prompt(self, row: Row) -> Prompt:
        if self.prompt_style == "bare":
            return f"{row['question']}="
        return [
            {
                "role": "user",
                "content": f"What is {row['question']}? Reply with the integer only.",
            }
        ]

    def score(self, completion: str, row: Row) -> RewardResult:
        """Exact integer match of the completion's first line, which must be an integer and
        nothing else (fail closed: ``36.5``, ``36-1``, ``36 or 3`` score 0 for 36).

        >>> env = ArithmeticEnv()
        >>> env.score("19", {"answer": "19"}).reward
        1.0
        >>> env.score("18 ", {"answer": "19"}).status
        'incorrect'
        >>> env.score("19.5", {"answer": "19"}).status, env.score("nineteen", {"answer": "19"}).status
        ('incorrect', 'format_error')
        """
        m = _FIRST_LINE_INT.match(completion)
        if m is None:
            if _LEADING_INT.match(completion):  # a number with more after it: a wrong answer
                first = completion.strip().split("\n", 1)[0][:40]
                return RewardResult(0.0, "incorrect", detail=f"not an integer alone: {first!r}")
            return RewardResult(0.0, "format_error", detail="no leading integer")
        got, want = _canonical(m.group(1)), _canonical(str(row["answer"]).strip())
        if got == want:
            return RewardResult(1.0, "correct", detail=got)
        return RewardResult(0.0, "incorrect", detail=f"got {_short(got)}, want {row['answer']}")


def _canonical(integer: str) -> str:
    """An integer's canonical decimal text ("-007" -> "-7", "-0" -> "0"), by string operations.

    Not ``int()``: a completion of 10^5 digits is over Python's 4300-digit conversion limit, and
    its own length makes it a wrong answer, never a crashed scorer. Equal integers have equal
    canonical texts, so comparing these is comparing the values.

    >>> _canonical("-007"), _canonical("-0"), _canonical("9" * 5000) == "9" * 5000
    ('-7', '0', True)
    """
    m = _INTEGER.fullmatch(integer)
    if m is None:
        raise ValueError(f"not an integer: {_short(integer)!r}")
    sign, digits = m.groups()
    digits = digits.lstrip("0") or "0"
    return digits if digits == "0" else sign + digits


def _short(s: str, n: int = 40) -> str:
    return s if len(s) <= n else f"{s[:n]}... ({len(s)} characters)"


def _evaluate(nums: list[int], ops: list[str]) -> int:
    """Evaluate with the usual precedence (* before + and -), without eval()."""
    terms: list[int] = [nums[0]]
    signs: list[str] = []
    for op, n in zip(ops, nums[1:], strict=True):
        if op == "*":
            terms[-1] = terms[-1] * n
        else:
            signs.append(op)
            terms.append(n)
    total = terms[0]
    for op, t in zip(signs, terms[1:], strict=True):
        total = _OPS[op](total, t)
    return total
