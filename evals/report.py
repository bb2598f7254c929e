"""From per-problem counts (n, c) to results.jsonl, summary.json, passk.png and report.md.

``summary.json`` layout::

    {"suite": ..., "ks": [1, 2, 4], "confidence": 0.95, "problems": 50,
     "models": {"base": {"pass@1": 0.12, "pass@2": 0.2, ..., "maj@4": 0.15, ..., "avg@16": 0.12,
                         "ci": {"pass@1": [lo, hi], ..., "maj@4": [lo, hi]},
                         "problems": 50, "n": 16, "infra_errors": 0, "dropped_ks": [],
                         "statuses": {"correct": 96, ...},
                         "per_env": {"arithmetic": {"pass@1": ..., "ci": {...}, "problems": 50}},
                         "curve": {"k": [1..n], "mean": [...], "lo": [...], "hi": [...]}}},
     "crossovers": [{"models": ["base", "grpo"], "cross_k": 8, "text": "..."}]}

Samples with status ``infra_error`` say nothing about the completion, so they are left out of n
(and counted); a problem left with no scored sample is left out of the averages (and counted).
maj@k (majority vote over k samples' answers, ``evals/vote.py``) is reported when every problem
of the block has answer clusters (envs whose rows have an ``answer``); avg@n is the accuracy
over all n samples (the mean of c/n, equal to the unbiased pass@1).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from verirl.evals.passk import (
    avg_at_n,
    bootstrap_ci,
    bootstrap_curve_ci,
    maj_at_k,
    per_problem_matrix,
)

from verirl.jsonl import atomic_writer, write_jsonl

_TIE = 1e-9


class BootstrapLike(Protocol):
    samples: int
    confidence: float


def problem_record(
    model: str,
    env: str,
    problem_id: str,
    statuses: Sequence[str],
    votes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One row of results.jsonl: a problem's counts for one model, and (``votes``, from
    ``evals.vote.clusters_of_record``) its scored samples' answer clusters for maj@k.

    >>> r = problem_record("m", "arithmetic", "test-0", ["correct", "incorrect", "infra_error"])
    >>> r["n"], r["c"], r["n_infra"]
    (2, 1, 1)
    """
    counts = Counter(statuses)
    n_infra = counts.get("infra_error", 0)
    rec: dict[str, Any] = {
        "model": model,
        "env": env,
        "problem_id": problem_id,
        "n": len(statuses) - n_infra,
        "c": counts.get("correct", 0),
        "n_infra": n_infra,
        "statuses": dict(sorted(counts.items())),
    }
    if votes is not None:
        rec["votes"] = votes
    return rec


def _maj(r: dict[str, Any], k: int) -> float:
    return maj_at_k(r["votes"]["clusters"], r["votes"]["credit"], k)


def _block(
    recs: Sequence[dict[str, Any]], ks: Sequence[int], boot: BootstrapLike
) -> dict[str, Any]:
    """pass@k means, CIs and the full curve for one set of problems (all with n >= 1)."""
    n = np.array([r["n"] for r in recs])
    c = np.array([r["c"] for r in recs])
    m = per_problem_matrix(n, c)  # [P, K]
    alpha = 1 - boot.confidence
    lo, hi = bootstrap_curve_ci(m, n_boot=boot.samples, alpha=alpha, seed=0)
    mean = m.mean(axis=0)
    kmax = m.shape[1]
    out: dict[str, Any] = {f"pass@{k}": float(mean[k - 1]) for k in ks if k <= kmax}
    out["ci"] = {f"pass@{k}": [float(lo[k - 1]), float(hi[k - 1])] for k in ks if k <= kmax}
    if all("votes" in r for r in recs):
        for k in ks:
            if k <= kmax:
                per = [_maj(r, k) for r in recs]
                out[f"maj@{k}"] = float(np.mean(per))
                out["ci"][f"maj@{k}"] = list(bootstrap_ci(per, n_boot=boot.samples, alpha=alpha))
    out[f"avg@{kmax}"] = avg_at_n(n, c)
    out["problems"] = len(recs)
    out["n"] = kmax
    out["curve"] = {
        "k": list(range(1, kmax + 1)),
        "mean": mean.tolist(),
        "lo": lo.tolist(),
        "hi": hi.tolist(),
    }
    return out


def summarize(
    records: Sequence[dict[str, Any]], ks: Sequence[int], boot: BootstrapLike
) -> dict[str, Any]:
    """The ``models`` and ``crossovers`` parts of summary.json (see the module docstring)."""
    models: dict[str, Any] = {}
    for name in dict.fromkeys(r["model"] for r in records):
        recs = [r for r in records if r["model"] == name]
        scored = [r for r in recs if r["n"] >= 1]
        statuses: Counter[str] = Counter()
        for r in recs:
            statuses.update(r["statuses"])
        entry: dict[str, Any] = {
            "infra_errors": sum(r["n_infra"] for r in recs),
            "unscored_problems": len(recs) - len(scored),
            "statuses": dict(sorted(statuses.items())),
        }
        if not scored:
            entry.update(problems=0, dropped_ks=list(ks), error="no problem has a scored sample")
            models[name] = entry
            continue
        block = _block(scored, ks, boot)
        entry = {**block, **entry}
        entry["dropped_ks"] = [k for k in ks if k > block["n"]]
        entry["per_env"] = {}
        for env in dict.fromkeys(r["env"] for r in scored):
            sub = _block([r for r in scored if r["env"] == env], ks, boot)
            del sub["curve"]
            entry["per_env"][env] = sub
        models[name] = entry
    crossovers = [
        crossover(a, models[a]["curve"]["mean"], b, models[b]["curve"]["mean"])
        for a, b in combinations([m for m in models if "curve" in models[m]], 2)
    ]
    return {"models": models, "crossovers": crossovers}


def crossover(a: str, ya: Sequence[float], b: str, yb: Sequence[float]) -> dict[str, Any]:
    """Where the pass@k curves of models a and b cross (curves indexed k = 1..K).

    ``cross_k`` is the first k at which the model behind at k = 1 is strictly ahead (None if it
    never is within the shared k range).

    >>> crossover("base", [0.1, 0.4, 0.8], "rl", [0.3, 0.5, 0.7])["cross_k"]
    3
    >>> crossover("base", [0.1, 0.2], "rl", [0.3, 0.5])["cross_k"] is None
    True
    """
    kmax = min(len(ya), len(yb))
    d = np.asarray(ya[:kmax]) - np.asarray(yb[:kmax])  # > 0: a ahead
    out: dict[str, Any] = {"models": [a, b], "k_max": kmax, "cross_k": None, "cross_between": None}
    nonzero = np.flatnonzero(np.abs(d) > _TIE)
    if nonzero.size == 0:
        out["text"] = f"{a} and {b} have the same pass@k for every k ≤ {kmax}."
        out["leader_at_1"] = None
        return out
    first = int(nonzero[0])
    sign = np.sign(d[first])
    lead, trail = (a, b) if sign > 0 else (b, a)
    out["leader_at_1"] = lead if first == 0 else None
    flipped = np.flatnonzero(np.sign(d) == -sign)
    ya1, yb1 = float(ya[0]), float(yb[0])
    start = f"at k=1 {a} {ya1:.3f} vs {b} {yb1:.3f}"
    if flipped.size == 0:
        out["text"] = (
            f"{lead} leads or ties at every k ≤ {kmax} ({start}); the curves do not cross."
        )
        return out
    k_cross = int(flipped[0]) + 1
    ahead = np.flatnonzero(np.sign(d[: k_cross - 1]) == sign)
    k_before = int(ahead[-1]) + 1 if ahead.size else 1
    out["cross_k"] = k_cross
    out["cross_between"] = [k_before, k_cross]
    yak, ybk = float(ya[kmax - 1]), float(yb[kmax - 1])
    out["text"] = (
        f"{lead} leads at small k ({start}); {trail} overtakes it at k={k_cross} "
        f"(crossing between k={k_before} and k={k_cross}); at k={kmax}: "
        f"{a} {yak:.3f} vs {b} {ybk:.3f}."
    )
    return out


def per_problem_rows(records: Sequence[dict[str, Any]], ks: Sequence[int]) -> list[dict[str, Any]]:
    """results.jsonl rows: the counts plus each problem's own pass@k for every k ≤ its n."""
    from verirl.evals.passk import pass_at_k

    rows = []
    for r in records:
        row = dict(r)
        for k in ks:
            if k <= r["n"]:
                row[f"pass@{k}"] = pass_at_k(r["n"], r["c"], k)
                if "votes" in r:
                    row[f"maj@{k}"] = _maj(r, k)
        rows.append(row)
    return rows


def write_outputs(
    records: Sequence[dict[str, Any]],
    ks: Sequence[int],
    boot: BootstrapLike,
    out_dir: str | Path,
    meta: dict[str, Any],
) -> dict[str, Any]:
    """Write results.jsonl, summary.json, passk.png, report.md; return the summary."""
    from verirl.evals.plot import plot_passk

    out = Path(out_dir)
    summary = {
        **meta,
        "ks": list(ks),
        "confidence": boot.confidence,
        "problems": len({(r["env"], r["problem_id"]) for r in records}),
        **summarize(records, ks, boot),
    }
    write_jsonl(out / "results.jsonl", per_problem_rows(records, ks))
    with atomic_writer(out / "summary.json") as f:
        json.dump(summary, f, indent=2)
    plot_passk(summary, out / "passk.png")
    with atomic_writer(out / "report.md") as f:
        f.write(render_report(summary))
    return summary


def write_report(
    records: Sequence[dict[str, Any]],
    out_dir: str | Path,
    ks: Sequence[int] = (1, 2, 4, 8, 16),
    confidence: float = 0.95,
    bootstrap_samples: int = 1000,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The four outputs from per-problem records (``problem_record(model, env, id, statuses)``
    for each model and problem), for callers that sample and score on their own."""
    from verirl.evals.suite import BootstrapSpec

    boot = BootstrapSpec(samples=bootstrap_samples, confidence=confidence)
    return write_outputs(records, ks, boot, out_dir, meta or {})


def _fmt(entry: dict[str, Any], key: str) -> str:
    if key not in entry:
        return "–"
    if key not in entry.get("ci", {}):
        return f"{entry[key]:.3f}"
    lo, hi = entry["ci"][key]
    return f"{entry[key]:.3f} [{lo:.2f}, {hi:.2f}]"


def _columns(rows: dict[str, dict[str, Any]], ks: Sequence[int]) -> list[str]:
    """pass@k for every k, then maj@k where some model has it, then avg@n."""
    cols = [f"pass@{k}" for k in ks]
    cols += [f"maj@{k}" for k in ks if any(f"maj@{k}" in e for e in rows.values())]
    avg = dict.fromkeys(key for e in rows.values() for key in e if key.startswith("avg@"))
    return cols + list(avg)


def _table(rows: dict[str, dict[str, Any]], ks: Sequence[int]) -> list[str]:
    cols = _columns(rows, ks)
    head = "| model | problems | " + " | ".join(cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 2)]
    for name, e in rows.items():
        cells = " | ".join(_fmt(e, c) for c in cols)
        lines.append(f"| {name} | {e.get('problems', 0)} | {cells} |")
    return lines


def render_report(summary: dict[str, Any]) -> str:
    """report.md: the pass@k table, where the curves cross, the per-environment breakdown."""
    ks, models = summary["ks"], summary["models"]
    conf = round(100 * summary["confidence"])
    lines = [f"# pass@k: {summary.get('suite', 'samples')}", ""]
    if summary.get("description"):
        lines += [summary["description"], ""]
    s = summary.get("sampling")
    n_text = f"n = {summary['n']} samples per problem" if summary.get("n") else "n as given"
    detail = f"{summary['problems']} problems, {n_text}"
    if s:
        detail += (
            f", temperature {s['temperature']}, top-p {s['top_p']}, "
            f"max {s['max_tokens']} new tokens, seed {summary.get('seed')}"
        )
    lines += [
        detail + ". pass@k is the unbiased estimator of Chen et al. (2021); maj@k the chance "
        "that the majority answer of k samples is correct (answers grouped by the env's "
        "checker); avg@n the accuracy over all n samples; brackets are "
        f"{conf}% percentile-bootstrap intervals over problems.",
        "",
        "## pass@k, maj@k, avg@n",
        "",
        *_table(models, ks),
        "",
        "![pass@k curves](passk.png)",
        "",
        "## Where the curves cross",
        "",
    ]
    if summary["crossovers"]:
        lines += [f"- {c['text']}" for c in summary["crossovers"]]
    else:
        lines.append("- Only one model: nothing to compare.")
    lines.append("")
    envs = list(dict.fromkeys(e for m in models.values() for e in m.get("per_env", {})))
    lines += ["## Per environment", ""]
    for env in envs:
        rows = {m: e["per_env"][env] for m, e in models.items() if env in e.get("per_env", {})}
        lines += [f"### {env}", "", *_table(rows, ks), ""]
    statuses = sorted({st for m in models.values() for st in m["statuses"]})
    lines += ["## Verdicts per sample", ""]
    lines.append("| model | " + " | ".join(statuses) + " |")
    lines.append("|" + "---|" * (len(statuses) + 1))
    for name, e in models.items():
        lines.append(
            f"| {name} | " + " | ".join(str(e["statuses"].get(s, 0)) for s in statuses) + " |"
        )
    notes = []
    for name, e in models.items():
        if e.get("infra_errors"):
            notes.append(
                f"{name}: {e['infra_errors']} samples had infra errors (the checker, not the "
                "completion, failed); they are left out of n."
            )
        if e.get("unscored_problems"):
            notes.append(f"{name}: {e['unscored_problems']} problems had no scored sample.")
        if e.get("dropped_ks"):
            notes.append(
                f"{name}: k = {e['dropped_ks']} not reported: some problem has fewer scored "
                f"samples than k (n = {e.get('n', 0)})."
            )
    if notes:
        lines += ["", "## Notes", "", *[f"- {x}" for x in notes]]
    return "\n".join(lines) + "\n"
