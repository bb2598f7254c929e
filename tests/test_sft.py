"""SFT: the prompt is masked out of the loss; a short run lowers the loss and saves a model."""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForCausalLM

from verirl.algos import sft_loss
from verirl.config import validate_config
from verirl.train.config import SftConfig
from verirl.train.metrics import read_metrics
from verirl.train.model import pack
from verirl.train.sft import sft


def test_pack_marks_only_completion_targets():
    b = pack([[7, 8, 9], [7]], [[4, 5], [6]], pad=0, device="cpu")
    assert b.input_ids.tolist() == [[7, 8, 9, 4, 5], [7, 6, 0, 0, 0]]
    assert b.targets.tolist() == [[8, 9, 4, 5], [6, 0, 0, 0]]
    assert b.mask.tolist() == [[0, 0, 1, 1], [1, 0, 0, 0]]


def test_sft_loss_ignores_prompt_positions():
    torch.manual_seed(0)
    logits = torch.randn(1, 4, 10)
    labels = torch.tensor([[-100, -100, 3, 4]])  # prompt positions carry label -100
    changed = logits.clone()
    changed[:, :2] = torch.randn(1, 2, 10) * 5  # only prompt positions differ
    assert torch.equal(sft_loss(logits, labels), sft_loss(changed, labels))
    want = -torch.log_softmax(logits[0, 2:], -1)[[0, 1], [3, 4]].mean()
    assert torch.allclose(sft_loss(logits, labels), want)


def test_sft_on_jsonl_lowers_loss_and_saves_model(tiny_model_dir, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}+1=", "completion": str(i + 1)}) + "\n"
                            for i in range(20)))  # fmt: skip
    cfg = validate_config(
        SftConfig,
        {
            "name": "sft",
            "run_dir": str(tmp_path),
            "model": {"path": str(tiny_model_dir)},
            "env": {"name": "arithmetic"},
            "data": {"path": str(data)},
            "train": {"steps": 30, "batch_size": 8, "lr": 3e-3, "schedule": "constant"},
            "log": {"progress": False, "tensorboard": False},
        },
        "test",
    )
    run_dir = sft(cfg)
    losses = [r["loss"] for r in read_metrics(run_dir)]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5
    model = AutoModelForCausalLM.from_pretrained(run_dir / "final")
    assert model.config.vocab_size > 0 and (run_dir / f"{run_dir.name}_curves.png").is_file()


def test_multi_turn_labels_leave_out_prompt_padding_and_environment_tokens():
    from verirl.train.sft import loss_labels

    # row 0: prompt [7, 8], completion [4, 5, 6] with 5 the environment's (tool output)
    b = pack([[7, 8], [7]], [[4, 5, 6], [9]], pad=0, device="cpu")
    labels = loss_labels(b, [[1, 0, 1], [1]])
    assert labels.tolist() == [[-100, 4, -100, 6], [9, -100, -100, -100]]
