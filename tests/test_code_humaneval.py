"""HumanEval through the real sandboxes: all 164 canonical solutions pass, broken ones fail."""

from __future__ import annotations

from collections import Counter

import pytest
from verirl.envs.registry import make_env


@pytest.fixture(scope="module")
def problems():
    with make_env("humaneval") as env:
        return list(env.rows("test"))


def _score(sandbox, completions, rows):
    env = make_env("humaneval")
    env.attach_sandbox(sandbox)
    try:
        return env.score_batch(completions, rows)
    finally:
        env.close()


def _broken(p: dict) -> str:
    # Same signature, wrong behaviour: the canonical answer's result, perturbed.
    return "    return None\n"


@pytest.mark.docker
def test_all_164_canonical_solutions_pass_in_docker(docker_pool, problems):
    assert len(problems) == 164
    res = _score(docker_pool, [p["canonical_solution"] for p in problems], problems)
    bad = {
        p["task_id"]: r.detail[:200]
        for p, r in zip(problems, res, strict=True)
        if r.status != "correct"
    }
    assert not bad, bad
    assert all(r.reward == 1.0 for r in res)


@pytest.mark.docker
def test_broken_solutions_fail_in_docker(docker_pool, problems):
    # Two kinds of broken: a wrong return, and the next problem's (wrong) solution.
    wrong = [_broken(p) for p in problems]
    shifted = [problems[(i + 1) % 164]["canonical_solution"] for i in range(164)]
    res = _score(docker_pool, wrong + shifted, problems + problems)
    passed = [problems[i % 164]["task_id"] for i, r in enumerate(res) if r.reward > 0]
    assert not passed, passed
    counts = Counter(r.status for r in res)
    assert set(counts) <= {"incorrect", "error", "timeout"}, counts
    assert "infra_error" not in counts


def test_all_164_canonical_solutions_pass_in_process_backend(process_sandbox, problems):
    res = _score(process_sandbox, [p["canonical_solution"] for p in problems], problems)
    bad = {
        p["task_id"]: r.detail[:200]
        for p, r in zip(problems, res, strict=True)
        if r.status != "correct"
    }
    assert not bad, bad


def test_full_function_completion_in_a_fence(process_sandbox, problems):
    p = problems[0]  # has_close_elements
    body = p["prompt"][p["prompt"].index("def ") :] + p["canonical_solution"]
    fenced = f"Sure:\n```python\n{body}```\nThis works."
    res = _score(process_sandbox, [fenced, "```python\nprint('hi')\n```"], [p, p])
    assert [r.status for r in res] == ["correct", "incorrect"]  # the stub returns None
