"""Online DPO (``algo.name: online_dpo`` in ``verirl train``): pairs are each group's best vs
worst sample, groups without a reward difference are skipped and counted, the update equals
offline ``verirl dpo``'s on the same pairs, a short run raises the reward, resume is exact."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from verirl.algos import token_logprobs
from verirl.train.dpo import dpo_update
from verirl.train.dpo_config import DpoAlgo
from verirl.train.metrics import read_metrics
from verirl.train.model import Reference, forward_logits, pack
from verirl.train.online_dpo import online_dpo_update, pair_rows
from verirl.train.pairwise import Pair


@pytest.mark.parametrize(
    ("rewards", "valid", "chosen", "rejected", "skipped"),
    [
        ([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0]], [[1, 1, 1], [1, 1, 1]], [1], [0], 1),
        ([[0.2, 0.9], [0.0, 1.0]], [[1, 1], [1, 1]], [1, 3], [0, 2], 0),
        ([[1.0, 0.0, 0.0]], [[0, 1, 1]], [], [], 1),  # the only 1.0 is an infra error
    ],
)
def test_pair_rows(rewards, valid, chosen, rejected, skipped):
    c, r, stats = pair_rows(torch.tensor(rewards), torch.tensor(valid))
    assert c.tolist() == chosen and r.tolist() == rejected
    assert stats == {"dpo/pairs": float(len(chosen)), "dpo/groups_skipped": float(skipped)}


def _policy(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_online_update_equals_offline_dpo_on_the_same_pairs(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    eos = tok.eos_token_id
    prompts = [tok("3+4=")["input_ids"], tok("1+1=")["input_ids"], tok("5+0=")["input_ids"]]
    samples = [["7", "8", "12"], ["2", "2", "2"], ["4", "5", "50"]]  # G = 3 per prompt
    comps = [[tok(s)["input_ids"] + [eos] for s in g] for g in samples]
    rewards = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
    batch = pack([p for p in prompts for _ in range(3)], [c for g in comps for c in g],
                 tok.pad_token_id, "cpu")  # fmt: skip
    ref_model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():  # what the loop's reference pass gives: per-token log π_ref
        logits, _ = forward_logits(ref_model, batch)
        ref_logp = token_logprobs(logits, batch.targets) * batch.mask

    online = _policy(tiny_model_dir)
    got = online_dpo_update(online, batch, ref_logp, rewards, torch.ones(3, 3), beta=0.2, micro=2)
    assert got["dpo/pairs"] == 2 and got["dpo/groups_skipped"] == 1  # all-equal group 2

    offline = _policy(tiny_model_dir)
    pairs = [Pair(prompts[0], comps[0][0], comps[0][1]), Pair(prompts[2], comps[2][1], comps[2][0])]
    ref = Reference("frozen", AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    want = dpo_update(offline, ref, pairs, DpoAlgo(beta=0.2), micro=2, pad=tok.pad_token_id,
                      device="cpu")  # fmt: skip
    for k in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert got[k] == pytest.approx(want[k], abs=1e-6), k
    grads = dict(offline.named_parameters())
    diff = max((p.grad - grads[n].grad).abs().max().item() for n, p in online.named_parameters())
    assert diff < 1e-6 and any(p.grad.abs().sum() > 0 for p in online.parameters())


def test_no_pair_means_no_gradient(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tok("1+1=")["input_ids"]
    batch = pack([ids, ids], [[17, 1], [18, 1]], tok.pad_token_id, "cpu")
    model = _policy(tiny_model_dir)
    out = online_dpo_update(model, batch, torch.zeros_like(batch.mask), torch.ones(1, 2),
                            torch.ones(1, 2), beta=0.1)  # fmt: skip
    assert out == {"dpo/pairs": 0.0, "dpo/groups_skipped": 1.0}
    assert all(p.grad is None for p in model.parameters())


def _online_run(tiny_model_dir, tmp_path, name: str = "odpo", **train) -> Path:
    import vr_train_envs

    from verirl.config import validate_config
    from verirl.train.config import TrainConfig
    from verirl.train.loop import train as train_loop

    cfg = vr_train_envs.train_config(
        tiny_model_dir, tmp_path, name=name,
        algo={"name": "online_dpo", "batch_size": 16, "group_size": 4, "beta": 0.1},
        train={"steps": 16, "lr": 2e-2, "threads": 1, **train},
    )  # fmt: skip
    return train_loop(validate_config(TrainConfig, cfg, "test"))


def test_online_dpo_raises_reward(tiny_model_dir, tmp_path):
    rows = read_metrics(_online_run(tiny_model_dir, tmp_path))
    rewards = [r["reward_mean"] for r in rows]
    assert sum(rewards[-4:]) / 4 - sum(rewards[:4]) / 4 > 0.2
    assert all(r["dpo/pairs"] + r["dpo/groups_skipped"] == 4 for r in rows)
    # step 1: π_θ = π_ref (up to the float rounding of a differently padded forward)
    assert rows[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    trained = [r for r in rows if r["dpo/pairs"] > 0]
    assert sum(r["rewards/margins"] for r in trained[-4:]) > 0
    # once every sample scores 1.0 no group has a pair: no loss and no optimizer step
    idle = [r for r in rows if r["dpo/pairs"] == 0]
    assert idle and all("loss" not in r and r["grad_norm"] == 0.0 for r in idle)


def test_online_dpo_resume_is_exact(tiny_model_dir, tmp_path):
    """Cut after step 3 (checkpoint at 2), resume with --resume: the same metrics and weights
    as the unbroken run (the engine's sampling RNG and weights are restored too)."""
    from safetensors.torch import load_file

    from verirl.cli import main

    full = _online_run(tiny_model_dir, tmp_path, steps=4, save_every=2)
    cut = full.with_name("cut")
    shutil.copytree(full, cut)
    shutil.rmtree(cut / "checkpoints" / "step-4")
    shutil.rmtree(cut / "final")
    lines = (cut / "metrics.jsonl").read_text().splitlines()
    (cut / "metrics.jsonl").write_text("\n".join(lines[:3]) + "\n")
    assert main(["train", "--resume", str(cut)]) == 0
    timing = {"step_seconds", "gen_seconds", "sync_seconds", "tokens_per_s"}

    def strip(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in timing} for r in rows]

    assert strip(read_metrics(cut)) == strip(read_metrics(full))
    want = load_file(str(full / "final" / "model.safetensors"))
    got = load_file(str(cut / "final" / "model.safetensors"))
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_online_dpo_config_needs_beta_and_groups(tiny_model_dir, tmp_path):
    from verirl.config import validate_config
    from verirl.errors import ConfigError
    from verirl.train.config import TrainConfig

    base = {"model": {"path": str(tiny_model_dir)}, "env": {"name": "arithmetic"}}
    for algo in ({"name": "online_dpo"}, {"name": "online_dpo", "beta": 0.1, "group_size": 1,
                                          "batch_size": 4}):  # fmt: skip
        with pytest.raises(ConfigError, match=r"online_dpo' needs algo\.beta > 0"):
            validate_config(TrainConfig, {**base, "algo": algo}, "test")
