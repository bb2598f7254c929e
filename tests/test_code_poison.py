"""Red-team round 2, class 6: poison rows and the semantics of passing a test.

One bad row (a wrong answer over 4300 digits, a lone surrogate) costs only itself, in
``score_batch`` and in the CLI's output; an exception from the candidate (StopIteration in the
test's ``map``, SystemExit, any BaseException) cannot end a test early as a pass; correct
programs score 1 whatever Python's own ``==``/``type() ==`` accept: deep nesting, 200k-element
lists, "MemoryError" printed on stderr, ``type(x) == int``.
"""

from __future__ import annotations

import doctest
import json
import subprocess
import sys

import pytest
from verirl.envs.registry import make_env
from verirl.rewards.code import function_verdict, stdio_verdict
from verirl.sandboxes import harness, solution
from verirl.sandboxes.sandbox import Job

NEST = "def nest(n):\n    x = []\n    for _ in range(n):\n        x = [x]\n    return x\n"
# name -> (solution, test, expected status)
CASES = {
    "huge_int_wrong": (
        "def f(n):\n    return 10 ** 5000\n",
        "def check(candidate):\n    assert candidate(1) == 3\n",
        "incorrect",
    ),
    "huge_int_right": (
        "def f(n):\n    return 7 ** 9000\n",
        "def check(candidate):\n    assert candidate(1) == 7 ** 9000\n",
        "correct",
    ),
    "nested_100": (
        NEST + "def f(n):\n    return nest(n)\n",
        NEST + "def check(candidate):\n    assert candidate(100) == nest(100)\n",
        "correct",
    ),
    "list_200k": (
        "def f(n):\n    return list(range(n))\n",
        "def check(candidate):\n    assert candidate(200000) == list(range(200000))\n",
        "correct",
    ),
    "memoryerror_on_stderr": (
        "import sys\nprint('MemoryError', file=sys.stderr)\n"
        "def f(n):\n    print('MemoryError', file=sys.stderr, flush=True)\n    return n\n",
        "def check(candidate):\n    assert candidate(2) == 2\n",
        "correct",
    ),
    "type_eq_int": (
        "def f(n):\n    return n + 1\n",
        "def check(candidate):\n    assert type(candidate(1)) == int\n"
        "    assert isinstance(candidate(1), int)\n    assert candidate(0) is not None\n",
        "correct",
    ),
    "type_eq_int_but_bool": (
        "def f(n):\n    return True\n",
        "def check(candidate):\n    assert type(candidate(1)) == int\n",
        "incorrect",
    ),
    "stopiteration_in_map": (
        "def f(n):\n    raise StopIteration\n",
        "def check(candidate):\n    for r in map(candidate, [1, 2]):\n        assert r == 0\n",
        "error",
    ),
    "stopiteration_in_generator": (
        "def f(n):\n    raise StopIteration\n",
        "def check(candidate):\n    assert all(candidate(x) == x for x in range(3)) or True\n"
        "    assert candidate(1) == 1\n",
        "error",
    ),
    "systemexit_caught_by_test": (
        "import sys\ndef f(n):\n    sys.exit(0)\n",
        "def check(candidate):\n    try:\n        candidate(1)\n    except SystemExit:\n"
        "        return\n    assert candidate(1) == 1\n",
        "error",
    ),
    "baseexception_from_candidate": (
        "def f(n):\n    raise KeyboardInterrupt\n",
        "def check(candidate):\n    assert candidate(1) == 1\n",
        "error",
    ),
    "no_assertion_ran": (
        "def f(n):\n    return []\n",
        "def check(candidate):\n    for x in candidate(3):\n        assert x == 1\n",
        "incorrect",
    ),
}


@pytest.mark.parametrize("kind", [pytest.param("docker", marks=pytest.mark.docker), "process"])
def test_poison_and_honest_edge_cases(kind, request):
    sandbox = request.getfixturevalue("docker_pool" if kind == "docker" else "process_sandbox")
    names = list(CASES)
    jobs = [Job("function", CASES[n][0], CASES[n][1], "f", timeout=10.0) for n in names]
    runs = sandbox.run(jobs)
    got = {n: function_verdict(r, j.nonce) for n, r, j in zip(names, runs, jobs, strict=True)}
    wrong = {n: (v.status, v.detail[:200]) for n, v in got.items() if v.status != CASES[n][2]}
    assert not wrong, wrong
    assert len(got["huge_int_wrong"].detail) < 400


@pytest.mark.parametrize("kind", [pytest.param("docker", marks=pytest.mark.docker), "process"])
def test_stdio_program_printing_memoryerror_is_correct(kind, request):
    sandbox = request.getfixturevalue("docker_pool" if kind == "docker" else "process_sandbox")
    code = "import sys\nprint('MemoryError', file=sys.stderr)\nprint(int(input()) * 2)\n"
    crash = "x = bytearray(1 << 40)\n"
    runs = sandbox.run([Job("stdio", code, stdin="21\n"), Job("stdio", crash)])
    assert stdio_verdict([runs[0]], ["42"]).status == "correct", runs[0]
    assert stdio_verdict([runs[1]], [""]).status == "memory", runs[1]


ROW = {
    "prompt": "def add(a, b):\n",
    "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n",
    "entry_point": "add",
}
COMPLETIONS = [
    ("    return a + b\n", "correct"),
    ("    return a + b  # \udc80\n", "error"),  # a lone surrogate: not valid source
    ("    return 10 ** 5000\n", "incorrect"),
    ("    return a + b\n", "correct"),
]


def test_one_poison_row_costs_only_itself_in_score_batch(process_sandbox):
    env = make_env("code")
    env.attach_sandbox(process_sandbox)
    res = env.score_batch([c for c, _ in COMPLETIONS], [ROW] * len(COMPLETIONS))
    assert [r.status for r in res] == [s for _, s in COMPLETIONS], res


def test_a_verdict_that_raises_costs_only_its_row(process_sandbox, monkeypatch):
    import verirl.envs.code_envs as ce

    real = ce.function_verdict
    calls = []

    def flaky(run, nonce):
        calls.append(nonce)
        if len(calls) == 2:
            raise ValueError("Exceeds the limit (4300 digits) for integer string conversion")
        return real(run, nonce)

    monkeypatch.setattr(ce, "function_verdict", flaky)
    env = make_env("code")
    env.attach_sandbox(process_sandbox)
    res = env.score_batch(["    return a + b\n"] * 3, [ROW] * 3)
    assert [r.status for r in res] == ["correct", "infra_error", "correct"]
    assert "row 2" in res[1].detail and "4300" in res[1].detail  # rows count from 1


def test_cli_writes_every_row_despite_a_lone_surrogate(tmp_path):
    rows = [dict(ROW, completion=c) for c, _ in COMPLETIONS]
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))  # ensure_ascii: \udc80 escaped
    out = tmp_path / "scored.jsonl"
    cmd = [sys.executable, "-m", "verirl", "score", "code", "--input", str(src),
           "--output", str(out), "--sandbox", "process", "--quiet"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    got = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [g["status"] for g in got] == [s for _, s in COMPLETIONS]
    assert got[1]["completion"] == COMPLETIONS[1][0]  # the surrogate round-trips


def test_wire_format_and_harness_doctests():
    for mod in (solution, harness):
        result = doctest.testmod(mod)
        assert result.failed == 0 and result.attempted > 0, mod.__name__


def test_wire_format_rejects_what_is_not_plain():
    class Int(int):
        pass

    for bad in (Int(3), [1, object()], {"k": lambda: 0}):
        with pytest.raises(solution.NotPlain):
            solution.encode(bad)
    for raw in (b"l5;N", b"i;", b"s9:ab", b"x", b"NN", b"d1;l0;"):
        with pytest.raises((ValueError, TypeError, IndexError)):
            solution.decode(raw)
    deep: list = []
    for _ in range(5000):  # far past any recursion limit: encoded and decoded iteratively
        deep = [deep]
    assert solution.encode(solution.decode(solution.encode(deep))) == solution.encode(deep)
