"""The Environment contract: a dataset, a prompt per row, a verifiable score per completion.

An environment is small. A subclass sets ``name``/``description``/``reward_kinds``/``fields``,
implements ``rows`` (or takes a ``data`` file), ``prompt`` and ``score``; batching, row
validation and the error boundary live here, once.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, ClassVar

from verirl.rewards.result import RewardResult

from verirl.errors import DataError

if TYPE_CHECKING:
    from verirl.envs.multiturn import Episode, Turn

Row = dict[str, Any]
Prompt = str | list[dict[str, str]]  # plain text, or chat messages [{"role", "content"}]


class Environment(ABC):
    """Base class of every environment.

    Class attributes describe the environment for ``verirl envs list/show``:
    ``fields`` are the columns a dataset row needs; ``example_row`` is a row that
    ``envs show`` turns into a sample prompt without touching any dataset.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    reward_kinds: ClassVar[tuple[str, ...]] = ()
    fields: ClassVar[tuple[str, ...]] = ()
    example_row: ClassVar[Row] = {}
    # ---- turns (``verirl.envs.multiturn``): a single-turn env is the one-turn case ----------
    max_turns: int = 1  # model turns per episode; an instance may set its own (``rollout.max_turns`` may lower it)
    turn_stop: ClassVar[tuple[str, ...]] = ()  # stop strings that end a model turn (``</python>``)
    protocol: ClassVar[str] = "single turn: one prompt, one completion, one score"

    # ---- data -------------------------------------------------------------------------------
    @abstractmethod
    def rows(self, split: str = "train") -> Sequence[Row]:
        """The dataset rows of a split ("train" or "test")."""

    @abstractmethod
    def prompt(self, row: Row) -> Prompt:
        """The prompt for one row: text, or chat messages for tokenizers with a chat template."""

    # ---- scoring ------------------------------------------------------------------------------
    @abstractmethod
    def score(self, completion: str, row: Row) -> RewardResult:
        """The verdict on one completion. May raise: `score_batch` turns a crash into
        `infra_error`, since a checker crash says nothing about the completion."""

    def score_batch(
        self, completions: Sequence[str], rows: Sequence[Row], workers: int | None = None
    ) -> list[RewardResult]:
        """Score many completions concurrently; results keep the input order.

        The one error boundary: an exception from `score` becomes an `infra_error` result with
        the exception in `detail`, never a silent 0.
        """
        if len(completions) != len(rows):
            raise ValueError(f"{len(completions)} completions but {len(rows)} rows")
        workers = workers or min(8, os.cpu_count() or 1)
        if workers <= 1 or len(completions) <= 1:
            return [self._score_guarded(c, r) for c, r in zip(completions, rows, strict=True)]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(self._score_guarded, completions, rows))

    def _score_guarded(self, completion: str, row: Row) -> RewardResult:
        try:
            return self.score(completion, row)
        except Exception as e:  # the boundary: report, never swallow into 0
            return RewardResult.infra(f"{self.name}: scorer crashed: {type(e).__name__}: {e}")

    # ---- turns --------------------------------------------------------------------------------
    @property
    def multi_turn(self) -> bool:
        return self.max_turns > 1

    def start(self, row: Row) -> dict[str, Any]:
        """The environment's scratch state for a new episode of `row` (``Episode.state``)."""
        return {}

    def respond(self, episode: Episode, text: str) -> Turn:
        """The answer to the model's latest turn `text` (already in ``episode.messages``):
        messages to append, or done. One-turn envs end at once."""
        from verirl.envs.multiturn import Turn

        return Turn(done=True)

    def score_episode(self, episode: Episode) -> RewardResult:
        """The verdict on a finished trajectory. By default ``score`` of the final model turn
        (the final submission); truncated episodes are scored the same way unless an env says
        otherwise. May raise: the driver turns a crash into ``infra_error``."""
        return self.score(episode.final_text, episode.row)

    # ---- helpers ------------------------------------------------------------------------------
    def split_file(self, data: Any, split: str) -> str:
        """The data file of `split`: `data` itself (one file for every split) or its entry in a
        ``{split: path}`` mapping; a split the mapping lacks is a DataError naming the env."""
        if isinstance(data, Mapping):
            if split not in data:
                raise DataError(f"env {self.name!r}: no data file for split {split!r}")
            return str(data[split])
        return str(data)

    # ---- checks -------------------------------------------------------------------------------
    def validate_rows(self, rows: Sequence[Row], source: str, extra: Sequence[str] = ()) -> None:
        """Raise DataError naming the source, row number (from 1, as everywhere) and field."""
        needed = (*self.fields, *extra)
        for i, row in enumerate(rows, 1):
            for f in needed:
                if f not in row:
                    raise DataError(
                        f"{source}: row {i}: missing field {f!r} (env {self.name!r} needs {list(needed)})"
                    )

    def close(self) -> None:  # noqa: B027 - optional hook, most envs hold nothing
        """Release pools, sandboxes and worker processes."""

    def __enter__(self) -> Environment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
