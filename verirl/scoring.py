"""``verirl score ENV``: score completions in a JSONL file with any registered environment.

Each output row is the input row plus ``reward``, ``status``, ``detail`` (and ``components``
when the reward is a weighted mix). The output is written atomically: on any error nothing is
left half-written.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from verirl.envs.registry import make_env
from verirl.jsonl import read_jsonl, write_jsonl
from verirl.rewards.result import RewardResult


def score_file(
    env_name: str,
    input_path: str | Path,
    output_path: str | Path,
    workers: int | None = None,
    env_options: dict[str, Any] | None = None,
    progress: bool = True,
) -> Counter[str]:
    """Score every row of `input_path`; returns the count of each status."""
    rows = read_jsonl(input_path)
    with make_env(env_name, **(env_options or {})) as env:
        env.validate_rows(rows, str(input_path), extra=("completion",))
        completions = [str(r["completion"]) for r in rows]
        results = score_with_progress(env, completions, rows, workers, progress)
    out = []
    for row, res in zip(rows, results, strict=True):
        new = dict(row)
        new.update(reward=res.reward, status=res.status, detail=res.detail)
        if res.components:
            new["components"] = res.components
        out.append(new)
    write_jsonl(output_path, out)
    return Counter(r.status for r in results)


def score_with_progress(
    env: Any, completions: list[str], rows: list[dict], workers: int | None, progress: bool
) -> list[RewardResult]:
    """``env.score_batch`` in chunks under a rich progress bar (plain when `progress` is off)."""
    if not progress or len(rows) < 2:
        return env.score_batch(completions, rows, workers=workers)
    from rich.progress import Progress

    chunk = max(1, min(256, len(rows) // 20))
    results: list[RewardResult] = []
    with Progress(transient=False) as bar:
        task = bar.add_task(f"scoring {env.name}", total=len(rows))
        for i in range(0, len(rows), chunk):
            results += env.score_batch(completions[i : i + chunk], rows[i : i + chunk], workers)
            bar.update(task, advance=len(rows[i : i + chunk]))
    return results
