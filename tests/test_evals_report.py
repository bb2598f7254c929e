"""Aggregation and report: crossings, infra errors, the write_report API."""

from __future__ import annotations

import json

import pytest
from verirl.evals import write_report
from verirl.evals.report import crossover, problem_record


def _records(model: str, correct: list[int], n: int, env: str = "e") -> list[dict]:
    return [
        problem_record(model, env, f"p{i}", ["correct"] * c + ["incorrect"] * (n - c))
        for i, c in enumerate(correct)
    ]


def test_yue_style_crossing_is_found_and_reported(tmp_path):
    # "rl" is sharp: solves half the problems always, never the rest. "base" is diffuse:
    # solves every problem 1 time in 8. rl wins at k=1 (0.5 vs 0.125), base wins at k=8 (1 vs 0.5).
    recs = _records("base", [1] * 8, 8) + _records("rl", [8, 8, 8, 8, 0, 0, 0, 0], 8)
    summary = write_report(recs, tmp_path, ks=[1, 2, 4, 8], bootstrap_samples=100)
    base, rl = summary["models"]["base"], summary["models"]["rl"]
    assert rl["pass@1"] == 0.5 and base["pass@1"] == pytest.approx(0.125)
    assert base["pass@8"] == 1.0 and rl["pass@8"] == 0.5
    (c,) = summary["crossovers"]
    # base pass@k = k/8: 0.125, 0.25, 0.375, 0.5 (tie at k=4), 0.625 > 0.5 at k=5.
    assert c["leader_at_1"] == "rl" and c["cross_k"] == 5 and c["cross_between"] == [3, 5]
    report = (tmp_path / "report.md").read_text()
    assert "base overtakes it at k=5" in report
    assert json.loads((tmp_path / "summary.json").read_text())["crossovers"][0]["cross_k"] == 5


def test_no_crossing_and_identical_curves():
    assert crossover("a", [0.2, 0.4], "b", [0.1, 0.3])["text"].startswith("a leads or ties")
    same = crossover("a", [0.2, 0.4], "b", [0.2, 0.4])
    assert same["cross_k"] is None and "same pass@k" in same["text"]


def test_infra_errors_leave_n_and_are_reported(tmp_path):
    recs = [
        problem_record("m", "e", "p0", ["correct", "incorrect", "infra_error", "incorrect"]),
        problem_record("m", "e", "p1", ["correct"] * 4),
        problem_record("m", "e", "p2", ["infra_error"] * 4),
    ]
    summary = write_report(recs, tmp_path, ks=[1, 2, 4], bootstrap_samples=100)
    m = summary["models"]["m"]
    assert m["infra_errors"] == 5 and m["unscored_problems"] == 1
    assert m["problems"] == 2 and m["n"] == 3
    assert m["pass@1"] == pytest.approx((1 / 3 + 1) / 2)
    assert "pass@4" not in m and m["dropped_ks"] == [4]
    report = (tmp_path / "report.md").read_text()
    assert "5 samples had infra errors" in report and "k = [4] not reported" in report


def test_per_env_breakdown(tmp_path):
    recs = _records("m", [4, 4], 4, env="easy") + _records("m", [0, 0], 4, env="hard")
    summary = write_report(recs, tmp_path, ks=[1, 4], bootstrap_samples=100)
    per_env = summary["models"]["m"]["per_env"]
    assert per_env["easy"]["pass@1"] == 1.0 and per_env["hard"]["pass@4"] == 0.0
    assert summary["models"]["m"]["pass@1"] == 0.5
    report = (tmp_path / "report.md").read_text()
    assert "### easy" in report and "### hard" in report
    assert (tmp_path / "passk.png").stat().st_size > 5000
