"""Answer clusters for maj@k: which samples of a problem give the same final answer.

Two samples are in one cluster when their extracted answers are equal as strings, or when the
environment's own checker accepts one sample's completion against the other's answer as gold
(``env.score(text, {**row, "answer": other})``), so ``0.5`` and ``\\frac{1}{2}`` vote together
exactly when the checker would grade them alike. The answer is ``env.vote_answer(completion)``
when an environment defines it, else the math extractor's final answer (``\\boxed{}``, ``####``,
the last number); environments whose rows have no ``answer`` column (code) get no clusters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from verirl.envs.base import Environment, Row


def vote_answer(env: Environment, completion: str) -> str | None:
    """The answer a completion votes for (None: it gives none and abstains).

    >>> from verirl.envs.arithmetic import ArithmeticEnv
    >>> vote_answer(ArithmeticEnv(), "42"), vote_answer(ArithmeticEnv(), "no idea")
    ('42', None)
    """
    own = getattr(env, "vote_answer", None)
    if callable(own):
        got = own(completion)
        return None if got is None else str(got)
    from verirl.rewards.math_extract import extract_answer

    found = extract_answer(completion)
    return found.answer if found is not None and found.answer else None


def _same(env: Environment, completion: str, gold: str, row: Row) -> bool:
    try:
        return bool(env.score(completion, {**row, "answer": gold}).status == "correct")
    except Exception:  # a checker that cannot compare these two does not merge them
        return False


def answer_clusters(
    env: Environment, completions: Sequence[str], statuses: Sequence[str], row: Row
) -> tuple[list[int | None], list[float]] | None:
    """(cluster id per sample, credit per cluster) for ``maj_at_k``, or None when the env's
    rows carry no ``answer`` to vote on. A cluster's credit is the share of its samples whose
    status is ``correct``. Samples with status ``infra_error`` must be left out by the caller.

    >>> from verirl.envs.arithmetic import ArithmeticEnv
    >>> answer_clusters(ArithmeticEnv(), ["7", "8", "7", "?"],
    ...                 ["correct", "incorrect", "correct", "format_error"], {"answer": "7"})
    ([0, 1, 0, None], [1.0, 0.0])
    """
    if "answer" not in row:
        return None
    reps: list[tuple[str, str]] = []  # (answer, completion) of each cluster's first sample
    ids: list[int | None] = []
    for text in completions:
        ans = vote_answer(env, text)
        if ans is None:
            ids.append(None)
            continue
        cid = next((i for i, (a, _) in enumerate(reps) if a == ans), None)
        if cid is None:
            cid = next((i for i, (a, _) in enumerate(reps) if _same(env, text, a, row)), None)
        if cid is None:
            reps.append((ans, text))
            cid = len(reps) - 1
        ids.append(cid)
    hits: list[list[bool]] = [[] for _ in reps]
    for cid, st in zip(ids, statuses, strict=True):
        if cid is not None:
            hits[cid].append(st == "correct")
    return ids, [sum(h) / len(h) for h in hits]


def clusters_of_record(env: Environment, samples: Sequence[dict[str, Any]], row: Row) -> Any:
    """``answer_clusters`` of a cached record's scored samples (infra errors left out), as
    ``{"clusters": [...], "credit": [...]}`` for ``problem_record``; None without answers."""
    scored = [s for s in samples if s["status"] != "infra_error"]
    got = answer_clusters(env, [s["text"] for s in scored], [s["status"] for s in scored], row)
    return None if got is None else {"clusters": got[0], "credit": got[1]}
