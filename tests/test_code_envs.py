"""Code envs (code, stdio), trusted-side verdicts, and `verirl score` end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from verirl.envs.registry import available_envs, make_env
from verirl.rewards.code import function_verdict, outputs_match, stdio_verdict
from verirl.sandboxes.sandbox import RunResult

from verirl.errors import DataError

N = "ab12"


def rep(payload: str, nonce: str = N) -> RunResult:
    return RunResult(exit=0, report=f"{nonce}:{payload}\n")


# Verdicts from synthetic runner results: (RunResult, status). The harness reports
# [kind, detail, assertions held, assertions in the test's source] as JSON.
VERDICTS = [
    (rep('["done", "2 assertions held", 2, 2]'), "correct"),
    (rep('["done", "no assert in this test", 0, 0]'), "correct"),
    (rep('["done", "", 0, 2]'), "incorrect"),  # returned, but no assertion ran
    (rep('["failed", "assert #0 failed: 1 == 2 is false", 0, 1]'), "incorrect"),
    (rep('["notplain", "candidate returned a non-plain value of type x.Y", 0, 1]'), "incorrect"),
    (rep('["raised", "test: ZeroDivisionError: division by zero", 0, 1]'), "error"),
    (rep('["memory", "MemoryError in test", 0, 1]'), "memory"),
    (rep('["test_error", "bad test", 0, 0]'), "infra_error"),
    (rep('["done", "", 1, 1]', nonce="forged"), "error"),  # wrong nonce: no report at all
    (rep("('done', [])"), "error"),  # malformed
    (rep('["done", "", "1", 1]'), "error"),  # malformed count
    (RunResult(exit=0, report=f'{N}:["done", "", 1, 1]\n{N}:["done", "", 1, 1]\n'), "error"),
    (RunResult(exit=0, report=""), "error"),
    (
        RunResult(exit=1, stderr="Traceback (most recent call last):\n  ...\nMemoryError\n"),
        "memory",
    ),
    # A correct program may print the word: only the trusted report counts.
    (RunResult(exit=0, stderr="MemoryError\n", report=f'{N}:["done", "", 1, 1]\n'), "correct"),
    (RunResult(timed_out=True, wall=2.0), "timeout"),
    (RunResult(harness_killed=True), "error"),
    (RunResult(infra="container died"), "infra_error"),
]


@pytest.mark.parametrize(("run", "status"), VERDICTS)
def test_function_verdicts(run, status):
    v = function_verdict(run, N)
    assert v.status == status, v
    assert v.reward == (1.0 if status == "correct" else 0.0)


def test_stdio_verdict_and_whitespace_tolerance():
    ok = RunResult(exit=0, stdout="1 2 \n3\n\n")
    assert stdio_verdict([ok], ["1 2\n3"]).status == "correct"
    assert stdio_verdict([ok, RunResult(exit=1)], ["1 2\n3", ""]).status == "error"
    assert stdio_verdict([RunResult(exit=0, stdout="4")], ["3"]).status == "incorrect"
    assert not outputs_match("a  b", "a b")
    printed = RunResult(exit=0, stdout="3\n", stderr="MemoryError\n")  # printed, not raised
    assert stdio_verdict([printed], ["3"]).status == "correct"
    died = RunResult(exit=1, stderr="Traceback (most recent call last):\nMemoryError\n")
    assert stdio_verdict([died], ["3"]).status == "memory"


def test_code_envs_are_registered():
    assert {"humaneval", "code", "stdio"} <= set(available_envs())


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


STDIO_ROW = {
    "prompt": "Double n.",
    "tests": [{"input": "21\n", "output": "42\n"}, {"input": "-1\n", "output": "-2"}],
}
STDIO_COMPLETIONS = [
    ("```python\nn = int(input())\nprint(n * 2, end='  \\n')\n```", "correct"),
    ("print(int(input()) * 3)", "incorrect"),
    ("import sys\nsys.exit(3)", "error"),
    ("while True: pass", "timeout"),
    ("", "format_error"),
    ("import sys\nprint(42)\nsys.stdout.flush()\nimport os\nos._exit(0)", "incorrect"),
]


def _stdio_env(sandbox, tmp_path):
    env = make_env("stdio", data=_write(tmp_path / "p.jsonl", [STDIO_ROW]), timeout=2.0)
    env.attach_sandbox(sandbox)
    return env


def test_stdio_env_process_backend(process_sandbox, tmp_path):
    env = _stdio_env(process_sandbox, tmp_path)
    row = env.rows()[0]
    res = env.score_batch([c for c, _ in STDIO_COMPLETIONS], [row] * len(STDIO_COMPLETIONS))
    assert [r.status for r in res] == [s for _, s in STDIO_COMPLETIONS], res


@pytest.mark.docker
def test_stdio_env_docker(docker_pool, tmp_path):
    env = _stdio_env(docker_pool, tmp_path)
    row = env.rows()[0]
    res = env.score_batch([c for c, _ in STDIO_COMPLETIONS], [row] * len(STDIO_COMPLETIONS))
    assert [r.status for r in res] == [s for _, s in STDIO_COMPLETIONS], res


def test_bad_rows_name_file_row_and_field(tmp_path):
    path = _write(tmp_path / "bad.jsonl", [{"prompt": "x", "test": "t", "entry_point": "f"}, {}])
    with pytest.raises(DataError, match=r"bad.jsonl: row 2: missing field 'prompt'"):
        make_env("code", data=path).rows()
    path = _write(tmp_path / "io.jsonl", [{"prompt": "x", "tests": [{"input": "1"}]}])
    with pytest.raises(DataError, match=r"io.jsonl: row 1: tests\[0\] needs"):
        make_env("stdio", data=path).rows()


def test_bad_sandbox_option_is_a_config_error():
    from verirl.errors import ConfigError

    with pytest.raises(ConfigError, match="sandbox must be"):
        make_env("humaneval", sandbox="vm")


CODE_ROWS = [
    {
        "prompt": "def inc(x):\n",
        "test": "def check(candidate):\n    assert candidate(1) == 2\n",
        "entry_point": "inc",
        "completion": "    return x + 1\n",
    },
    {
        "prompt": "def inc(x):\n",
        "test": "def check(candidate):\n    assert candidate(1) == 2\n",
        "entry_point": "inc",
        "completion": "    return x\n",
    },
]


def _cli(*args, check=True):
    cmd = [sys.executable, "-m", "verirl", *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=300)


@pytest.mark.parametrize("sandbox", ["process", pytest.param("docker", marks=pytest.mark.docker)])
def test_cli_score_code_end_to_end(tmp_path, sandbox):
    src, out = _write(tmp_path / "rows.jsonl", CODE_ROWS), tmp_path / "scored.jsonl"
    r = _cli("score", "code", "--input", src, "--output", str(out), "--sandbox", sandbox,
             "--workers", "2")  # fmt: skip
    assert "scored 2 rows" in r.stdout, r.stdout + r.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(x["reward"], x["status"]) for x in rows] == [(1.0, "correct"), (0.0, "incorrect")]
    assert all("detail" in x and "completion" in x for x in rows)


def test_cli_score_bad_input_exits_2_and_writes_nothing(tmp_path):
    src = _write(tmp_path / "rows.jsonl", [{"prompt": "p", "test": "t", "entry_point": "f"}])
    out = tmp_path / "scored.jsonl"
    r = _cli("score", "code", "--input", src, "--output", str(out), "--sandbox", "process",
             check=False)  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "row 1" in r.stderr and "completion" in r.stderr
    assert not out.exists()
