"""verirl.train.distributed.wrap: one DDP/FSDP2 step (with and without LoRA) on 2 gloo ranks
equals one process on the same batch; gradients are reduced only on the last micro-step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from vr_torchrun_worker import CASES, rank_results, train_step

from verirl.errors import ConfigError, UserError
from verirl.train.distributed import DistContext, wrap_model


@pytest.mark.parametrize("case", CASES)
def test_two_ranks_equal_single_process_step(
    case: str, two_ranks: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ranks = rank_results(two_ranks)
    tokens = [r[f"{case}_local_tokens"] for r in ranks]
    assert tokens[0] != tokens[1]  # else the global normaliser would not be exercised
    # Wrapped models run transformers' own forward; so does the reference here. The lean
    # forward a plain model would take agrees to ~1e-7 (tests/test_lean_forward.py), but
    # Adam's first step, g/(|g|+eps), turns such differences in near-zero grads into 1e-2.
    import verirl.train.model

    monkeypatch.setattr(verirl.train.model, "AUTO_LEAN", False)
    ref = train_step(DistContext(), str(tiny_model_dir), "none", lora=case.endswith("lora"))
    got = torch.load(two_ranks / f"{case}.pt")
    assert got["loss"] == pytest.approx(ref["loss"], abs=1e-5)
    assert got["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-4)
    assert got["grads"].keys() == ref["grads"].keys()
    for name, g in ref["grads"].items():
        assert g.abs().sum() > 0 or "lora_A" in name, name  # LoRA B starts at 0: A gets none
        torch.testing.assert_close(got["grads"][name], g, atol=1e-5, rtol=1e-4, msg=name)
    for name, p in ref["params"].items():
        torch.testing.assert_close(got["params"][name], p, atol=1e-5, rtol=1e-4, msg=name)
    # after the synced micro-step every rank holds the same (global) gradient
    sums = ranks[0][f"{case}_grad_sums"]
    assert sums[0] == pytest.approx(sums[1], abs=1e-6)


def test_ddp_accumulation_does_not_all_reduce_early(two_ranks: Path) -> None:
    for case in ("ddp", "ddp_lora"):
        assert [r[f"{case}_synced_early"] for r in rank_results(two_ranks)] == [False, False]


def test_wrapping_one_process_and_bad_strategies() -> None:
    ctx = DistContext()
    model = torch.nn.Linear(2, 2)
    assert wrap_model(model, ctx, "ddp") is model and wrap_model(model, ctx, "none") is model
    with pytest.raises(UserError, match="fsdp2 needs a process group"):
        wrap_model(model, ctx, "fsdp2")
    two = DistContext(rank=0, world_size=2)
    with pytest.raises(ConfigError, match="would let each rank's weights drift"):
        wrap_model(torch.nn.Linear(2, 2), two, "none")
    with pytest.raises(ConfigError, match="strategy must be one of"):
        wrap_model(torch.nn.Linear(2, 2), two, "deepspeed")
