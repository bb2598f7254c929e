"""``verirl dpo``: a short run raises the chosen-vs-rejected margin, resume is exact, the
reference is the starting model (frozen copy or LoRA off), column mapping from a dataset, and
bad input exits 2 naming file/row/field with no run directory written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from verirl.cli import main
from verirl.config import validate_config
from verirl.train.dpo import dpo
from verirl.train.dpo_config import DpoConfig
from verirl.train.metrics import read_metrics

TIMING = {"step_seconds", "tokens_per_s"}


def _pairs(path: Path, n: int = 16) -> Path:
    """Arithmetic pairs: the right sum is chosen, a wrong one rejected (what verifiable
    rewards give for free)."""
    rows = [{"prompt": f"{i}+{i % 5}=", "chosen": str(i + i % 5), "rejected": str(i + i % 5 + 3)}
            for i in range(n)]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _config(model_dir: Path, tmp: Path, **sections: dict) -> dict:
    cfg: dict = {
        "name": "dpo",
        "run_dir": str(tmp / "runs"),
        "model": {"path": str(model_dir)},
        "data": {"path": str(_pairs(tmp / "pairs.jsonl"))},
        "algo": {"beta": 0.1},
        "train": {"steps": 12, "batch_size": 8, "lr": 1e-2, "schedule": "constant", "threads": 1},
        "log": {"progress": False, "tensorboard": False},
    }
    for k, v in sections.items():
        cfg[k] = {**cfg.get(k, {}), **v}
    return cfg


def test_dpo_raises_the_margin(tiny_model_dir, tmp_path):
    run = dpo(validate_config(DpoConfig, _config(tiny_model_dir, tmp_path), "test"))
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == list(range(1, 13))
    first, last = rows[0], rows[-1]
    # step 1: the policy is the reference, so every implicit reward is exactly 0
    assert first["rewards/chosen"] == first["rewards/rejected"] == 0.0
    assert first["loss"] == pytest.approx(0.6931, abs=1e-4)  # log 2
    assert last["rewards/margins"] > 0.5
    assert sum(r["rewards/accuracies"] for r in rows[-4:]) / 4 >= 0.9
    assert last["loss"] < 0.75 * first["loss"]
    assert last["rewards/rejected"] < 0  # the rejected sums are pushed down, not only up
    assert (run / "final" / "config.json").is_file() and (run / "dpo_curves.png").is_file()
    assert (run / "checkpoints" / "step-12" / "trainer_state.pt").is_file()


def test_dpo_resume_is_exact(tiny_model_dir, tmp_path):
    """A run cut after step 3 (checkpoint at 2) and resumed equals the unbroken run: every
    metric of every step and the final weights."""
    cfg = _config(tiny_model_dir, tmp_path, train={"steps": 6, "save_every": 2})
    full = dpo(validate_config(DpoConfig, cfg, "test"))
    cut = full.with_name("cut")
    shutil.copytree(full, cut)
    for step in (4, 6):  # what a process killed during step 4 has not written yet
        shutil.rmtree(cut / "checkpoints" / f"step-{step}")
    shutil.rmtree(cut / "final")
    lines = (cut / "metrics.jsonl").read_text().splitlines()
    (cut / "metrics.jsonl").write_text("\n".join(lines[:3]) + "\n")
    assert main(["dpo", "--resume", str(cut), "log.progress=false"]) == 0

    def strip(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]

    assert strip(read_metrics(cut)) == strip(read_metrics(full))
    want = load_file(str(full / "final" / "model.safetensors"))
    got = load_file(str(cut / "final" / "model.safetensors"))
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert len({r["loss"] for r in read_metrics(full)}) > 1  # the compared numbers move


def test_lora_reference_and_dataset_columns(tiny_model_dir, tmp_path):
    """LoRA with π_ref = adapters off, IPO, micro-batches, rows from a saved 🤗 dataset with
    other column names (prompt as chat messages, completions as assistant messages)."""
    from datasets import Dataset

    rows = [{"question": [{"role": "user", "content": f"{i}+1="}],
             "good": [{"role": "assistant", "content": str(i + 1)}], "bad": str(i + 2)}
            for i in range(8)]  # fmt: skip
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    cfg = _config(
        tiny_model_dir,
        tmp_path,
        model={"lora": {"enabled": True, "r": 4}},
        data={
            "path": None,
            "dataset": str(tmp_path / "ds"),
            "prompt_field": "question",
            "chosen_field": "good",
            "rejected_field": "bad",
        },
        algo={"reference": "lora_disabled", "loss_type": "ipo", "beta": 0.5},
        train={"steps": 4, "micro_batch_size": 4, "lr": 1e-2},
    )
    run = dpo(validate_config(DpoConfig, cfg, "test"))
    rows_out = read_metrics(run)
    # LoRA's B starts at 0: the adapted model is the reference at step 1
    assert rows_out[0]["rewards/chosen"] == 0.0 and rows_out[0]["rewards/margins"] == 0.0
    assert rows_out[0]["loss"] == pytest.approx(1.0)  # IPO at h = 0: (0 − 1/(2·0.5))²
    assert rows_out[-1]["rewards/margins"] > 0
    assert (run / "final" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "1+1=", "chosen": "2"}, "pairs.jsonl:3: missing field 'rejected'"),
        ({"prompt": "1+1=", "chosen": 2, "rejected": "3"}, "pairs.jsonl:3: field 'chosen'"),
        ({"prompt": 7, "chosen": "2", "rejected": "3"}, "pairs.jsonl:3: field 'prompt'"),
        ({"prompt": "1+1=", "chosen": "2", "rejected": "9" * 600}, "more than the model's context"),
    ],
)
def test_bad_rows_exit_2_and_write_nothing(tiny_model_dir, tmp_path, capsys, row, message):
    cfg = _config(tiny_model_dir, tmp_path)
    data = _pairs(tmp_path / "pairs.jsonl", 2)
    data.write_text(data.read_text() + json.dumps(row) + "\n")
    config = tmp_path / "dpo.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert main(["dpo", str(config)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_bad_config_exits_2(tiny_model_dir, tmp_path, capsys):
    cfg = _config(tiny_model_dir, tmp_path, algo={"reference": "lora_disabled"})
    config = tmp_path / "dpo.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert main(["dpo", str(config)]) == 2
    assert "lora_disabled' needs model.lora.enabled" in capsys.readouterr().err
    assert main(["dpo", str(config), "data.dataset=x"]) == 2  # path and dataset both given
    assert "exactly one of data.path" in capsys.readouterr().err
    assert main(["dpo", "--resume", str(tmp_path / "nowhere")]) == 2
    assert not (tmp_path / "runs").exists()
