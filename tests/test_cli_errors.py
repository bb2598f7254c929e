"""Errors a new user meets: each exits 2 with one line naming the key or file and what to do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from verirl.cli import main
from verirl.config import load_config, looks_like_hub_id
from verirl.errors import ConfigError
from verirl.tiny import build_tokenizer
from verirl.train.config import SftConfig, TrainConfig


def _config(tmp_path: Path, model: Path, **extra) -> str:
    cfg = {
        "name": "e",
        "run_dir": str(tmp_path / "runs"),
        "model": {"path": str(model)},
        "env": {"name": "arithmetic", "options": {"train_size": 20, "test_size": 5}},
        "algo": {"batch_size": 8, "group_size": 4},
        "train": {"steps": 1},
        "log": {"progress": False, "tensorboard": False},
        **extra,
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: "), err  # one line, no traceback
    return err


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        # no GPU here; on a GPU machine cuda:99 is still out of range
        (["train.device=cuda:99"], ["train.device=cuda:99", "cuda"]),
        (["train.device=tpu"], ["train.device='tpu'", "use cpu"]),
        (["model.path=runs/nope/final"], ["model.path", "no such model directory"]),
        (["algo.grop_size=4"], ["unknown key 'algo.grop_size'", "did you mean 'algo.group_size'"]),
        (["env.options.max_operant=9"], ["no option 'max_operant'", "did you mean 'max_operand'"]),
        (["env.name=arithmetc"], ["unknown environment 'arithmetc'", "did you mean 'arithmetic'"]),
        # a cross-field error names the keys and shows the section by its keys, not as a dict
        (["algo.batch_size=10"], ["must be divisible", "got a mapping with keys"]),
    ],
    ids=["device", "device-kind", "model-path", "key-typo", "option-typo", "env-typo", "section"],
)
def test_train_config_errors(tiny_model_dir, tmp_path, capsys, overrides, expected):
    assert main(["train", _config(tmp_path, tiny_model_dir), *overrides]) == 2
    err = _one_line_error(capsys)
    for part in expected:
        assert part in err, (part, err)
    assert "{" not in err
    assert not (tmp_path / "runs").exists()


def test_missing_dataset_names_the_config_key(tiny_model_dir, tmp_path, capsys):
    cfg = _config(tmp_path, tiny_model_dir, env={"name": "math", "options": {"data": "nope.jsonl"}})
    assert main(["train", cfg]) == 2
    err = _one_line_error(capsys)
    assert "env.options.data" in err and "nope.jsonl" in err
    sft = {"model": {"path": str(tiny_model_dir)}, "env": {"name": "arithmetic"},
           "data": {"path": "missing.jsonl"}, "run_dir": str(tmp_path / "runs")}  # fmt: skip
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sft))
    assert main(["sft", str(tmp_path / "s.yaml")]) == 2
    assert "data.path:" in _one_line_error(capsys)


def test_relative_paths_in_a_config_file_resolve_against_its_directory(tmp_path, monkeypatch):
    (tmp_path / "project" / "models" / "m").mkdir(parents=True)
    (tmp_path / "project" / "data.jsonl").write_text("{}\n")
    (tmp_path / "project" / "envs.py").write_text("")
    cfg = tmp_path / "project" / "configs" / "sft.yaml"
    cfg.parent.mkdir()
    cfg.write_text(yaml.safe_dump({
        "model": {"path": "../models/m"},
        "env": {"name": "../envs.py:Echo", "options": {"data": "../data.jsonl", "size": 3}},
        "data": {"path": "../data.jsonl"},
    }))  # fmt: skip
    monkeypatch.chdir(tmp_path)  # anywhere but the config's folder
    c = load_config(SftConfig, cfg)
    root = (tmp_path / "project").resolve()
    assert c.model.path == str(root / "models" / "m")
    assert c.data.path == str(root / "data.jsonl")
    assert c.env.name == f"{root / 'envs.py'}:Echo"
    assert c.env.options == {"data": str(root / "data.jsonl"), "size": 3}
    assert c.run_dir == "runs/sft"  # outputs stay relative to the current directory
    # on the command line, paths are relative to the current directory
    (tmp_path / "m2").mkdir()
    c = load_config(SftConfig, cfg, ["model.path=m2"])
    assert c.model.path == "m2"


def test_hub_ids_stay_ids():
    assert [looks_like_hub_id(v) for v in ("Qwen/Qwen2.5-0.5B-Instruct", "gpt2")] == [True, True]
    assert not any(looks_like_hub_id(v) for v in ("runs/demo/sft/final", "../m", "a/b/c"))
    with pytest.raises(ConfigError, match=r"model\.path"):
        load_config(TrainConfig, None, ["model.path=runs/x/final", "env.name=arithmetic"])


def test_score_workers_zero_missing_output_dir_and_existing_output(tmp_path, capsys):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"question": "1+1", "answer": "2", "completion": c}) + "\n"
                            for c in ("2", "3", "x")))  # fmt: skip
    with pytest.raises(SystemExit) as e:
        main(["score", "arithmetic", "--input", str(rows), "--output", "o.jsonl", "--workers", "0"])
    assert e.value.code == 2 and "must be >= 1" in capsys.readouterr().err
    out = tmp_path / "no" / "such" / "scored.jsonl"
    assert main(["score", "arithmetic", "--input", str(rows), "--output", str(out)]) == 2
    assert "does not exist" in _one_line_error(capsys) and not out.parent.exists()
    out = tmp_path / "scored.jsonl"
    assert main(["score", "arithmetic", "--input", str(rows), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "scoring arithmetic row 3/3 (100%)" in printed  # the plain progress line
    assert f"wrote {out}" in printed
    assert main(["score", "arithmetic", "--input", str(rows), "--output", str(out)]) == 2
    assert "--overwrite" in _one_line_error(capsys)
    assert main(["score", "arithmetic", "--input", str(rows), "--output", str(out),
                 "--overwrite", "--quiet"]) == 0  # fmt: skip


def test_row_numbers_count_from_one(tmp_path, capsys):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"question": "1+1", "answer": "2", "completion": "2"}) + "\n"
                    + json.dumps({"question": "1+2", "completion": "3"}) + "\n")  # fmt: skip
    assert main(["score", "arithmetic", "--input", str(rows), "--output", str(tmp_path / "o")]) == 2
    assert "row 2" in _one_line_error(capsys)


def test_prompts_longer_than_the_context_are_skipped_with_a_count(capsys):
    from types import SimpleNamespace

    from verirl.envs import make_env

    from verirl.train.run import fits_context

    env = make_env("arithmetic", train_size=5, test_size=5)
    tok = build_tokenizer()
    rows = [*env.rows("train"), {"question": "1+" * 40 + "1", "answer": "41"}]
    cfg = SimpleNamespace(rollout=SimpleNamespace(max_new_tokens=8, max_turns=None, max_tokens=None),
                          model=SimpleNamespace(chat_template="auto"),
                          env=SimpleNamespace(name="arithmetic", split="train"))  # fmt: skip
    kept = fits_context(env, rows, tok, cfg, context=40)
    assert kept == list(env.rows("train"))
    assert "skipped 1 of 6 rows" in capsys.readouterr().out
    with pytest.raises(ConfigError, match=r"rollout\.max_new_tokens"):
        fits_context(env, rows, tok, cfg, context=9)


def test_a_multi_turn_prompt_must_leave_room_for_the_whole_trajectory(capsys):
    """A trajectory adds up to rollout.max_tokens (model and environment tokens), not one
    turn's max_new_tokens: a prompt that fits one turn but not the trajectory is skipped."""
    from types import SimpleNamespace

    from verirl.envs import make_env

    from verirl.train.run import fits_context

    env = make_env("guess_number", train_size=3, test_size=3, max_turns=3)
    tok = build_tokenizer()
    rows = list(env.rows("train"))
    prompt_len = max(len(tok(env.prompt(r) if isinstance(env.prompt(r), str) else
                             "\n".join(m["content"] for m in env.prompt(r)))["input_ids"])
                     for r in rows)  # fmt: skip
    cfg = SimpleNamespace(rollout=SimpleNamespace(max_new_tokens=8, max_turns=None, max_tokens=None),
                          model=SimpleNamespace(chat_template="auto"),
                          env=SimpleNamespace(name="guess_number", split="train"))  # fmt: skip
    # default budget 3 turns x 8 tokens = 24: room for one turn (8) is not enough
    with pytest.raises(ConfigError, match=r"rollout\.max_tokens=24"):
        fits_context(env, rows, tok, cfg, context=prompt_len + 16)
    assert fits_context(env, rows, tok, cfg, context=prompt_len + 30) == rows


def test_eval_prompt_longer_than_the_context_is_a_clear_error_for_vllm(tiny_model_dir, capsys):
    from verirl.envs import make_env
    from verirl.evals.runner import check_context, load_problems
    from verirl.evals.suite import load_suite

    overrides = ["sampling.max_tokens=510", "envs=[{name: arithmetic, size: 3}]"]
    suite = load_suite("arithmetic", overrides)
    envs = {s.key: make_env(s.name, **s.options) for s in suite.envs}
    problems = load_problems(suite, envs)
    tok = build_tokenizer()
    vllm = suite.model_copy(update={"backend": "vllm"})  # vLLM refuses them mid-run
    with pytest.raises(ConfigError, match=r"3 of 3 prompts plus sampling.max_tokens=510 exceed"):
        check_context("base", tiny_model_dir, problems, tok, vllm)  # context 512
    capsys.readouterr()
    check_context("base", tiny_model_dir, problems, tok, suite)  # hf runs past it: a warning
    assert "warning: model 'base': 3 of 3 prompts" in capsys.readouterr().out
    short = suite.sampling.model_copy(update={"max_tokens": 8})
    check_context(
        "base", tiny_model_dir, problems, tok, vllm.model_copy(update={"sampling": short})
    )
    assert capsys.readouterr().out == ""
