"""Run directories: where each command writes, and the rule that nothing is overwritten.

Each command writes under its own folder by default (``runs/train/<name>``, ``runs/sft/<name>``,
``runs/eval/<suite>``, ``runs/demo``). A new run never lands in an occupied directory:

- ``--overwrite`` replaces it, but only a directory verirl wrote (it holds one of
  ``RUN_MARKERS``); anything else is refused, so a mistyped ``run_dir`` cannot delete a home;
- a name the user did not choose on the command line (a config file's, or the default) moves
  aside to ``<name>-<YYYYmmdd-HHMMSS>``, and the command says so;
- a name given on the command line is an error that names the three ways on.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from verirl.errors import UserError

# Files only verirl's commands write at the top of a run directory.
RUN_MARKERS = ("config.yaml", "metrics.jsonl", "summary.json", "suite.yaml", ".verirl-demo")


def occupied(path: Path) -> bool:
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and any((path / m).exists() for m in RUN_MARKERS)


def claim_run_dir(
    path: Path,
    *,
    overwrite: bool = False,
    unique: bool = False,
    resumable: bool = False,
    now: float | None = None,
) -> Path:
    """The directory a new run at `path` writes to (nothing is created or deleted here; call
    `clear_run_dir` once the input has been checked).

    `unique`: the name was not chosen by the user, so an occupied `path` gives a timestamped
    sibling. `resumable`: the occupant has a checkpoint, so ``--resume`` is offered too.
    """
    if not occupied(path):
        return path
    if overwrite:
        if not is_run_dir(path):
            raise UserError(
                f"{path} exists and is not a verirl run directory (none of "
                f"{', '.join(RUN_MARKERS)}); --overwrite deletes only run directories: "
                "choose another name or run_dir"
            )
        return path
    if unique:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
        candidate, i = path.with_name(f"{path.name}-{stamp}"), 2
        while occupied(candidate):
            candidate, i = path.with_name(f"{path.name}-{stamp}-{i}"), i + 1
        print(f"{path} exists; this run writes to {candidate} (--overwrite replaces {path})")
        return candidate
    ways = ["--overwrite replaces it", "name=OTHER writes beside it"]
    if resumable:
        ways.insert(0, f"--resume {path} continues it")
    raise UserError(f"run dir {path} exists: {', '.join(ways)}")


def clear_run_dir(path: Path) -> None:
    """Empty an occupied run directory claimed with ``overwrite``."""
    if occupied(path):
        if not is_run_dir(path):  # checked again: it may have changed since it was claimed
            raise UserError(f"{path} is not a verirl run directory; not deleting it")
        shutil.rmtree(path)
