"""Small offline games with feedback, for multi-turn tests and demos: ``guess_number``.

Pure Python, no sandbox, no model needed to drive: a scripted player can win or lose, so the
multi-turn machinery (turn limits, feedback rendering, episode scoring) is testable on its own.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from functools import cache
from typing import ClassVar

from verirl.envs.base import Environment, Prompt, Row
from verirl.envs.multiturn import Episode, Turn
from verirl.envs.registry import register_env
from verirl.rewards.result import RewardResult

# A guess is the reply's first line holding one integer and nothing else: "50" or " 50 \n...".
# "1 2 3 ... 100" (every candidate at once) is no guess at all.
_GUESS = re.compile(r"[ \t]*(-?\d{1,6})[ \t]*\.?[ \t]*(?:\r?\n|$)")


def read_guess(text: str) -> int | None:
    """The integer a turn guesses, or None when its first line is not one integer alone.

    >>> read_guess("50"), read_guess(" 37.\\nbecause..."), read_guess("1 2 3"), read_guess("x")
    (50, 37, None, None)
    """
    m = _GUESS.match(text)
    return int(m.group(1)) if m else None


@register_env
class GuessNumberEnv(Environment):
    name = "guess_number"
    description = (
        "Guess a hidden integer; the env answers 'higher' or 'lower' (offline, multi-turn)."
    )
    reward_kinds = ("game-win",)
    fields = ("target",)
    example_row: ClassVar[Row] = {"target": 37, "low": 1, "high": 100}
    max_turns = 7  # ceil(log2(100)): binary search always wins in 7
    protocol = (
        "each model turn is one guess (the first line: one integer alone); the env answers "
        "'higher', 'lower' or asks for a valid guess (a 'user' message); a right guess ends the "
        "episode. Reward 1 if a guess within max_turns was right, else 0."
    )

    def __init__(
        self,
        seed: int = 0,
        low: int = 1,
        high: int = 100,
        max_turns: int = 7,
        train_size: int = 1000,
        test_size: int = 100,
        prompt_style: str = "chat",
    ) -> None:
        if high <= low:
            raise ValueError(f"need low < high, got low={low}, high={high}")
        if max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}")
        if prompt_style not in ("chat", "text"):
            raise ValueError(f"prompt_style must be 'chat' or 'text', got {prompt_style!r}")
        self.seed, self.low, self.high, self.prompt_style = seed, low, high, prompt_style
        # The class default is the option's default; an option sets this instance's limit.
        self.max_turns = max_turns
        self.sizes = {"train": train_size, "test": test_size}

    @cache  # noqa: B019 - environments live for a whole run; the cache is the dataset
    def rows(self, split: str = "train") -> Sequence[Row]:
        """Row i is ``Random(f"{seed}:{split}:{i}")``'s target alone (reproducible one by one).
        The splits differ by their random stream only: a range of 100 has no disjoint halves."""
        if split not in self.sizes:
            raise ValueError(f"unknown split {split!r}; guess_number has 'train' and 'test'")
        return tuple(
            {"id": f"{split}-{i}", "low": self.low, "high": self.high,
             "target": random.Random(f"{self.seed}:{split}:{i}").randint(self.low, self.high)}
            for i in range(self.sizes[split])
        )  # fmt: skip

    def _bounds(self, row: Row) -> tuple[int, int]:
        return int(row.get("low", self.low)), int(row.get("high", self.high))

    def prompt(self, row: Row) -> Prompt:
        low, high = self._bounds(row)
        text = (
            f"I am thinking of an integer from {low} to {high}. Guess it in at most "
            f"{self.max_turns} tries. Reply with one integer only; I will say whether my number "
            "is higher or lower."
        )
        return text if self.prompt_style == "text" else [{"role": "user", "content": text}]

    def respond(self, episode: Episode, text: str) -> Turn:
        low, high = self._bounds(episode.row)
        target, guess = int(episode.row["target"]), read_guess(text)
        if guess == target:
            return Turn(messages=[{"role": "user", "content": "Correct!"}], done=True)
        if guess is None or not low <= guess <= high:
            reply = f"Reply with one integer from {low} to {high} only."
        else:
            reply = "Higher." if target > guess else "Lower."
        return Turn(messages=[{"role": "user", "content": reply}])

    def score(self, completion: str, row: Row) -> RewardResult:
        """A one-turn game: the single guess must be right."""
        guess = read_guess(completion)
        if guess is None:
            return RewardResult(0.0, "format_error", detail="no guess (one integer alone)")
        if guess == int(row["target"]):
            return RewardResult(1.0, "correct", detail="guessed in 1")
        return RewardResult(0.0, "incorrect", detail=f"guessed {guess}, number {row['target']}")

    def score_episode(self, episode: Episode) -> RewardResult:
        """1 if one of the first ``max_turns`` guesses was right, read from the turns themselves
        (not from state `respond` kept), so a turn the driver never answered still counts."""
        guesses = [read_guess(t) for t in episode.model_turns[: self.max_turns]]
        target = int(episode.row["target"])
        if target in guesses:
            n = guesses.index(target) + 1
            return RewardResult(1.0, "correct", detail=f"guessed in {n}")
        low, high = self._bounds(episode.row)
        valid = [g for g in guesses if g is not None and low <= g <= high]
        if not valid:
            return RewardResult(0.0, "format_error", detail="no valid guess in any turn")
        return RewardResult(0.0, "incorrect",
                            detail=f"not found in {len(guesses)} turns ({len(valid)} valid guesses)")  # fmt: skip
