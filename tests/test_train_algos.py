"""The algorithm menu wired into the trainer: every new ``algo.advantage`` / ``algo.policy_loss`` /
shaping option trains the tiny model one step (every parameter moves, the loss is finite), and
``with_advantages`` builds the loss mask and shaped rewards without touching its input."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import vr_train_envs
from transformers import AutoModelForCausalLM

from verirl.config import validate_config
from verirl.errors import ConfigError
from verirl.train.config import AlgoSection, TrainConfig
from verirl.train.loop import train
from verirl.train.metrics import read_metrics
from verirl.train.model import pack
from verirl.train.update import Rollout, objective_config, with_advantages


def run(tiny_model_dir: Path, tmp_path: Path, **sections) -> Path:
    cfg = validate_config(
        TrainConfig, vr_train_envs.train_config(tiny_model_dir, tmp_path, **sections), "test"
    )
    return train(cfg)


@pytest.mark.parametrize(
    "algo",
    [
        {"advantage": "rloo", "overlong_cache": 4, "length_penalty": 0.1},
        {"advantage": "reinforce_pp"},
        {"advantage": "reinforce_pp_baseline"},
        {"policy_loss": "gspo", "loss_agg": "seq-mean-token-mean", "epochs": 2},
        {"policy_loss": "cispo", "epochs": 2},
        {"policy_loss": "dual_clip", "epochs": 2},
    ],
    ids=lambda a: "+".join(f"{v}" for v in a.values() if isinstance(v, str)),
)
def test_each_option_trains_the_tiny_model(tiny_model_dir, tmp_path, algo):
    run_dir = run(tiny_model_dir, tmp_path, algo={"batch_size": 8, "group_size": 4, **algo},
                  train={"steps": 1, "lr": 1e-3})  # fmt: skip
    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    after = AutoModelForCausalLM.from_pretrained(run_dir / "final").state_dict()
    assert [k for k in before if torch.equal(before[k], after[k])] == []
    (row,) = read_metrics(run_dir)
    assert math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"]) and row["grad_norm"] > 0
    if "overlong_cache" in algo:
        assert row["shaping/overlong"] <= 0 and row["shaping/length"] < 0


def _rollout(lengths: list[int], rewards: list[float], truncated: list[bool]) -> Rollout:
    batch = pack([[1, 2]] * len(lengths), [[5] * n for n in lengths], 0, "cpu")
    g = len(lengths) // 2
    return Rollout(batch, torch.tensor(rewards).view(2, g), torch.ones(2, g),
                   truncated=torch.tensor(truncated))  # fmt: skip


def test_with_advantages_masks_truncated_and_shapes_rewards_without_mutating():
    ro = _rollout([2, 8, 3, 8], [1.0, 1.0, 0.0, 1.0], [False, True, False, True])
    mask0 = ro.batch.mask.clone()
    algo = AlgoSection(batch_size=4, group_size=2, advantage="rloo", mask_truncated=True,
                       overlong_cache=4, length_penalty=0.5)  # fmt: skip
    out = with_advantages(ro, algo, max_new_tokens=8)
    assert torch.equal(ro.batch.mask, mask0) and ro.adv is None  # the input is unchanged
    assert out.batch.mask.sum(-1).tolist() == [2, 0, 3, 0]  # truncated rows left the loss
    # rewards: 1 − 0.5·2/8, 1 − 1 − 0.5, 0 − 0.5·3/8, 1 − 1 − 0.5  (overlong: 8 tokens = −1)
    r = [0.875, -0.5, -0.1875, -0.5]
    adv = out.adv.sum(-1) / out.batch.mask.sum(-1).clamp(min=1)
    assert adv.tolist() == pytest.approx([r[0] - r[1], 0.0, r[2] - r[3], 0.0])
    assert out.stats["truncated"] == 2 and out.stats["shaping/overlong"] == -0.5
    # defaults: no shaping, truncated rows train, GRPO advantages
    plain = with_advantages(ro, AlgoSection(batch_size=4, group_size=2), max_new_tokens=8)
    assert torch.equal(plain.batch.mask, mask0) and "truncated" not in plain.stats


def test_presets_and_the_objective_config():
    assert AlgoSection().advantage == "grpo" and AlgoSection().policy_loss == "ppo_clip"
    ppo = AlgoSection(name="ppo", group_size=1, batch_size=4)
    assert ppo.advantage == "gae" and ppo.kl_in == "loss" and ppo.kl_in_loss
    assert not AlgoSection(name="ppo", group_size=1, batch_size=4, kl_in="reward").kl_in_loss
    assert AlgoSection(kl_in="reward").kl_in_loss  # the grpo preset: the KL is in the loss
    obj = objective_config(AlgoSection(policy_loss="cispo", beta=0.1, cispo_max=4.0), 32)
    assert (obj.policy_loss, obj.kl_coef, obj.params.cispo_max, obj.max_len) == (
        "cispo",
        0.1,
        4.0,
        32.0,
    )


@pytest.mark.parametrize(
    ("algo", "message"),
    [
        ({"advantage": "gae"}, "gae needs the ppo preset"),
        ({"name": "ppo", "advantage": "rloo", "group_size": 4}, "gae needs the ppo preset"),
        ({"advantage": "rloo", "group_size": 1}, "group_size must be >= 2 for advantage 'rloo'"),
        (
            {"advantage": "reinforce_pp", "group_size": 1, "filter_zero_variance": True},
            "group_size must be >= 2 for filter_zero_variance",
        ),
        ({"policy_loss": "gspo_token"}, "policy_loss"),
        ({"overlong_cache": 64}, "overlong_cache=64 must be <= rollout.max_new_tokens=8"),
    ],
)
def test_bad_algo_keys_name_the_key(tiny_model_dir, tmp_path, algo, message):
    raw = vr_train_envs.train_config(tiny_model_dir, tmp_path, algo={"batch_size": 8, **algo})
    with pytest.raises(ConfigError, match=message):
        validate_config(TrainConfig, raw, "test")
    assert AlgoSection(advantage="reinforce_pp", group_size=1, batch_size=4).advantage
