"""Core: CLI, registry, entry-point plugins, config validation, arithmetic env determinism."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pydantic import Field
from verirl.envs import available_envs, make_env

from verirl.config import StrictModel, load_config, parse_overrides
from verirl.errors import ConfigError, DataError
from verirl.jsonl import read_jsonl

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    return subprocess.run(
        [sys.executable, "-m", "verirl", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=120,
    )


def test_help_and_envs_list_do_not_import_torch():
    code = textwrap.dedent(
        """
        import sys
        from verirl.cli import main
        for argv in (["envs", "list"], ["envs", "show", "arithmetic"], ["envs", "list", "--json"]):
            assert main(argv) == 0
        try:
            main(["--help"])
        except SystemExit as e:
            assert e.code == 0
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "vllm", "transformers"))
        print("HEAVY", heavy)
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "HEAVY []" in r.stdout
    assert "arithmetic" in r.stdout


def test_envs_list_json_lists_builtins():
    r = run_cli("envs", "list", "--json")
    assert r.returncode == 0, r.stderr
    names = {e["name"] for e in json.loads(r.stdout)}
    assert "arithmetic" in names


def test_envs_show_unknown_env_exits_2():
    r = run_cli("envs", "show", "no-such-env")
    assert r.returncode == 2
    assert "unknown environment 'no-such-env'" in r.stderr


def test_plugin_package_registers_env_through_entry_point(tmp_path):
    pkg = tmp_path / "plugin"
    (pkg / "verirl_plugin_demo").mkdir(parents=True)
    (pkg / "pyproject.toml").write_text(
        textwrap.dedent(
            """
            [build-system]
            requires = ["setuptools"]
            build-backend = "setuptools.build_meta"
            [project]
            name = "verirl-plugin-demo"
            version = "0.0.1"
            [project.entry-points."verirl.envs"]
            echo = "verirl_plugin_demo:EchoEnv"
            """
        )
    )
    (pkg / "verirl_plugin_demo" / "__init__.py").write_text(
        textwrap.dedent(
            """
            from verirl.envs import Environment
            from verirl.rewards import RewardResult

            class EchoEnv(Environment):
                name = "plugin-echo"
                description = "Reward 1 when the completion repeats the prompt."
                reward_kinds = ("exact-match",)
                fields = ("text",)
                example_row = {"text": "hello"}
                def rows(self, split="train"):
                    return [{"text": "hello"}]
                def prompt(self, row):
                    return row["text"]
                def score(self, completion, row):
                    ok = completion.strip() == row["text"]
                    return RewardResult(float(ok), "correct" if ok else "incorrect")
            """
        )
    )
    target = tmp_path / "site"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-build-isolation",
            "--no-deps",
            "--target",
            str(target),
            str(pkg),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    env = {"PYTHONPATH": str(target)}
    r = run_cli("envs", "list", "--json", env=env)
    assert r.returncode == 0, r.stderr
    listed = {e["name"]: e for e in json.loads(r.stdout)}
    assert "plugin-echo" in listed
    assert "entry point" in listed["plugin-echo"]["source"]
    # And it scores through the generic CLI.
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"text": "hi", "completion": "hi"}\n{"text": "hi", "completion": "ho"}\n')
    out = tmp_path / "scored.jsonl"
    r = run_cli(
        "score", "plugin-echo", "--input", str(rows), "--output", str(out), "--quiet", env=env
    )
    assert r.returncode == 0, r.stderr
    assert [row["status"] for row in read_jsonl(out)] == ["correct", "incorrect"]


class _Train(StrictModel):
    lr: float = Field(1e-3, description="learning rate")
    steps: int = Field(10, description="optimizer steps")


class _Cfg(StrictModel):
    name: str = "run"
    train: _Train = _Train()


def test_config_overrides_and_types(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("name: x\ntrain:\n  lr: 0.5\n")
    cfg = load_config(_Cfg, f, ["train.steps=3", "train.lr=1e-4"])
    assert (cfg.name, cfg.train.lr, cfg.train.steps) == ("x", 1e-4, 3)


@pytest.mark.parametrize(
    ("yaml_text", "overrides", "needle"),
    [
        ("train:\n  lr_typo: 1\n", [], "unknown key 'train.lr_typo'"),
        ("", ["train.stepz=3"], "unknown key 'train.stepz'"),
        ("", ["train.steps=many"], "key 'train.steps'"),
        ("- a list\n", [], "top level must be a mapping"),
        ("", ["novalue"], "expected key=value"),
    ],
)
def test_config_errors_name_the_key(tmp_path, yaml_text, overrides, needle):
    f = tmp_path / "c.yaml"
    f.write_text(yaml_text)
    with pytest.raises(ConfigError) as e:
        load_config(_Cfg, f, overrides)
    assert needle in str(e.value)
    assert str(f) in str(e.value) or "override" in str(e.value)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: config file not found"):
        load_config(_Cfg, tmp_path / "nope.yaml")


def test_parse_overrides_nested():
    assert parse_overrides(["a.b.c=1", "a.d=true"]) == {"a": {"b": {"c": 1}, "d": True}}


def test_arithmetic_env_is_deterministic_and_splits_are_disjoint():
    a = make_env("arithmetic", seed=3, train_size=300, test_size=60)
    b = make_env("arithmetic", seed=3, train_size=300, test_size=60)
    assert a.rows("train") == b.rows("train")
    assert a.make_row("test", 17) == a.rows("test")[17]
    train_q = {r["question"] for r in a.rows("train")}
    assert not train_q & {r["question"] for r in a.rows("test")}
    c = make_env("arithmetic", seed=4, train_size=300, test_size=60)
    assert c.rows("train") != a.rows("train")


@pytest.mark.parametrize(
    ("ops", "q", "want"), [("+", "12+7", 19), ("*", "3*4", 12), ("+-*", "2+3*4-1", 13)]
)
def test_arithmetic_answers(ops, q, want):
    env = make_env(
        "arithmetic", ops=ops, num_operands=len(q.replace("*", "+").replace("-", "+").split("+"))
    )
    rows = [r for r in env.rows("train") if r["question"] == q] or [None]
    import re

    from verirl.envs.arithmetic import _evaluate

    nums = [int(x) for x in re.findall(r"\d+", q)]
    ops_seq = re.findall(r"[+\-*]", q)
    assert _evaluate(nums, ops_seq) == want
    if rows[0] is not None:
        assert rows[0]["answer"] == str(want)


def test_make_env_rejects_unknown_option():
    with pytest.raises(ConfigError, match="no option 'bogus'"):
        make_env("arithmetic", bogus=1)
    with pytest.raises(ConfigError, match="ops must be"):
        make_env("arithmetic", ops="/")


def test_score_batch_turns_scorer_crash_into_infra_error():
    env = make_env("arithmetic")
    res = env.score_batch(["5", "5"], [{"answer": "5"}, {"answer": "not-an-int"}], workers=2)
    assert res[0].status == "correct"
    assert res[1].status == "infra_error" and "crashed" in res[1].detail


def test_score_cli_bad_rows(tmp_path):
    f = tmp_path / "rows.jsonl"
    f.write_text('{"question": "1+1", "answer": "2", "completion": "2"}\n{"question": "1+2"}\n')
    out = tmp_path / "out.jsonl"
    r = run_cli("score", "arithmetic", "--input", str(f), "--output", str(out))
    assert r.returncode == 2
    assert "row 2: missing field 'answer'" in r.stderr
    assert not out.exists()
    f.write_text('{"question": "1+1"\n')
    r = run_cli("score", "arithmetic", "--input", str(f), "--output", str(out))
    assert r.returncode == 2 and f"{f}:1: not valid JSON" in r.stderr
    with pytest.raises(DataError):
        read_jsonl(tmp_path / "missing.jsonl")


def test_available_envs_contains_arithmetic():
    assert "arithmetic" in available_envs()


def test_overrides_may_follow_options(tmp_path):
    from verirl.cli import main

    # `--resume` before the overrides must not swallow them or fail as unrecognized.
    r = run_cli("train", str(tmp_path / "missing.yaml"), "--resume", str(tmp_path), "x.y=1")
    assert "unrecognized arguments" not in r.stderr
    assert r.returncode == 2 and r.stderr.startswith("error: ")
    with pytest.raises(SystemExit):
        main(["envs", "list", "--bogus"])


def test_written_outputs_are_not_private(tmp_path):
    from verirl.jsonl import write_jsonl

    out = tmp_path / "o.jsonl"
    old = os.umask(0o022)
    try:
        write_jsonl(out, [{"a": 1}])
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o644


ECHO_ENV = """
from verirl.envs import Environment, register_env
from verirl.rewards import RewardResult


@register_env
class Echo(Environment):
    name = "echo"
    description = "Reward 1 when the completion repeats the text."
    reward_kinds = ("exact-match",)
    fields = ("text",)

    def __init__(self, data: str = "rows.jsonl"):
        self.data = data

    def rows(self, split="train"):
        from verirl.jsonl import read_jsonl

        return read_jsonl(self.data)

    def prompt(self, row):
        return row["text"]

    def score(self, completion, row):
        ok = completion.strip() == row["text"]
        return RewardResult(float(ok), "correct" if ok else "incorrect")
"""


def test_environment_by_file_path_or_module_in_every_command(tmp_path):
    (tmp_path / "echo_env.py").write_text(ECHO_ENV)
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "envs.py").write_text(ECHO_ENV)
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"text": "hi", "completion": "hi"}\n{"text": "yo", "completion": "no"}\n')
    for spec in ("echo_env.py:Echo", "mypkg.envs:Echo"):
        r = run_cli("score", spec, "--input", "rows.jsonl", "--output", f"{spec[:4]}.jsonl",
                    cwd=tmp_path)  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert [x["reward"] for x in read_jsonl(tmp_path / f"{spec[:4]}.jsonl")] == [1.0, 0.0]
    r = run_cli("envs", "show", "echo_env.py:Echo", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "name:         echo" in r.stdout and "source:       echo_env.py:Echo" in r.stdout
    assert "data  str = 'rows.jsonl'" in r.stdout
    for spec, message in [
        ("nope.py:Echo", "no such file nope.py"),
        ("echo_env.py:Ech", "has no 'Ech'; its environments: Echo"),
        ("no_such_module:Echo", "No module named 'no_such_module'"),
    ]:
        r = run_cli("envs", "show", spec, cwd=tmp_path)
        assert r.returncode == 2 and message in r.stderr, r.stderr
    (tmp_path / "broken.py").write_text("import os\n\nundefined_name\n")
    r = run_cli("envs", "show", "broken.py:Echo", cwd=tmp_path)
    assert r.returncode == 2 and "NameError" in r.stderr and "(line 3)" in r.stderr


def test_envs_show_lists_options_and_row_fields_that_match_the_example():
    for name in ("arithmetic", "math", "humaneval"):
        r = run_cli("envs", "show", name)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        fields = next(x for x in lines if x.startswith("row fields:")).split(":", 1)[1]
        example = json.loads(
            next(x for x in lines if x.startswith("example row:")).split(":", 1)[1]
        )
        listed = fields.split("(required")[0].replace(",", " ").split()
        assert set(example) <= set(listed), (name, listed, list(example))
    r = run_cli("envs", "show", "arithmetic")
    assert re.search(r"^  max_operand +int = 30$", r.stdout, re.M), r.stdout
    assert re.search(r"^  ops +str = '\+'$", r.stdout, re.M)


def test_score_humaneval_accepts_task_id_and_completion_rows(tmp_path):
    rows = tmp_path / "samples.jsonl"
    rows.write_text(
        json.dumps({"task_id": "HumanEval/0", "completion": "    return False\n"}) + "\n"
        + json.dumps({"task_id": "HumanEval/2", "completion": "    return number % 1.0\n"}) + "\n"
    )  # fmt: skip
    out = tmp_path / "scored.jsonl"
    r = run_cli("score", "humaneval", "--input", str(rows), "--output", str(out),
                "--sandbox", "process", "--quiet")  # fmt: skip
    assert r.returncode == 0, r.stderr
    scored = read_jsonl(out)
    assert [s["task_id"] for s in scored] == ["HumanEval/0", "HumanEval/2"]
    assert [s["status"] for s in scored] == ["incorrect", "correct"]
    assert "prompt" not in scored[0]  # the output is the input row plus the verdict
