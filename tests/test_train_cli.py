"""Bad input to `verirl train` / `verirl sft`: a clear message, exit code 2, no run dir left."""

from __future__ import annotations

import json

import pytest
import yaml

from verirl.cli import main
from verirl.train.metrics import read_metrics


def _config(path, tiny_model_dir, tmp_path, **extra):
    cfg = {
        "name": "bad",
        "run_dir": str(tmp_path / "runs"),
        "model": {"path": str(tiny_model_dir)},
        "env": {"name": "arithmetic", "options": {"train_size": 20, "test_size": 5}},
        "algo": {"batch_size": 8, "group_size": 4},
        "train": {"steps": 1},
        "log": {"progress": False, "tensorboard": False},
        **extra,
    }
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.path=/no/such/model"], "model.path"),
        (["env.name=no-such-env"], "unknown environment 'no-such-env'"),
        (["env.options.bogus=1"], "has no option 'bogus'"),
        (["algo.group_size=1", "algo.batch_size=8"], "algo.group_size must be >= 2"),
        (["algo.batch_size=10"], "algo.batch_size=10 must be divisible by algo.group_size=4"),
        (["train.micro_batch_size=3"], "train.micro_batch_size=3 must divide"),
        (["algo.nonsense=1"], "unknown key 'algo.nonsense'"),
        (["env.split=validation"], "env.split"),
    ],
    ids=[
        "model-path",
        "env",
        "env-option",
        "group-size",
        "batch-vs-group",
        "micro",
        "key",
        "split",
    ],
)
def test_train_bad_input_exits_2_and_leaves_no_run_dir(
    tiny_model_dir, tmp_path, capsys, overrides, message
):
    cfg = _config(tmp_path / "c.yaml", tiny_model_dir, tmp_path)
    assert main(["train", cfg, *overrides]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_sft_dataset_missing_column_names_file_row_and_field(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"prompt": "1+1=", "completion": "2"}) + "\n"
                    + json.dumps({"prompt": "2+2="}) + "\n")  # fmt: skip
    cfg = _config(tmp_path / "c.yaml", tiny_model_dir, tmp_path)
    assert main(["sft", cfg, f"data.path={data}", "algo=null", "train.batch_size=2"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'algo'" in err  # sft has no algo section: config checked first
    assert main(["sft", _sft_config(tmp_path, tiny_model_dir, data)]) == 2
    assert f"{data}:2: missing field 'completion'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_sft_env_rows_lacking_target_field(tiny_model_dir, tmp_path, capsys):
    cfg = _sft_config(tmp_path, tiny_model_dir, None)
    assert main(["sft", cfg, "data.target_field=solution"]) == 2
    assert "missing field 'solution'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_existing_run_dir_and_resume_without_checkpoint(tiny_model_dir, tmp_path, capsys):
    cfg = _config(tmp_path / "c.yaml", tiny_model_dir, tmp_path)
    (tmp_path / "runs" / "bad").mkdir(parents=True)
    (tmp_path / "runs" / "bad" / "keep.txt").write_text("x")
    # a name given on the command line is never moved aside, nor is anything replaced
    assert main(["train", cfg, "name=bad"]) == 2
    err = capsys.readouterr().err
    assert "exists: --overwrite replaces it, name=OTHER writes beside it" in err
    assert main(["train", cfg, "name=bad", "--overwrite"]) == 2  # not a run dir: kept
    assert "not a verirl run directory" in capsys.readouterr().err
    assert main(["train", cfg, "--resume", str(tmp_path / "runs" / "bad")]) == 2
    assert "config.yaml" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "runs" / "bad").iterdir()) == ["keep.txt"]
    # a run that died before its first checkpoint: --resume names the one flag that restarts it
    dead = tmp_path / "runs" / "dead"
    dead.mkdir()
    (dead / "config.yaml").write_text(yaml.safe_dump({**yaml.safe_load(open(cfg)), "name": "dead"}))
    assert main(["train", "--resume", str(dead)]) == 2
    err = capsys.readouterr().err
    restart = f"verirl train {dead / 'config.yaml'} --overwrite"
    assert restart in err
    assert main(restart.split()[1:]) == 0
    assert (dead / "final").is_dir() and (dead / "checkpoints" / "step-1").is_dir()


def test_resume_needs_no_config_lists_overrides_and_refuses_another_config(
    tiny_model_dir, tmp_path, capsys
):
    cfg = _config(tmp_path / "c.yaml", tiny_model_dir, tmp_path)
    assert main(["train", cfg]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "runs" / "bad"
    assert f"run dir: {run}" in out and f"wrote {run}" in out
    assert main(["train", "--resume", str(run), "train.steps=2"]) == 0
    out = capsys.readouterr().out
    assert f"resuming {run} from step 1" in out and "resume overrides: train.steps=2" in out
    assert [r["step"] for r in read_metrics(run)] == [1, 2]
    other = _config(tmp_path / "other.yaml", tiny_model_dir, tmp_path,
                    env={"name": "arithmetic", "options": {"train_size": 30, "test_size": 5}})  # fmt: skip
    assert main(["train", other, "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "differs from" in err and "env.options.train_size: 30 != 20" in err
    # the same config is fine (a second plain run moving aside: tests/test_readme.py)
    assert main(["train", cfg, "--resume", str(run), "train.steps=2"]) == 0
    assert f"resuming {run} from step 2" in capsys.readouterr().out


def _sft_config(tmp_path, tiny_model_dir, data):
    cfg = {
        "name": "bad-sft",
        "run_dir": str(tmp_path / "runs"),
        "model": {"path": str(tiny_model_dir)},
        "env": {"name": "arithmetic", "options": {"train_size": 20, "test_size": 5}},
        "data": {"path": str(data)} if data else {},
        "train": {"steps": 1, "batch_size": 2},
        "log": {"progress": False, "tensorboard": False},
    }
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_no_trainable_rows_and_a_small_split_warn_and_progress_is_logged(
    tiny_model_dir, tmp_path, capsys
):
    # A random model never writes the sum: every reward is 0, so no row has a gradient.
    cfg = _config(tmp_path / "c.yaml", tiny_model_dir, tmp_path,
                  env={"name": "arithmetic", "options": {"train_size": 1, "test_size": 5}},
                  rollout={"max_new_tokens": 2},
                  train={"steps": 5},
                  log={"progress": True, "tensorboard": False, "samples_every": 0})  # fmt: skip
    assert main(["train", cfg]) == 0
    out = capsys.readouterr().out
    assert "has 1 rows but a step takes 2 prompts" in out
    assert "5 steps in a row with no trainable row" in out
    assert "train step 5/5 (100%)  reward 0.000" in out  # plain progress lines off a terminal
