"""`verirl train` under torchrun (2 gloo ranks): rank 0 alone writes, a resumed run equals the
unbroken one, a rank with nothing to train keeps step, FSDP2 saves and resumes the full model,
and a run that cannot split or resume says so before writing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from verirl.errors import ConfigError

LAUNCHER = Path(__file__).with_name("vr_torchrun_verirl.py")


def torchrun_train(cfg: Path, *args: str, procs: int = 2) -> subprocess.CompletedProcess[str]:
    """`torchrun --standalone --nproc-per-node N <verirl> train CFG ARGS` (the launcher is the
    `verirl` entry point with the trainer tests' toy environment registered)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           str(procs), str(LAUNCHER), "train", str(cfg), *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def two_rank_runs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An unbroken 2-rank GRPO run of 8 steps (`whole`), and one stopped after 4 steps then
    resumed to 8 under 2 ranks (`resumed`)."""
    import vr_train_envs
    import yaml

    root = tmp_path_factory.mktemp("torchrun-train")
    cfg = vr_train_envs.train_config(
        tiny_model_dir, root, train={"steps": 8, "lr": 2e-2, "save_every": 4}
    )
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    for proc in (
        torchrun_train(root / "cfg.yaml", "name=whole"),
        torchrun_train(root / "cfg.yaml", "name=resumed", "train.steps=4"),
        torchrun_train(root / "cfg.yaml", "--resume", str(root / "resumed"), "train.steps=8"),
    ):
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return root


def test_verirl_train_under_torchrun_raises_reward_and_only_rank0_writes(
    two_rank_runs: Path,
) -> None:
    from verirl.train.metrics import read_metrics

    rows = read_metrics(two_rank_runs / "whole")
    assert [r["step"] for r in rows] == list(range(1, 9))  # one line per step: rank 0 only
    # statuses are summed over ranks: every completion of the global batch (16) once
    assert all(sum(r[k] for k in r if k.startswith("status/")) == 16 for r in rows)
    rewards = [r["reward_mean"] for r in rows]
    assert sum(rewards[-3:]) / 3 - sum(rewards[:3]) / 3 > 0.15, rewards
    samples = (two_rank_runs / "whole" / "samples.jsonl").read_text().splitlines()
    assert len(samples) == 8 * 4  # rank 0's samples (log.num_samples = 4) each step
    assert sorted(p.name for p in (two_rank_runs / "whole" / "checkpoints").iterdir()) == [
        "step-4",
        "step-8",
    ]
    state = torch.load(
        two_rank_runs / "whole" / "checkpoints" / "step-8" / "trainer_state.pt",
        weights_only=False,
    )
    assert state["dist"]["world_size"] == 2 and len(state["dist"]["rng_per_rank"]) == 2
    assert (two_rank_runs / "whole" / "final" / "config.json").exists()


def test_verirl_train_under_torchrun_resumes_exactly(two_rank_runs: Path) -> None:
    from verirl.train.metrics import read_metrics

    keys = ("reward_mean", "loss", "grad_norm", "entropy", "response_length")
    want = [{k: r[k] for k in keys} for r in read_metrics(two_rank_runs / "whole")]
    got = [{k: r[k] for k in keys} for r in read_metrics(two_rank_runs / "resumed")]
    assert len(got) == 8
    assert got == want  # the resumed half equals the unbroken run's steps 5-8
    assert len({r["reward_mean"] for r in want[4:]}) > 1  # the compared numbers do move


def test_resume_with_another_world_size_is_a_clear_error(two_rank_runs: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(LAUNCHER), "train", "--resume", str(two_rank_runs / "resumed"),
         "train.steps=9"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "written by 2 rank(s) but this run has 1" in proc.stderr
    # and nothing was written: the run still ends at step 8
    steps = (two_rank_runs / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert len(steps) == 8


@pytest.fixture(scope="module")
def idle_rank_runs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 2-rank GRPO step in which every prompt of rank 0 scores 0 (none of its rows has a
    gradient) and rank 1's rewards are dense: DDP and FSDP2, skipping zero-gradient rows
    (`skip`) or running every row (`all`). Skipping, rank 0 must still run as many micro-steps
    as rank 1: DDP all-reduces in the last backward, FSDP2 all-gathers in every forward."""
    import vr_train_envs
    import yaml
    from verirl.envs.registry import make_env

    from verirl.train.batch import batch_rows

    rows = make_env("test-ascii-fraction").rows("train")
    rank0 = [r["prompt"] for r in batch_rows(rows, 0, 4, seed=0)][:2]  # shard_groups(4): 0, 1
    root = tmp_path_factory.mktemp("torchrun-idle")
    cfg = vr_train_envs.train_config(
        tiny_model_dir,
        root,
        env={"name": "test-ascii-fraction", "options": {"zero_for": rank0}},
        train={"steps": 1, "lr": 1e-3, "micro_batch_size": 4},
        distributed={"timeout_s": 120},  # a rank left waiting fails the run, not the suite
    )
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    for strategy in ("ddp", "fsdp2"):
        for skip in (True, False):
            proc = torchrun_train(root / "cfg.yaml", f"name={strategy}-{'skip' if skip else 'all'}",
                                  f"distributed.strategy={strategy}",
                                  f"algo.skip_zero_grad_rows={str(skip).lower()}")  # fmt: skip
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return root


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_a_rank_with_no_gradient_rows_keeps_step_with_the_others(
    strategy: str, idle_rank_runs: Path
) -> None:
    from transformers import AutoModelForCausalLM

    from verirl.train.metrics import read_metrics

    (skip,) = read_metrics(idle_rank_runs / f"{strategy}-skip")
    (full,) = read_metrics(idle_rank_runs / f"{strategy}-all")
    assert skip["rows_trained"] == 8  # rank 1's 8 rows; rank 0 had none
    assert skip["reward_mean"] == full["reward_mean"]
    for k in ("loss", "pg_loss", "grad_norm"):
        assert skip[k] == pytest.approx(full[k], abs=1e-6), k
    got = AutoModelForCausalLM.from_pretrained(idle_rank_runs / f"{strategy}-skip" / "final")
    want = AutoModelForCausalLM.from_pretrained(idle_rank_runs / f"{strategy}-all" / "final")
    for (name, p), q in zip(got.named_parameters(), want.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4, msg=name)


@pytest.fixture(scope="module")
def fsdp2_runs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`distributed.strategy=fsdp2` on 2 ranks with a KL to a frozen (sharded) reference: 4
    unbroken steps (`whole`), 2 steps resumed to 4 (`resumed`); and LoRA under FSDP2 with the
    adapters-disabled reference (`lora`)."""
    import vr_train_envs
    import yaml

    root = tmp_path_factory.mktemp("torchrun-fsdp2")
    cfg = vr_train_envs.train_config(
        tiny_model_dir,
        root,
        train={"steps": 4, "lr": 2e-2, "save_every": 2},
        algo={"batch_size": 16, "group_size": 4, "beta": 0.04},
        distributed={"strategy": "fsdp2"},
    )
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    lora = ["name=lora", "model.lora.enabled=true", "algo.reference=lora_disabled"]
    for proc in (
        torchrun_train(root / "cfg.yaml", "name=whole"),
        torchrun_train(root / "cfg.yaml", "name=resumed", "train.steps=2"),
        torchrun_train(root / "cfg.yaml", "--resume", str(root / "resumed"), "train.steps=4"),
        torchrun_train(root / "cfg.yaml", *lora, "train.steps=2"),
    ):
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return root


def test_fsdp2_train_resumes_exactly_and_saves_the_full_model(fsdp2_runs: Path) -> None:
    from transformers import AutoModelForCausalLM

    from verirl.train.metrics import read_metrics

    keys = ("reward_mean", "loss", "kl", "grad_norm", "entropy")
    want = [{k: r[k] for k in keys} for r in read_metrics(fsdp2_runs / "whole")]
    got = [{k: r[k] for k in keys} for r in read_metrics(fsdp2_runs / "resumed")]
    assert len(want) == 4 and got == want
    assert want[-1]["kl"] > 0  # the sharded reference is used and the policy moved from it
    state = torch.load(
        fsdp2_runs / "whole" / "checkpoints" / "step-4" / "trainer_state.pt", weights_only=False
    )
    final = AutoModelForCausalLM.from_pretrained(fsdp2_runs / "whole" / "final")
    for name, p in final.named_parameters():  # the gathered weights, not one rank's shard
        torch.testing.assert_close(p.detach(), state["policy_full"][name])


def test_resume_with_another_strategy_is_a_clear_error(fsdp2_runs: Path) -> None:
    run = fsdp2_runs / "resumed"
    proc = torchrun_train(fsdp2_runs / "cfg.yaml", "--resume", str(run),
                          "distributed.strategy=ddp", "train.steps=5")  # fmt: skip
    assert proc.returncode != 0
    assert "written with distributed.strategy=fsdp2; resume with the same" in proc.stderr
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 4  # nothing more written


def test_fsdp2_lora_trains_and_saves_its_adapter(fsdp2_runs: Path) -> None:
    from safetensors.torch import load_file

    rows = (fsdp2_runs / "lora" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 2
    adapter = load_file(str(fsdp2_runs / "lora" / "final" / "adapter_model.safetensors"))
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(float(v.abs().sum()) > 0 for v in lora_b)  # B starts at 0: trained


def test_fsdp2_with_ppo_is_refused_with_the_reason(tmp_path: Path) -> None:
    from verirl.config import validate_config
    from verirl.train.config import TrainConfig

    cfg = {"model": {"path": "m"}, "env": {"name": "arithmetic"}, "algo": {"name": "ppo"},
           "distributed": {"strategy": "fsdp2"}}  # fmt: skip
    with pytest.raises(ConfigError, match=r"fsdp2' supports algo\.name 'grpo' only"):
        validate_config(TrainConfig, cfg, "cfg.yaml")


def test_prompts_that_do_not_split_over_ranks_fail_before_writing(
    two_rank_runs: Path,
) -> None:
    proc = torchrun_train(two_rank_runs / "cfg.yaml", "name=odd", "algo.batch_size=12")
    assert proc.returncode != 0
    assert "3 prompts" in proc.stderr and "does not split evenly over 2 ranks" in proc.stderr
    assert not (two_rank_runs / "odd").exists()
