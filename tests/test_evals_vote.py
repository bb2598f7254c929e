"""maj@k and avg@n (evals/passk.py), answer clusters by the env's checker (evals/vote.py), and the
summary/report columns they add (evals/report.py)."""

from __future__ import annotations

import json

import pytest
from verirl.envs.arithmetic import ArithmeticEnv
from verirl.envs.registry import make_env
from verirl.evals.passk import avg_at_n, maj_at_k, pass_at_k
from verirl.evals.report import problem_record, write_report
from verirl.evals.vote import answer_clusters, clusters_of_record

from verirl.errors import UserError


def test_maj_at_k_by_hand():
    # samples a a b b c, only a is right
    clusters, credit = [0, 0, 1, 1, 2], [1.0, 0.0, 0.0]
    assert maj_at_k(clusters, credit, 1) == pytest.approx(0.4) == pass_at_k(5, 2, 1)
    # k = 3, the 10 subsets: aab x3 -> 1; abb x2, bbc -> 0; abc x4: a 3-way tie -> 1/3
    assert maj_at_k(clusters, credit, 3) == pytest.approx((3 + 4 / 3) / 10)
    assert maj_at_k(clusters, credit, 5) == pytest.approx(0.5)  # a 2:2 tie of a and b
    # abstentions do not vote; all abstaining scores 0
    assert maj_at_k([None, None, 0], [1.0], 3) == 1.0 and maj_at_k([None, None], [], 2) == 0.0
    with pytest.raises(UserError, match="larger than the number of samples"):
        maj_at_k([0, 0], [1.0], 3)


def test_maj_at_k_samples_subsets_when_there_are_too_many():
    clusters = [0] * 22 + [1] * 18  # C(40, 20) subsets: seeded draws
    credit = [1.0, 0.0]
    got = maj_at_k(clusters, credit, 20)
    assert got == maj_at_k(clusters, credit, 20)  # deterministic
    assert 0.6 < got < 0.8  # the majority answer wins most draws, not all
    assert maj_at_k([0] * 40, [1.0], 20) == 1.0


def test_avg_at_n():
    assert avg_at_n([4, 2], [1, 2]) == pytest.approx(0.625)
    with pytest.raises(UserError, match="avg@n"):
        avg_at_n([0], [0])


def test_clusters_merge_equivalent_answers_by_the_math_checker():
    with make_env("math") as env:
        texts = [r"so \boxed{0.5}", r"it is \boxed{\frac{1}{2}}", r"\boxed{3}", "no answer"]
        got = answer_clusters(env, texts, ["correct", "correct", "incorrect", "format_error"],
                              {"question": "q", "answer": "1/2"})  # fmt: skip
    assert got == ([0, 0, 1, None], [1.0, 0.0])


def test_clusters_of_a_record_skip_infra_errors_and_code_rows_have_none():
    env = ArithmeticEnv()
    samples = [{"text": "7", "status": "correct"}, {"text": "7", "status": "infra_error"},
               {"text": "9", "status": "incorrect"}]  # fmt: skip
    assert clusters_of_record(env, samples, {"answer": "7"}) == {"clusters": [0, 1],
                                                                 "credit": [1.0, 0.0]}  # fmt: skip
    assert clusters_of_record(env, samples, {"tests": "assert f() == 1"}) is None


def test_summary_and_report_carry_maj_and_avg(tmp_path):
    env = ArithmeticEnv()
    texts = [["3", "3", "4", "3"], ["5", "6", "6", "x"]]  # problem 1: right majority; 2: wrong
    golds = ["3", "5"]
    recs = []
    for i, (ts, gold) in enumerate(zip(texts, golds, strict=True)):
        st = [env.score(t, {"answer": gold}).status for t in ts]
        votes = clusters_of_record(env, [{"text": t, "status": s} for t, s in zip(ts, st, strict=True)],
                                   {"answer": gold})  # fmt: skip
        recs.append(problem_record("m", "arithmetic", f"p{i}", st, votes))
    summary = write_report(recs, tmp_path, ks=(1, 4), bootstrap_samples=50)
    m = summary["models"]["m"]
    assert m["maj@4"] == pytest.approx(0.5)  # p0: 3 wins; p1: 6 wins (wrong)
    assert m["maj@1"] == pytest.approx(m["pass@1"]) == pytest.approx((3 / 4 + 1 / 4) / 2)
    assert m["avg@4"] == pytest.approx(m["pass@1"]) and len(m["ci"]["maj@4"]) == 2
    report = (tmp_path / "report.md").read_text()
    assert "| pass@1 | pass@4 | maj@1 | maj@4 | avg@4 |" in report
    rows = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert rows[1]["maj@4"] == 0.0 and rows[0]["votes"]["clusters"] == [0, 0, 1, 0]
    assert (tmp_path / "passk.png").stat().st_size > 0
    # no votes: no maj columns, avg@n still there
    plain = write_report([problem_record("m", "x", "p", ["correct", "incorrect"])], tmp_path / "b",
                         ks=(1, 2), bootstrap_samples=20)  # fmt: skip
    assert "maj@1" not in plain["models"]["m"] and plain["models"]["m"]["avg@2"] == 0.5


def test_cli_ks_flag_and_maj_at_k_on_scored_samples(tmp_path):
    from pathlib import Path

    from verirl.cli import main

    arith = Path(__file__).parent / "data" / "evals_samples_arith.jsonl"
    args = ["eval", "--samples", str(arith), "--env", "arithmetic", "--out", str(tmp_path)]
    assert main([*args, "--ks", "1,2"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    m = summary["models"]["evals_samples_arith"]
    assert summary["ks"] == [1, 2] and "pass@4" not in m
    # test-0: 36 (right), 35, x (no answer), 12: pairs {36,35}, {36,12} tie ½, {36,x} 1 -> 2/6;
    # test-1: all wrong; test-2: four 11s.
    assert m["maj@2"] == pytest.approx((1 / 3 + 0 + 1) / 3)
    assert m["maj@1"] == pytest.approx(m["pass@1"])
    assert main([*args, "--ks", "1,x", "--overwrite"]) == 2
