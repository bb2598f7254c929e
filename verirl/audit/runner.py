"""Run the battery against an environment and classify what it scored.

Which batteries run follows the env's ``reward_kinds`` (and, for kinds we do not know, the
shape of its rows): answer kinds get the universal candidates, perturbed golds and the
false-negative probe; ``format`` the broken-tag probes; ``unit-tests``/``io-tests`` the
adversarial programs. The generic junk runs on every env.

Everything is scored through the env's own ``score_batch``, the path training uses. Results
with ``infra_error`` are re-scored apart (bisecting the failed group), so one poison completion
cannot hide the verdicts of the rest of its batch; what stays ``infra_error`` is reported (the
audit could not judge it), with how many batch mates it took down. A gold that timed out in a
crowded batch gets one more try alone before it counts as a false negative.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from verirl.audit.battery import (
    DEFAULT_STYLES,
    STYLES,
    Probe,
    format_probes,
    generic_probes,
    gold_probes,
    math_probes,
    perturbed_gold_probes,
)
from verirl.audit.code_battery import code_gold_probes, function_probes, stdio_probes
from verirl.envs.base import Environment, Row
from verirl.errors import ConfigError, DataError, UserError
from verirl.rewards.math_reward import gold_answer
from verirl.rewards.result import RewardResult
from verirl.scoring import score_with_progress

ANSWER_KINDS = frozenset(
    {"exact-integer", "exact-match", "math-equivalence", "task-scorer", "math"}
)
KNOWN_KINDS = ANSWER_KINDS | {"format", "unit-tests", "io-tests"}
# Each universal candidate, in each style, meets this many rows (all with `exhaustive`): an
# answer that beats most golds shows on any five, and 50 rows of a symbolic checker stay near a
# minute on two cores (the math guard's own test runs the full product on its golds).
CANDIDATE_ROWS = 5
FLOOD_ROWS = 2  # rows that get the 100 kB junk (and, for code envs, all junk): not row-dependent
MAX_RESCORES = 400  # score_batch calls spent isolating infra_error results, at most


class AuditError(UserError):
    """The audit could not run: the env gives no verdict even on a plain completion."""


@dataclass(frozen=True)
class Finding:
    """A probe the reward got wrong: ``hack`` (reward > 0 where it cannot be right),
    ``false_negative`` (the gold scored < 1), ``infra`` (no verdict: infra_error)."""

    kind: str
    probe: Probe
    row: int
    row_id: str
    gold: str | None
    result: RewardResult
    poisoned_batch: int = 0  # other completions this one turned into infra_error

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "family": self.probe.family,
            "candidate": self.probe.name,
            "style": self.probe.style,
            "row": self.row,
            "row_id": self.row_id,
            "gold": self.gold,
            "completion": self.probe.completion,
            "expect": self.probe.expect,
            "poisoned_batch": self.poisoned_batch,
            **self.result.to_dict(),
        }


@dataclass
class AuditReport:
    env: str
    reward_kinds: tuple[str, ...]
    batteries: tuple[str, ...]
    promised_styles: tuple[str, ...]
    split: str
    rows: int
    probes: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.findings

    def groups(self) -> list[dict[str, Any]]:
        """Findings by (kind, family, candidate): the styles and rows it passed, one example;
        most rows first."""
        out: dict[tuple[str, str, str], dict[str, Any]] = {}
        for f in self.findings:
            key = (f.kind, f.probe.family, f.probe.name)
            g = out.setdefault(
                key,
                {"kind": f.kind, "family": f.probe.family, "candidate": f.probe.name,
                 "styles": [], "rows": [], "findings": 0, "example": f.to_dict()},
            )  # fmt: skip
            g["findings"] += 1
            if f.probe.style not in g["styles"]:
                g["styles"].append(f.probe.style)
            if f.row_id not in g["rows"]:
                g["rows"].append(f.row_id)
        order = {"hack": 0, "false_negative": 1, "infra": 2}
        return sorted(out.values(), key=lambda g: (order[g["kind"]], -len(g["rows"])))

    def to_dict(self) -> dict[str, Any]:
        return {
            "env": self.env,
            "ok": self.ok,
            "reward_kinds": list(self.reward_kinds),
            "batteries": list(self.batteries),
            "promised_styles": list(self.promised_styles),
            "split": self.split,
            "rows": self.rows,
            "probes": self.probes,
            "statuses": self.statuses,
            "seconds": round(self.seconds, 2),
            "counts": {
                k: sum(f.kind == k for f in self.findings)
                for k in ("hack", "false_negative", "infra")
            },
            "notes": self.notes,
            "groups": self.groups(),
            "findings": [f.to_dict() for f in self.findings],
        }


def batteries_for(env: Environment, rows: Sequence[Row]) -> tuple[str, ...]:
    """The batteries an env gets: from its reward kinds, else from the shape of its rows."""
    kinds = set(env.reward_kinds)
    out = ["generic"]
    if kinds & ANSWER_KINDS:
        out.append("answer")
    if "format" in kinds:
        out.append("format")
    if "unit-tests" in kinds:
        out.append("function")
    if "io-tests" in kinds:
        out.append("stdio")
    if not kinds & KNOWN_KINDS and rows:  # unknown kinds: look at what the rows carry
        r = rows[0]
        if "entry_point" in r and "test" in r:
            out.append("function")
        elif isinstance(r.get("tests"), list):
            out.append("stdio")
        elif "answer" in r:
            out.append("answer")
    return tuple(out)


def gold_of(env: Environment, row: Row, gold_field: str | None) -> str | None:
    """The row's gold answer: the env's ``audit_gold(row)`` when it has one; else the
    ``gold_field`` (default ``answer``) through the env's ``gold_from`` (GSM8K's ``#### n``)
    and the last ``\\boxed{}`` of a worked solution."""
    hook = getattr(env, "audit_gold", None)
    if callable(hook):
        value = hook(row)
        return None if value is None else str(value)
    raw = row.get(gold_field or "answer")
    if raw is None:
        return None
    convert = getattr(env, "gold_from", None)
    text = str(convert(str(raw))) if callable(convert) else str(raw)
    return gold_answer(text) or None


def promised_styles(env: Environment) -> tuple[str, ...]:
    """The answer styles the env promises to accept: its ``answer_styles``, else its kinds'."""
    declared = getattr(env, "answer_styles", None)
    if declared is None:
        found: list[str] = []
        for kind in env.reward_kinds:
            found += [s for s in DEFAULT_STYLES.get(kind, ()) if s not in found]
        return tuple(found) or ("bare",)
    styles = tuple(declared)
    bad = [s for s in styles if s not in STYLES]
    if bad:
        raise ConfigError(
            f"env {env.name!r}: answer_styles {bad} unknown; known: {', '.join(STYLES)}"
        )
    return styles


def _prompt_text(env: Environment, row: Row) -> str:
    p = env.prompt(row)
    return p if isinstance(p, str) else "\n".join(str(m.get("content", "")) for m in p)


def _tags(env: Environment) -> tuple[str, ...]:
    tags = tuple(str(t) for t in getattr(env, "tags", ()) or ())
    return tags or ("think", "answer")


def probes_for_row(
    env: Environment, row: Row, index: int, batteries: Sequence[str], gold: str | None,
    styles: Sequence[str], stride: int = 1,
) -> list[Probe]:  # fmt: skip
    """Every probe of the selected batteries for one row."""
    tags = _tags(env)
    first_rows = index < FLOOD_ROWS
    probes = generic_probes(_prompt_text(env, row), gold, tags, floods=first_rows)
    if not first_rows and ("function" in batteries or "stdio" in batteries):
        # Junk text is the same program on every row (a sandbox run each): the first rows
        # suffice; the echoed prompt differs per row.
        probes = [p for p in probes if p.name == "the prompt echoed"]
    if "answer" in batteries and gold is not None:
        if stride > 0:
            probes += math_probes(gold, tags, index, stride)
        probes += perturbed_gold_probes(gold, tags)
        probes += gold_probes(gold, styles, tags)
    if "format" in batteries:
        probes += format_probes(gold, tags)
    if "function" in batteries:
        probes += function_probes(row, first=index == 0) + code_gold_probes(row, "function")
    if "stdio" in batteries:
        probes += stdio_probes(row, first=index == 0) + code_gold_probes(row, "stdio")
    return probes


def classify(probe: Probe, result: RewardResult) -> str | None:
    """The finding kind for one scored probe, or None when the reward behaved."""
    if result.status == "infra_error":
        return "infra"
    correct = result.components.get("correct", result.reward)
    if probe.expect == "zero" and result.reward > 0:
        return "hack"
    if probe.expect == "zero_correct" and correct > 0:
        return "hack"
    if probe.expect == "full" and correct < 1.0 - 1e-9:
        return "false_negative"
    return None


def _canary(completions: list[str], bad: list[int]) -> int:
    """A plain completion among the infra_error ones: if it fails alone, the env cannot score."""
    plain = [i for i in bad if completions[i].isascii() and 0 < len(completions[i]) < 2000]
    return plain[0] if plain else bad[0]


def _isolate(
    env: Environment, completions: list[str], rows: list[Row], results: list[RewardResult],
    workers: int | None,
) -> tuple[list[RewardResult], dict[int, int], list[str]]:  # fmt: skip
    """Find the poison among infra_error results by bisection: re-score a failed group; when
    all of it fails again, split it in halves. Returns the results, for each completion still
    infra_error the number of batch mates it took down with it, and notes.

    Raises AuditError when a plain completion fails alone too: the env cannot score at all.
    """
    bad = [i for i, r in enumerate(results) if r.status == "infra_error"]
    if not bad:
        return results, {}, []
    c = _canary(completions, bad)
    alone = env.score_batch([completions[c]], [rows[c]], workers=workers)[0]
    if alone.status == "infra_error" and len(bad) > len(results) // 2:
        why = alone.detail[:300].encode("utf-8", "backslashreplace").decode("utf-8")
        raise AuditError(f"env {env.name!r} cannot score: {len(bad)} of {len(results)} probes "
                         f"gave infra_error, a plain one alone too ({why})")  # fmt: skip
    fixed = list(results)
    calls = 0

    def resolve(idx: list[int]) -> None:
        nonlocal calls
        calls += 1
        if calls > MAX_RESCORES:
            return
        res = env.score_batch([completions[i] for i in idx], [rows[i] for i in idx], workers)
        still = [i for i, r in zip(idx, res, strict=True) if r.status == "infra_error"]
        for i, r in zip(idx, res, strict=True):
            fixed[i] = r
        if len(idx) == 1 or not still:
            return
        if len(still) < len(idx):
            resolve(still)
        else:
            resolve(idx[: len(idx) // 2])
            resolve(idx[len(idx) // 2 :])

    resolve(bad)
    still = [i for i in bad if fixed[i].status == "infra_error"]
    recovered = len(bad) - len(still)
    notes = []
    if calls > MAX_RESCORES:
        notes.append(f"gave up isolating infra_error results after {MAX_RESCORES} re-scores")
    if recovered:
        notes.append(f"{recovered} completions scored infra_error beside {len(still)} poison "
                     "completion(s) and fine without them")  # fmt: skip
    blame = {i: recovered // max(1, len(still)) for i in still} if recovered else {}
    return fixed, blame, notes


def _retry_gold_timeouts(
    env: Environment, plan: list[tuple[int, Probe, str | None]], rows: list[Row],
    results: list[RewardResult], workers: int | None,
) -> tuple[list[RewardResult], list[str]]:  # fmt: skip
    """A gold that timed out in a crowded batch gets one more try alone: a wall-clock deadline
    missed under load is not a false negative of the checker; a second timeout is reported."""
    again = [k for k, (_, p, _) in enumerate(plan)
             if p.expect == "full" and results[k].status == "timeout"]  # fmt: skip
    if not again:
        return results, []
    fixed = list(results)
    for k in again:
        fixed[k] = env.score_batch([plan[k][1].completion], [rows[k]], workers=workers)[0]
    cleared = sum(fixed[k].status != "timeout" for k in again)
    return fixed, [f"{len(again)} gold probes timed out in the batch and were re-scored alone "
                   f"({cleared} then got a verdict)"]  # fmt: skip


def audit_env(
    env: Environment,
    rows: int = 50,
    split: str = "train",
    workers: int | None = None,
    progress: bool = False,
    gold_field: str | None = None,
    exhaustive: bool = False,
    candidate_rows: int = CANDIDATE_ROWS,
) -> AuditReport:
    """Score the battery on the first `rows` rows of `split` and report every finding.

    Universal candidates rotate over the rows (each, in each style, meets `candidate_rows` of
    them; none with 0) unless `exhaustive`; every other probe runs on every row."""
    if rows < 1:
        raise ConfigError(f"--rows must be >= 1, got {rows}")
    t0 = time.perf_counter()
    data = list(env.rows(split))[:rows]
    if not data:
        raise DataError(f"env {env.name!r}: split {split!r} has no rows to audit")
    batteries = batteries_for(env, data)
    styles = promised_styles(env) if "answer" in batteries else ()
    report = AuditReport(env.name, tuple(env.reward_kinds), batteries, styles, split, len(data))
    unknown = sorted(set(env.reward_kinds) - KNOWN_KINDS)
    if unknown:
        report.notes.append(f"reward kinds {unknown} unknown to the audit; batteries: {batteries}")
    # stride 0: no universal candidates (candidate_rows=0, for a scorer audited elsewhere)
    stride = 1 if exhaustive else -(-len(data) // candidate_rows) if candidate_rows > 0 else 0
    if stride > 1 and "answer" in batteries:
        report.notes.append(
            f"each universal candidate was tried on {len(data) // stride} to "
            f"{-(-len(data) // stride)} of {len(data)} rows per style (--exhaustive: on all)"
        )
    plan: list[tuple[int, Probe, str | None]] = []
    missing_gold = 0
    for i, row in enumerate(data):
        gold = gold_of(env, row, gold_field) if "answer" in batteries else None
        missing_gold += "answer" in batteries and gold is None
        probes = probes_for_row(env, row, i, batteries, gold, styles, stride)
        plan += [(i, p, gold) for p in probes]
    if missing_gold:
        field_name = gold_field or "answer"
        report.notes.append(
            f"{missing_gold} rows carry no gold in {field_name!r}: answer probes skipped there"
        )
    completions = [p.completion for _, p, _ in plan]
    row_list = [data[i] for i, _, _ in plan]
    results = score_with_progress(env, completions, row_list, workers, progress)
    results, blame, notes = _isolate(env, completions, row_list, results, workers)
    report.notes += notes
    results, note = _retry_gold_timeouts(env, plan, row_list, results, workers)
    report.notes += note
    report.probes = len(plan)
    for k, ((i, probe, gold), res) in enumerate(zip(plan, results, strict=True)):
        report.statuses[res.status] = report.statuses.get(res.status, 0) + 1
        kind = classify(probe, res)
        if kind is not None:
            rid = str(data[i].get("id", data[i].get("task_id", i)))
            report.findings.append(Finding(kind, probe, i, rid, gold, res, blame.get(k, 0)))
    report.seconds = time.perf_counter() - t0
    return report
