"""Run directories never collide or vanish (verirl.rundir, the demo's clean-up, eval's --out)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from verirl.evals.cli import choose_out_dir

from verirl.demo import DEMO_OUTPUTS, MARKER, clear_demo_outputs
from verirl.errors import UserError
from verirl.rundir import claim_run_dir, clear_run_dir


def _run(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.yaml").write_text("name: x\n")
    return path


def test_a_new_or_empty_dir_is_used_as_is(tmp_path):
    assert claim_run_dir(tmp_path / "new") == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    assert claim_run_dir(tmp_path / "empty") == tmp_path / "empty"


def test_an_occupied_dir_is_an_error_naming_the_ways_on(tmp_path):
    run = _run(tmp_path / "grpo")
    with pytest.raises(UserError) as e:
        claim_run_dir(run)
    assert "--overwrite replaces it" in str(e.value) and "name=OTHER" in str(e.value)
    assert "--resume" not in str(e.value)  # no checkpoint: nothing to resume
    with pytest.raises(UserError, match=f"--resume {run} continues it"):
        claim_run_dir(run, resumable=True)


def test_a_name_the_user_did_not_choose_moves_aside_to_a_timestamp(tmp_path, capsys):
    run = _run(tmp_path / "grpo")
    got = claim_run_dir(run, unique=True, now=0.0)
    assert got.parent == tmp_path and got.name.startswith("grpo-19")
    assert f"this run writes to {got}" in capsys.readouterr().out
    _run(got)
    assert claim_run_dir(run, unique=True, now=0.0) == got.with_name(got.name + "-2")
    assert (run / "config.yaml").exists()


def test_overwrite_deletes_only_run_directories(tmp_path):
    run = _run(tmp_path / "grpo")
    assert claim_run_dir(run, overwrite=True) == run
    clear_run_dir(run)
    assert not run.exists()
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    with pytest.raises(UserError, match="not a verirl run directory"):
        claim_run_dir(home, overwrite=True)
    with pytest.raises(UserError):
        clear_run_dir(home)
    assert (home / "thesis.tex").exists()


def test_the_demo_deletes_only_what_it_wrote(tmp_path):
    out = tmp_path / "demo"
    for name in DEMO_OUTPUTS:
        (out / name).mkdir(parents=True) if "." not in name else (out / name).write_text("x")
    (out / MARKER).write_text(json.dumps({"outputs": list(DEMO_OUTPUTS)}))
    _run(out / "beta")  # a run of the user's, put under runs/demo
    (out / "notes.txt").write_text("mine")
    assert clear_demo_outputs(out) == ["beta", "notes.txt"]
    assert sorted(p.name for p in out.iterdir()) == ["beta", "notes.txt"]


def test_eval_out_reuses_the_same_evaluation_and_never_overwrites_another(tmp_path, capsys):
    same = {"suite": "arithmetic", "sampling_hash": "h", "models": ["base", "grpo"]}
    out = tmp_path / "eval" / "arithmetic"
    assert choose_out_dir(None, str(out), same, False) == out  # nothing there yet
    out.mkdir(parents=True)
    summary = {"suite": "arithmetic", "sampling_hash": "h", "models": {"base": {}, "grpo": {}}}
    (out / "summary.json").write_text(json.dumps(summary))
    assert choose_out_dir(None, str(out), same, False) == out
    assert "reusing it" in capsys.readouterr().out
    other = {**same, "models": ["base", "ppo"]}
    moved = choose_out_dir(None, str(out), other, False)  # the default folder moves aside
    assert moved != out and moved.name.startswith("arithmetic-")
    with pytest.raises(UserError, match=r"holds another evaluation.*--overwrite"):
        choose_out_dir(str(out), str(out), other, False)
    assert choose_out_dir(str(out), str(out), other, True) == out and not out.exists()
