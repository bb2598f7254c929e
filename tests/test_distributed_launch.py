"""verirl.train.distributed.launch: the process context, torchrun's environment, the shares of
prompts, engines and seeds per rank (2 gloo ranks in ``two_ranks``; the rest in-process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from vr_torchrun_worker import GROUP_SIZE, GROUPS, launch, rank_results

from verirl.errors import ConfigError, UserError
from verirl.train.distributed import (
    DistContext,
    barrier,
    init_distributed,
    rank_seed,
    shard_groups,
    shutdown,
    vllm_engine_options,
)


def test_two_rank_context_and_shards(two_ranks: Path) -> None:
    r0, r1 = rank_results(two_ranks)
    assert r0["ctx"] == [0, 2, 0, 2, "cpu", "gloo"] and r1["ctx"][:2] == [1, 2]
    assert (r0["shard"], r1["shard"]) == ([0, 1], [2, 3])
    assert list(shard_groups(GROUPS, DistContext())) == [0, 1, 2, 3]


def test_single_process_context_is_a_no_op() -> None:
    ctx = init_distributed(env={})
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.distributed) == (0, 1, True, False)
    assert rank_seed(5, ctx) == 5 and rank_seed(5, DistContext(rank=1, world_size=2)) != 5
    barrier(ctx)
    shutdown(ctx)


def test_bad_launch_env_is_a_clear_error() -> None:
    with pytest.raises(UserError, match="MASTER_ADDR, MASTER_PORT are not"):
        init_distributed(env={"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0",
                              "LOCAL_WORLD_SIZE": "2"})  # fmt: skip
    with pytest.raises(ConfigError, match="backend must be"):
        init_distributed("mpi", env={})


def test_shard_groups_keeps_groups_whole_and_advantages_equal() -> None:
    from verirl.algos import grpo_advantages

    rewards = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    valid = torch.ones_like(rewards)
    parts = []
    for rank in range(2):
        idx = list(shard_groups(4, DistContext(rank=rank, world_size=2)))
        parts.append(grpo_advantages(rewards[idx].reshape(-1), 3, valid=valid[idx].reshape(-1)))
    whole = grpo_advantages(rewards.reshape(-1), 3, valid=valid.reshape(-1))
    torch.testing.assert_close(torch.cat(parts), whole)
    with pytest.raises(ConfigError, match=r"6 prompts .* does not split evenly over 4 ranks"):
        shard_groups(6, DistContext(rank=0, world_size=4))


def test_tensor_parallel_groups_share_generation_prompts() -> None:
    ctxs = [DistContext(rank=r, world_size=4, local_rank=r % 2, local_world_size=2)
            for r in range(4)]  # fmt: skip
    gen = [list(shard_groups(8, c, tensor_parallel_size=2)) for c in ctxs]
    assert gen == [[0, 1, 2, 3], [0, 1, 2, 3], [4, 5, 6, 7], [4, 5, 6, 7]]
    for c, g in zip(ctxs, gen, strict=True):  # each rank trains on its own part of its group's
        assert set(shard_groups(8, c)) <= set(g)
    with pytest.raises(ConfigError, match="a tensor-parallel group lives on one node"):
        shard_groups(8, ctxs[0], tensor_parallel_size=4)  # 4 > 2 processes per node
    assert vllm_engine_options(DistContext()) == {}


def test_ranks_on_one_machine_split_its_sandbox_pool() -> None:
    from verirl.sandboxes.sandbox import machine_share

    def shares(total: int, local: int) -> list[int]:
        return [machine_share(total, i, local) for i in range(local)]

    assert shares(8, 8) == [1] * 8 and sum(shares(13, 4)) == 13 and shares(4, 1) == [4]
    assert shares(2, 4) == [1, 1, 1, 1]  # every rank needs a worker
    with pytest.raises(ValueError, match="workers per machine must be >= 1"):
        machine_share(0, 0, 1)


def test_sandboxes_split_the_machine_budget_between_torchrun_ranks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from verirl.sandboxes.sandbox import make_sandbox

    for rank, want in ((0, 3), (1, 2)):
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
        box = make_sandbox("process", workers=5)
        try:
            assert box.workers == want
        finally:
            box.close()
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    box = make_sandbox("process", workers=5)
    assert box.workers == 5  # a plain process gets the whole budget
    box.close()


def test_doctests() -> None:
    import doctest

    import verirl.train.distributed.launch as mod

    assert doctest.testmod(mod).failed == 0


@pytest.mark.vllm
@pytest.mark.slow
def test_two_ranks_each_with_a_colocated_vllm_engine(tiny_model_dir: Path, tmp_path: Path) -> None:
    launch(tiny_model_dir, tmp_path, "vllm")
    r0, r1 = json.loads((tmp_path / "vllm.json").read_text())
    assert r0["prompts"] + r1["prompts"] == ["1+1=", "12+30=", "7*6=", "5-2="]
    assert len(r0["texts"]) == len(r1["texts"]) == 2 * GROUP_SIZE
    assert r0["before"] == pytest.approx(r1["before"], abs=1e-5)  # same start weights
    # after the step both engines hold the same (DDP-synchronised) weights, and new ones
    assert r0["after_ids"] == r1["after_ids"]
    assert r0["after"] == pytest.approx(r1["after"], abs=1e-4)
    assert r0["after"][0] != pytest.approx(r0["before"][0], abs=1e-3)
