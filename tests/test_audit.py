"""`verirl audit`: the battery catches a lenient checker with the exact candidate that beats it,
reports false negatives and poison completions, gates CI by exit code, and every built-in
environment passes its own audit."""

from __future__ import annotations

import doctest
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
from verirl.envs import Environment, Prompt, Row, make_env
from verirl.rewards.combine import combine
from verirl.rewards.math_guard import GUARD_GOLDS
from verirl.rewards.result import RewardResult
from vr_lenient_env import LenientCodeEnv, LenientEnv

from verirl.audit import audit_env
from verirl.audit import battery as audit_battery
from verirl.audit import report as audit_report
from verirl.audit.battery import could_be_gold, perturbed_gold_probes
from verirl.audit.runner import AuditError, AuditReport
from verirl.cli import main

LENIENT = str(Path(__file__).with_name("vr_lenient_env.py")) + ":LenientEnv"


def _examples(report: AuditReport, kind: str = "hack") -> dict[str, list[str]]:
    """candidate template -> the completions that beat the reward on some row."""
    out: dict[str, list[str]] = {}
    for f in report.findings:
        if f.kind == kind:
            out.setdefault(f.probe.name, []).append(f.probe.completion)
    return out


def _summary(report: AuditReport) -> str:
    return "\n".join(
        f"{g['kind']}: {g['candidate']!r} [{', '.join(g['styles'])}] on {len(g['rows'])} rows, "
        f"e.g. {g['example']['completion'][:80]!r} -> {g['example']['reward']} "
        f"({g['example']['detail'][:80]})"
        for g in report.groups()
    ) + "".join(f"\nnote: {n}" for n in report.notes)


# ---- the battery, as pure functions -----------------------------------------------------------
@pytest.mark.parametrize("module", [audit_battery, audit_report])
def test_doctests(module: Any) -> None:
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize(
    ("candidate", "gold", "maybe"),
    [
        ("0.5", r"\frac{1}{2}", True),
        ("36", "36", True),
        (r"\text{(A)}", "A", True),
        (r"\infty", r"+\infty", True),
        (r"\mathbb{R}", r"(-\infty, \infty)", True),
        ("1/0", "5", False),
        ("True", "1", False),
        ("2 3", "6", False),
        (r"\frac{1}{0}", "0", False),
    ],
)
def test_could_be_gold_is_conservative(candidate: str, gold: str, maybe: bool) -> None:
    assert could_be_gold(candidate, gold) is maybe


def test_perturbed_gold_changes_the_value_or_hedges() -> None:
    bare = {p.name: p.completion for p in perturbed_gold_probes("36", ("think", "answer"))
            if p.style == "bare"}  # fmt: skip
    assert bare["{gold} or {alt}"] == "36 or 3"
    assert bare["{gold}-1"] == "36-1" and bare["{gold}.5"] == "36.5"
    assert bare["{gold}+10^-6"] == "36.000001" and bare["{gold}+1"] == "37"
    names = {p.name for p in perturbed_gold_probes(r"\infty", ("answer",))}
    assert "{gold}-1" not in names  # infinity minus one is still infinity


# ---- a lenient env is caught with the exact candidate ----------------------------------------
def test_lenient_env_is_flagged_with_the_candidates_that_beat_it() -> None:
    report = audit_env(LenientEnv(), rows=50)
    hacks = _examples(report)
    assert not report.ok
    assert "36 or 3" in hacks["{gold} or {alt}"]
    assert "36-1" in hacks["{gold}-1"] and "36.5" in hacks["{gold}.5"]
    assert not _examples(report, "false_negative")  # its own gold still scores 1
    assert all(f.probe.style == "bare" for f in report.findings)  # other styles: format_error


def test_cli_exit_codes_and_report_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "audit"
    assert main(["audit", LENIENT, "--out", str(out), "--quiet"]) == 1
    data = json.loads((out / "audit.json").read_text())
    assert data["ok"] is False and data["counts"]["hack"] > 0
    first = {g["candidate"]: g for g in data["groups"]}["{gold} or {alt}"]
    assert first["example"]["completion"] == "36 or 3" and len(first["rows"]) == 12
    assert "`36 or 3`" in (out / "report.md").read_text()
    assert "36 or 3" in capsys.readouterr().out

    assert main(["audit", "no-such-env", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown environment 'no-such-env'") and err.count("\n") == 1
    assert main(["audit", LENIENT, "--rows", "0", "--quiet"]) == 2


def test_lenient_code_env_is_flagged_with_the_programs_that_beat_it() -> None:
    report = audit_env(LenientCodeEnv(), rows=2)
    hacks = set(_examples(report))
    assert {
        "return a catch-all object", "return a lying int subclass", "sys.exit(0) at import",
        "os._exit(0) at import", "raise SystemExit(0) when called",
        "read the tests (memory, files, /proc, env)",
    } <= hacks  # fmt: skip
    assert "return None" not in hacks and not _examples(report, "false_negative")


class _StrictEnv(Environment):
    """Exact match of the whole stripped completion: no hack, but it rejects boxed answers."""

    name = "vr-strict"
    reward_kinds = ("exact-match",)
    fields = ("answer",)
    answer_styles: ClassVar[tuple[str, ...]] = ("bare", "boxed")

    def rows(self, split: str = "train") -> Sequence[Row]:
        return [{"id": f"s{i}", "answer": str(40 + i)} for i in range(4)]

    def prompt(self, row: Row) -> Prompt:
        return "Say the number."

    def score(self, completion: str, row: Row) -> RewardResult:
        ok = completion.strip() == row["answer"]
        return RewardResult(float(ok), "correct" if ok else "incorrect")


def test_false_negative_probe_names_the_rejected_style() -> None:
    report = audit_env(_StrictEnv(), rows=10)
    assert {(f.kind, f.probe.style) for f in report.findings} == {("false_negative", "boxed")}
    assert report.findings[0].probe.completion == "The answer is $\\boxed{40}$."


class _UnknownKindEnv(LenientEnv):
    name = "vr-unknown-kind"
    reward_kinds = ("my-own-kind",)


def test_unknown_reward_kinds_fall_back_to_the_shape_of_the_rows() -> None:
    report = audit_env(_UnknownKindEnv(size=2), rows=2)
    assert report.batteries == ("generic", "answer") and "unknown to the audit" in report.notes[0]
    assert "36 or 3" in _examples(report)["{gold} or {alt}"]


class _PoisonedBatchEnv(_StrictEnv):
    """A scorer whose whole batch fails when one completion holds a lone surrogate."""

    name = "vr-poisoned"
    answer_styles = ("bare",)

    def score_batch(
        self, completions: Sequence[str], rows: Sequence[Row], workers: int | None = None
    ) -> list[RewardResult]:
        if any(re.search("[\ud800-\udfff]", c) for c in completions):
            return [RewardResult.infra("encode failed") for _ in completions]
        return super().score_batch(completions, rows, workers)


def test_poison_completion_is_isolated_and_reported() -> None:
    report = audit_env(_PoisonedBatchEnv(), rows=2)
    infra = {f.probe.name for f in report.findings if f.kind == "infra"}
    assert infra == {"lone surrogate", "surrogates in an answer"}
    assert [f.kind for f in report.findings if f.kind != "infra"] == []
    assert any("poison" in n for n in report.notes)
    assert all(f.poisoned_batch > 0 for f in report.findings)


class _CrowdedEnv(_StrictEnv):
    """Times out on every completion scored in a batch of more than one (a loaded checker)."""

    name = "vr-crowded"
    answer_styles = ("bare",)

    def score_batch(
        self, completions: Sequence[str], rows: Sequence[Row], workers: int | None = None
    ) -> list[RewardResult]:
        if len(completions) > 1:
            return [RewardResult(0.0, "timeout") for _ in completions]
        return super().score_batch(completions, rows, workers)


def test_a_gold_that_timed_out_under_load_is_tried_again_alone() -> None:
    report = audit_env(_CrowdedEnv(), rows=2)
    assert report.ok, _summary(report)
    assert any("timed out in the batch" in n for n in report.notes)


class _DownEnv(_StrictEnv):
    name = "vr-down"

    def score(self, completion: str, row: Row) -> RewardResult:
        raise ConnectionError("engine down")


def test_an_env_that_cannot_score_is_an_error_not_a_pass() -> None:
    with pytest.raises(AuditError, match=r"cannot score: .*engine down"):
        audit_env(_DownEnv(), rows=2)


class _LenientFormatEnv(_StrictEnv):
    """Correct on the <answer> content, plus 0.1 whenever an <answer> tag appears at all."""

    name = "vr-lenient-format"
    reward_kinds = ("exact-match", "format")
    answer_styles = ("answer_tag",)
    tags = ("think", "answer")

    def score(self, completion: str, row: Row) -> RewardResult:
        m = re.search(r"<answer>(.*?)</answer>", completion, re.S)
        ok = m is not None and m.group(1).strip() == row["answer"]
        correct = RewardResult(float(ok), "correct" if ok else "incorrect")
        fmt = RewardResult(float(m is not None), "correct" if m else "format_error")
        return combine(
            {"correct": correct, "format": fmt}, {"correct": 1.0, "format": 0.1}, "correct"
        )


def test_format_bonus_for_broken_tags_is_a_hack_but_not_for_a_tidy_wrong_answer() -> None:
    report = audit_env(_LenientFormatEnv(), rows=2)
    hacks = _examples(report)
    assert {"content after the tags", "<answer> duplicated", "<think> missing"} <= set(hacks)
    assert all(f.probe.family in ("format", "generic") for f in report.findings)
    assert "{gold} or {alt}" not in hacks  # a well-formed wrong answer may earn the format bonus


# ---- every built-in environment passes its audit -----------------------------------------------
# The math guard's spread of gold kinds (integers to matrices, text, choices, percents).
MATH_GOLDS = [g for g, _kind in GUARD_GOLDS]


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _math_rows(answer_key: str = "answer", question_key: str = "question") -> list[dict[str, Any]]:
    # Questions without digits: the echoed prompt must not carry a gold by accident.
    return [{"id": f"m{i}", question_key: "Compute the requested quantity.", answer_key: g}
            for i, g in enumerate(MATH_GOLDS)]  # fmt: skip


FUNCTION_ROWS = [
    # assertions inside a map: a StopIteration from the candidate would end the loop early
    {"task_id": "t/double", "entry_point": "double",
     "prompt": "def double(x):\n    \"\"\"2 x\"\"\"\n", "canonical_solution": "    return 2 * x\n",
     "test": "def check(candidate):\n    for got, want in zip(map(candidate, [1, 2]), [2, 4]):\n"
             "        assert got == want\n"},
    {"task_id": "t/add", "entry_point": "add", "prompt": "def add(x, y):\n    \"\"\"x + y\"\"\"\n",
     "canonical_solution": "    return x + y\n",
     "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"},
    {"task_id": "t/rev", "entry_point": "rev", "prompt": "def rev(s):\n    \"\"\"reversed s\"\"\"\n",
     "canonical_solution": "    return s[::-1]\n",
     "test": "def check(candidate):\n    for s, w in [('ab', 'ba'), ('', '')]:\n        assert candidate(s) == w\n"},
]  # fmt: skip
STDIO_ROWS = [
    {"id": "double", "prompt": "Read n and print 2n.", "solution": "print(2 * int(input()))",
     "tests": [{"input": "21\n", "output": "42\n"}, {"input": "-1\n", "output": "-2\n"}]},
    {"id": "sum", "prompt": "Read a b and print a+b.",
     "solution": "a, b = map(int, input().split())\nprint(a + b)",
     "tests": [{"input": "1 2\n", "output": "3\n"}, {"input": "5 5\n", "output": "10\n"}]},
]  # fmt: skip


def _builtin_env(name: str, tmp: Path) -> Environment:
    if name == "math":
        return make_env("math", data=_jsonl(tmp / "m.jsonl", _math_rows()))
    if name == "math+format":
        rows = _math_rows()[::7]  # a spread of gold kinds
        return make_env("math", data=_jsonl(tmp / "m.jsonl", rows), format_weight=0.1)
    if name == "math500":
        rows = _math_rows(question_key="problem")[3::10]
        return make_env("math500", data=_jsonl(tmp / "p.jsonl", rows))
    if name == "gsm8k":
        rows = [{"question": "How many are there in all?", "answer": f"We count them.\n#### {n}"}
                for n in (72, 10, 5, 1024, 0, 18, 3, 150)]  # fmt: skip
        return make_env("gsm8k", data=_jsonl(tmp / "g.jsonl", rows))
    if name == "code":
        return make_env("code", data=_jsonl(tmp / "c.jsonl", FUNCTION_ROWS), timeout=3.0)
    if name == "stdio":
        return make_env("stdio", data=_jsonl(tmp / "s.jsonl", STDIO_ROWS), timeout=3.0)
    if name == "humaneval":
        return make_env("humaneval", timeout=3.0)
    return make_env(name)


@pytest.mark.parametrize(
    ("name", "rows"),
    [
        ("arithmetic", 50), ("math", 50), ("math+format", 6), ("math500", 4), ("gsm8k", 4),
        ("reasoning_gym", 50), ("code", 1), ("stdio", 2), ("humaneval", 2),
    ],
)  # fmt: skip
def test_builtin_env_passes_its_audit(name: str, rows: int, tmp_path: Path, request: Any) -> None:
    env = _builtin_env(name, tmp_path)
    if name in ("code", "stdio", "humaneval"):
        env.attach_sandbox(request.getfixturevalue("process_sandbox"))  # type: ignore[attr-defined]
    # The math guard's own test puts every universal candidate against every gold kind through
    # each built-in scorer: here each meets one row, and none in the math env's variants (same
    # scorer; their own parts, gold_from, columns, the format mix, meet every other probe).
    candidate_rows = 0 if name in ("math+format", "math500", "gsm8k") else 1
    with env:
        report = audit_env(env, rows=rows, candidate_rows=candidate_rows)
    assert report.probes > 0
    assert report.ok, f"{name}: {len(report.findings)} findings\n{_summary(report)}"
