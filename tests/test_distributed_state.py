"""verirl.train.distributed.state: full (unsharded) state dicts, saving and resuming under FSDP2
on 2 gloo ranks, and the world size and per-rank RNG streams a resume needs back."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from vr_torchrun_worker import rank_results

from verirl.errors import UserError
from verirl.train.distributed import (
    DistContext,
    check_world_size,
    dist_state,
    full_state_dict,
    load_full_state,
    optimizer_state_dict,
    restore_dist_state,
)


def test_fsdp2_full_state_resume_and_synced_generate(two_ranks: Path) -> None:
    r0, r1 = rank_results(two_ranks)
    assert r0["fsdp2_full_sum"] == r1["fsdp2_full_sum"]
    assert (r0["fsdp2_generated"], r1["fsdp2_generated"]) == (3, 7)
    assert r0["fsdp2_resumed"] and r1["fsdp2_resumed"]


def test_fsdp2_save_pretrained_writes_the_full_model(two_ranks: Path) -> None:
    from safetensors.torch import load_file

    saved = load_file(str(two_ranks / "fsdp2-saved" / "model.safetensors"))
    params = torch.load(two_ranks / "fsdp2.pt")["params"]
    for name, p in params.items():
        if name in saved:
            torch.testing.assert_close(saved[name], p, msg=name)
    assert "model.layers.0.self_attn.q_proj.weight" in saved


def test_resume_under_two_ranks_restores_each_ranks_rng(two_ranks: Path) -> None:
    r0, r1 = rank_results(two_ranks)
    for r in (r0, r1):
        assert r["rng"][0] == r["rng"][1]
        assert "written by 1 rank(s) but this run has 2" in r["resize_error"]
    assert r0["rng"][0] != r1["rng"][0]  # ranks sample differently


def test_world_size_check_and_dist_state_single_process() -> None:
    check_world_size(2, 2)
    check_world_size(None, 1)  # checkpoints written before distributed support
    with pytest.raises(UserError, match=r"written by 4 rank.* this run has 2"):
        check_world_size(4, 2)
    with pytest.raises(UserError, match=r"written by 1 rank.* this run has 2"):
        restore_dist_state(None, DistContext(rank=1, world_size=2))
    ctx = DistContext()
    state = dist_state(ctx)
    assert state is not None and state["world_size"] == 1
    a = torch.rand(2)
    restore_dist_state(state, ctx)
    torch.testing.assert_close(torch.rand(2), a)


def test_full_state_round_trip_without_sharding() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    ctx = DistContext()
    state = {"model": full_state_dict(model, ctx), "opt": optimizer_state_dict(model, opt, ctx)}
    assert optimizer_state_dict(model, opt, DistContext(rank=1, world_size=2)) is None
    fresh = torch.nn.Linear(3, 2)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    load_full_state(fresh, fresh_opt, state["model"], state["opt"])
    torch.testing.assert_close(fresh.state_dict(), model.state_dict())
    torch.testing.assert_close(fresh_opt.state_dict()["state"], opt.state_dict()["state"])
