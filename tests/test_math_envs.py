"""math / gsm8k / math500 environments and `verirl score math` end to end."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from verirl.envs.registry import make_env

from verirl.errors import ConfigError, DataError


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def math_rows(tmp_path):
    return _write(
        tmp_path / "math.jsonl",
        [
            {"question": "What is 1/2 + 1/3?", "answer": r"\frac{5}{6}"},
            {"question": "Solve x^2 = 4.", "answer": r"\pm 2"},
        ],
    )


def test_math_env_rows_prompt_and_score(math_rows):
    with make_env("math", data=str(math_rows)) as env:
        rows = env.rows("train")
        assert [r["answer"] for r in rows] == [r"\frac{5}{6}", r"\pm 2"]
        prompt = env.prompt(rows[0])
        assert prompt[0]["role"] == "user" and "\\boxed{}" in prompt[0]["content"]
        good = env.score(r"so $\boxed{\dfrac{5}{6}}$", rows[0])
        assert (good.reward, good.status) == (1.0, "correct")
        assert env.score(r"\boxed{x = -2, 2}", rows[1]).ok
        assert env.score(r"\boxed{2}", rows[1]).status == "incorrect"
        assert env.score("I give up", rows[0]).status == "format_error"
        res = env.score_batch([r"\boxed{5/6}", r"\boxed{1}"] * 3, [rows[0]] * 6, workers=2)
        assert [r.reward for r in res] == [1.0, 0.0] * 3


def test_math_env_column_mapping_and_split_files(tmp_path):
    train = _write(tmp_path / "a.jsonl", [{"problem": "1+1?", "solution": r"It is $\boxed{2}$."}])
    test = _write(tmp_path / "b.jsonl", [{"problem": "2+2?", "solution": r"$\boxed{4}$"}])
    env = make_env(
        "math",
        data={"train": str(train), "test": str(test)},
        columns={"question": "problem", "answer": "solution"},
        prompt_style="text",
    )
    with env:
        assert env.prompt(env.rows("train")[0]).startswith("1+1?")
        # the gold is the last box of a MATH-style solution
        assert env.score(r"\boxed{4}", env.rows("test")[0]).ok
        with pytest.raises(DataError, match="no data file for split 'validation'"):
            env.rows("validation")


def test_bad_rows_name_the_file_row_and_field(tmp_path):
    bad = _write(tmp_path / "bad.jsonl", [{"question": "q", "answer": "1"}, {"question": "q"}])
    with make_env("math", data=str(bad)) as env, pytest.raises(DataError) as e:
        env.rows()
    assert "bad.jsonl" in str(e.value) and "row 2" in str(e.value) and "'answer'" in str(e.value)
    with pytest.raises(ConfigError, match="prompt_style"):
        make_env("math", prompt_style="yaml")
    with pytest.raises(ConfigError, match="no option"):
        make_env("math", colums={})


def test_format_weight_mixes_rewards(math_rows):
    with make_env("math", data=str(math_rows), format_weight=0.25) as env:
        row = env.rows()[0]
        assert "<answer>" in env.prompt(row)[0]["content"]
        both = env.score("<think>add</think><answer>5/6</answer>", row)
        assert both.reward == pytest.approx(1.25)
        assert both.components == {"correct": 1.0, "format": 1.0}
        only_fmt = env.score("<think>add</think><answer>1</answer>", row)
        assert (only_fmt.reward, only_fmt.status) == (0.25, "incorrect")


def test_gsm8k_local_file_takes_the_number_after_hashes(tmp_path):
    data = _write(
        tmp_path / "gsm.jsonl",
        [{"question": "Tom has 1,000 apples...", "answer": "so 1000+24 = 1024\n#### 1,024"}],
    )
    with make_env("gsm8k", data=str(data)) as env:
        row = env.rows("test")[0]
        assert row["answer"] == "1024"
        assert env.score("He has 1,024 apples.\n#### 1024", row).ok
        assert env.score("#### 1023", row).status == "incorrect"


def test_math500_local_file_uses_problem_column(tmp_path):
    data = _write(
        tmp_path / "m500.jsonl", [{"problem": r"Compute $\dbinom{8}{4}$.", "answer": "70"}]
    )
    with make_env("math500", data=str(data)) as env:
        row = env.rows("test")[0]
        assert "dbinom" in env.prompt(row)[0]["content"]
        assert env.score(r"$\boxed{\binom{8}{4}}$", row).ok


def test_hub_loaders_call_load_dataset_mocked_no_hub_here(monkeypatch):
    """No dataset hub on this machine: check what we ask `datasets.load_dataset` for."""
    import datasets

    calls = []

    def fake(name, config=None, split=None):
        calls.append((name, config, split))
        if name == "openai/gsm8k":
            return [{"question": "q", "answer": "x\n#### 5"}]
        return [{"problem": "p", "answer": "7", "solution": "s"}]

    monkeypatch.setattr(datasets, "load_dataset", fake)
    with make_env("gsm8k") as env:
        assert env.rows("train")[0]["answer"] == "5"
    with make_env("math500") as env:
        assert env.rows("train")[0]["question"] == "p"
    assert calls == [("openai/gsm8k", "main", "train"), ("HuggingFaceH4/MATH-500", None, "test")]
    with make_env("math") as env, pytest.raises(DataError, match="needs `data`"):
        env.rows()


def _verirl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "verirl", *args], capture_output=True, text=True, timeout=180
    )


def test_cli_score_math(tmp_path):
    rows = [
        {"completion": r"The answer is $\boxed{1{,}000}$.", "answer": "1000"},
        {"completion": r"\boxed{\frac{1}{2^{99}}}", "answer": r"\frac{1}{2^{98}}"},
        {"completion": r"\boxed{(x+1)^2}", "answer": "x^2+2x+1"},
        {"completion": r"\boxed{9^{9^{9^{9}}}}", "answer": "1"},  # never evaluated: incorrect
        {"completion": "no idea", "answer": "3"},
    ]
    inp, out = _write(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    proc = _verirl("score", "math", "--input", str(inp), "--output", str(out), "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["status"] for g in got] == [
        "correct",
        "incorrect",
        "correct",
        "incorrect",
        "format_error",
    ]
    assert [g["reward"] for g in got] == [1.0, 0.0, 1.0, 0.0, 0.0]
    assert all(
        g["detail"] and g["completion"] == r["completion"] for g, r in zip(got, rows, strict=True)
    )


def test_cli_score_math_bad_input_exits_2_and_writes_nothing(tmp_path):
    inp = _write(tmp_path / "in.jsonl", [{"completion": "1", "answer": "1"}, {"completion": "2"}])
    out = tmp_path / "out.jsonl"
    proc = _verirl("score", "math", "--input", str(inp), "--output", str(out))
    assert proc.returncode == 2
    # the row is named (0-based index or 1-based line, whichever the CLI reports)
    assert (
        "in.jsonl" in proc.stderr
        and re.search(r"row [12]\b", proc.stderr)
        and "answer" in proc.stderr
    )
    assert not out.exists()


def test_reasoning_gym_adapter_is_seeded_and_scores_with_the_task():
    with make_env("reasoning_gym", task="basic_arithmetic", train_size=5, test_size=3) as env:
        train, again = env.rows("train"), make_env("reasoning_gym", train_size=5).rows("train")
        assert [r["question"] for r in train] == [r["question"] for r in again]
        assert {r["question"] for r in env.rows("test")}.isdisjoint({r["question"] for r in train})
        row = train[0]
        assert env.score(f"<answer>{row['answer']}</answer>", row).ok
        assert env.score("<answer>nonsense</answer>", row).reward == 0.0
        assert env.score("", row).status == "format_error"
    with pytest.raises(ConfigError, match="no_such_task"):
        make_env("reasoning_gym", task="no_such_task").rows()
