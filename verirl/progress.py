"""One progress display for every long command (train, sft, eval, score).

On a terminal it is a rich bar; anywhere else (``nohup``, a redirected log, CI) it prints one
plain line at the start, then at most every ``interval`` seconds, and at the end, each flushed
at once, so a log never stays empty for most of a run. Both show the same numbers: done/total,
the latest metrics (reward, KL, entropy, ...), seconds per item and the time left.

``VERIRL_PROGRESS`` (``auto`` | ``rich`` | ``plain`` | ``off``) and
``VERIRL_PROGRESS_INTERVAL`` (seconds, default 10) override the choice for a whole process.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

# Shown in this order when present; the label is what a reader sees.
TRAIN_METRICS = {
    "reward_mean": "reward",
    "kl": "kl",
    "entropy": "entropy",
}


def format_seconds(s: float) -> str:
    """``h:mm:ss``.

    >>> format_seconds(3725.2)
    '1:02:05'
    """
    s = max(0, round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def format_metrics(row: Mapping[str, Any], names: Mapping[str, str] = TRAIN_METRICS) -> str:
    """``reward 0.750  kl 0.0012  entropy 1.234`` from the keys of `row` that `names` lists.

    >>> format_metrics({"reward_mean": 0.75, "kl": 0.00123, "step": 3})
    'reward 0.750  kl 0.00123'
    """
    parts = []
    for key, label in names.items():
        v = row.get(key)
        if isinstance(v, int | float):
            parts.append(f"{label} {v:.3g}" if abs(v) < 0.01 and v else f"{label} {v:.3f}")
    return "  ".join(parts)


class Progress:
    """`update(k, metrics)` after each k finished items; `close()` at the end (or use ``with``).

    `done` items are already finished (a resumed run); the speed and ETA count only this
    process's items. `unit` names an item: ``step``, ``problem``, ``row``.
    """

    def __init__(
        self,
        title: str,
        total: int,
        done: int = 0,
        unit: str = "step",
        enabled: bool = True,
        stream: TextIO | None = None,
        interval: float | None = None,
        mode: str | None = None,
    ) -> None:
        self.title, self.total, self.done, self.unit = title, total, done, unit
        self.stream = stream if stream is not None else sys.stdout
        env_interval = os.environ.get("VERIRL_PROGRESS_INTERVAL")
        self.interval = (
            interval if interval is not None else float(env_interval) if env_interval else 10.0
        )
        mode = mode or os.environ.get("VERIRL_PROGRESS", "auto")
        if not enabled:
            mode = "off"
        elif mode == "auto":
            isatty = getattr(self.stream, "isatty", None)
            mode = "rich" if isatty is not None and isatty() else "plain"
        self.mode = mode
        self.start_done, self.t0 = done, time.monotonic()
        self.last_print: float | None = None
        self.metrics = ""
        self._bar: Any = None
        if mode == "rich":
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            # narrow bar: the numbers matter more than the bar on an 80-column terminal
            self._bar = RichProgress(
                TextColumn(title),
                BarColumn(bar_width=12),
                MofNCompleteColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                TextColumn("{task.description}"),
                console=Console(file=self.stream),
            )
            self._bar.start()
            self._task = self._bar.add_task("", total=total, completed=done)
        elif mode == "plain":
            self._line(force=True)

    def seconds_per_item(self) -> float | None:
        n = self.done - self.start_done
        return (time.monotonic() - self.t0) / n if n > 0 else None

    def eta(self) -> float | None:
        per = self.seconds_per_item()
        return None if per is None else per * max(0, self.total - self.done)

    def update(self, advance: int = 1, metrics: str | Mapping[str, Any] = "") -> None:
        self.done += advance
        self.metrics = metrics if isinstance(metrics, str) else format_metrics(metrics)
        per = self.seconds_per_item()
        speed = f"{per:.2f} s/{self.unit}" if per is not None else ""
        if self.mode == "rich":
            desc = "  ".join(x for x in (self.metrics, speed) if x)
            self._bar.update(self._task, completed=self.done, description=desc)
        elif self.mode == "plain":
            self._line(force=self.done >= self.total)

    def line(self) -> str:
        """The plain progress line as it stands now."""
        pct = 100 * self.done / self.total if self.total else 100.0
        parts = [f"{self.title} {self.unit} {self.done}/{self.total} ({pct:.0f}%)"]
        if self.metrics:
            parts.append(self.metrics)
        per, eta = self.seconds_per_item(), self.eta()
        if per is not None and eta is not None:
            parts.append(f"{per:.2f} s/{self.unit}  eta {format_seconds(eta)}")
        return "  ".join(parts)

    def _line(self, force: bool) -> None:
        now = time.monotonic()
        if force or self.last_print is None or now - self.last_print >= self.interval:
            print(self.line(), file=self.stream, flush=True)
            self.last_print = now

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        elif self.mode == "plain" and self.last_print is not None and self.done < self.total:
            self._line(force=True)  # an interrupted run still logs where it stopped
            self.mode = "off"

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
