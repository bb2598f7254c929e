"""``verirl rm`` (Bradley–Terry reward model) and the ``rm`` environment: a short run ranks
held-out pairs right; the env reports the learned score as its own component, keeps the
verifier's status, and can train alone; bad input exits 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from verirl.envs.registry import make_env

from verirl.cli import main
from verirl.errors import ConfigError
from verirl.train.metrics import read_metrics

LOG = {"progress": False, "tensorboard": False}


def _pairs(path: Path) -> Path:
    """Right sums chosen over wrong ones; the wrong ones have two digits (sums of 0..4 + 0..4
    have one), a signal a tiny model can learn in a few steps."""
    env = make_env("arithmetic", max_operand=5, train_size=40)
    rows = [{"prompt": env.prompt(r), "chosen": r["answer"],
             "rejected": str(int(r["answer"]) + 10 * (1 + i % 3))}
            for i, r in enumerate(env.rows("train"))]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def rm_run(tiny_model_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rm")
    cfg = {"run_dir": str(root / "runs"), "model": {"path": str(tiny_model_dir)},
           "data": {"path": str(_pairs(root / "pairs.jsonl")), "eval_fraction": 0.25},
           "train": {"steps": 15, "batch_size": 8, "lr": 3e-3, "schedule": "constant",
                     "threads": 1}, "log": LOG}  # fmt: skip
    (root / "rm.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["rm", str(root / "rm.yaml")]) == 0
    return root / "runs" / "rm"


def test_rm_ranks_held_out_pairs(rm_run):
    result = json.loads((rm_run / "eval.json").read_text())
    assert result["heldout_pairs"] == 10 and result["train_pairs"] == 30
    assert result["heldout_accuracy"] >= 0.9
    rows = read_metrics(rm_run)
    assert rows[0]["loss"] == pytest.approx(0.6931, abs=0.05)  # a fresh head: near log 2
    assert rows[-1]["loss"] < 0.3 and rows[-1]["margin"] > 1.0
    assert (rm_run / "final" / "config.json").is_file()


def test_rm_env_reports_the_learned_score_beside_the_verifier(rm_run):
    final = str(rm_run / "final")
    opts = {"max_operand": 5, "train_size": 40}
    env = make_env("rm", env="arithmetic", model_path=final, weight=0.5, env_options=opts)
    row = env.rows("train")[1]
    right, wrong = row["answer"], str(int(row["answer"]) + 20)
    got = env.score_batch([right, wrong], [row, row])
    r_right, r_wrong = env.rm_scores([env.prompt(row)] * 2, [right, wrong])
    assert [g.status for g in got] == ["correct", "incorrect"]  # the verifier's, always
    assert got[0].components == pytest.approx({"verifier": 1.0, "rm": r_right})
    assert got[0].reward == pytest.approx(1.0 + 0.5 * r_right)
    assert got[1].reward == pytest.approx(0.0 + 0.5 * r_wrong)
    assert r_right > r_wrong and "not verified" in got[0].detail
    alone = make_env("rm", env="arithmetic", model_path=final, verifier_weight=0.0,
                     env_options=opts)  # fmt: skip
    assert alone.score(wrong, row).reward == pytest.approx(r_wrong, abs=1e-5)
    assert alone.score(wrong, row).status == "incorrect"


def test_rm_env_trains_with_grpo(rm_run, tiny_model_dir, tmp_path):
    """The learned reward drives `verirl train` like any reward; pass_rate stays verified."""
    cfg = {"name": "g", "run_dir": str(tmp_path), "model": {"path": str(tiny_model_dir)},
           "env": {"name": "rm", "options": {"env": "arithmetic", "model_path":
                   str(rm_run / "final"), "env_options": {"max_operand": 5}}},
           "rollout": {"max_new_tokens": 3}, "algo": {"batch_size": 8, "group_size": 4},
           "train": {"steps": 2, "threads": 1}, "log": LOG}  # fmt: skip
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "g.yaml")]) == 0
    rows = read_metrics(tmp_path / "g")
    assert len(rows) == 2 and all("reward/rm" in r and "pass_rate" in r for r in rows)


def test_bad_rm_input_exits_2(tiny_model_dir, tmp_path, capsys):
    cfg = {"run_dir": str(tmp_path / "runs"), "model": {"path": str(tiny_model_dir),
           "lora": {"enabled": True}}, "data": {"path": str(_pairs(tmp_path / "p.jsonl"))}}  # fmt: skip
    (tmp_path / "rm.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["rm", str(tmp_path / "rm.yaml")]) == 2
    assert "no LoRA" in capsys.readouterr().err
    (tmp_path / "p.jsonl").write_text('{"prompt": "1+1=", "chosen": "2"}\n')
    assert main(["rm", str(tmp_path / "rm.yaml"), "model.lora.enabled=false"]) == 2
    assert "p.jsonl:1: missing field 'rejected'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    with pytest.raises(ConfigError, match="model_path"):
        make_env("rm", env="arithmetic")


def test_rm_scores_are_one_number_per_sequence(tiny_model_dir):
    from verirl.train.model import pack
    from verirl.train.rm import load_reward_model, scores

    model, tok = load_reward_model(str(tiny_model_dir))
    batch = pack([[17, 12], [17, 12]], [[18, 1], [18, 19, 1]], tok.pad_token_id, "cpu")
    with torch.no_grad():
        s = scores(model, batch)
        alone = scores(model, pack([[17, 12]], [[18, 1]], tok.pad_token_id, "cpu"))
    assert s.shape == (2,) and s[0].item() == pytest.approx(alone.item(), abs=1e-5)  # pad-blind
