"""The math suite template and --samples with the math env (symbolic answer checks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from verirl.evals import run_suite

from verirl.cli import main

DATA = Path(__file__).parent / "data"
PROBLEMS = DATA / "evals_math_problems.jsonl"  # m0: 5/6, m1: 3, m2: 2
SAMPLES = DATA / "evals_math_samples.jsonl"  # by id: m0 2 of 3 right, m1 0 of 3, m2 3 of 3


def test_samples_scored_symbolically(tmp_path):
    args = ["eval", "--samples", str(SAMPLES), "--env", "math", "--out", str(tmp_path)]
    assert main([*args, f"options.data={PROBLEMS}"]) == 0
    rows = {r["problem_id"]: r for r in map(json.loads, (tmp_path / "results.jsonl").open())}
    # 10/12 = 5/6 and sqrt(2)^2 = 2 count as right; 0.83 is not 5/6; "x is unknown" has no answer.
    assert {k: r["c"] for k, r in rows.items()} == {"m0": 2, "m1": 0, "m2": 3}
    assert rows["m1"]["statuses"] == {"format_error": 1, "incorrect": 2}
    m = json.loads((tmp_path / "summary.json").read_text())["models"]["evals_math_samples"]
    assert m["pass@1"] == pytest.approx((2 / 3 + 0 + 1) / 3)
    assert m["pass@2"] == pytest.approx((1 + 0 + 1) / 3)


def test_math_suite_template_runs_on_a_users_file(tiny_model_dir, tmp_path):
    envs = f"envs=[{{name: math, split: test, options: {{data: '{PROBLEMS}'}}}}]"
    summary = run_suite(
        "math",
        {"tiny": tiny_model_dir},
        tmp_path,
        [envs, "n=2", "ks=[1, 2]", "sampling.max_tokens=4"],
        progress=False,
    )
    m = summary["models"]["tiny"]
    assert summary["problems"] == 3 and m["n"] == 2
    assert sum(m["statuses"].values()) == 6 and m["infra_errors"] == 0
    # The env's prompts are chat messages; the tiny tokenizer has no template, so the text goes
    # in as is and every cached record keeps the question.
    (cache,) = (tmp_path / "cache").glob("tiny-*.jsonl")
    recs = [json.loads(x) for x in cache.read_text().splitlines()]
    assert [r["problem_id"] for r in recs] == ["m0", "m1", "m2"]
    assert "What is 1/2 + 1/3?" in recs[0]["prompt_raw"]


def test_math_suite_without_data_exits_2(tiny_model_dir, tmp_path, capsys):
    missing = f"envs=[{{name: math, options: {{data: '{tmp_path / 'none.jsonl'}'}}}}]"
    assert (
        main(["eval", "math", missing, "--model", str(tiny_model_dir), "--out", str(tmp_path)]) == 2
    )
    assert "none.jsonl" in capsys.readouterr().err
