"""verirl.train.distributed.collectives: reductions, metric rows and objects over 2 gloo ranks
(``two_ranks``) equal the whole batch's, and are the identity for one process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from vr_torchrun_worker import rank_results

from verirl.train.distributed import (
    DistContext,
    all_reduce_max,
    all_reduce_metrics,
    all_reduce_sum,
    broadcast_object,
    gather_objects,
    loss_normalizer,
)


def test_two_rank_metrics_gather_and_broadcast(two_ranks: Path) -> None:
    r0, r1 = rank_results(two_ranks)
    # count-weighted: (1·1 + 3·0) / 4, not the mean of means 0.5; statuses summed; max time
    want = {"reward_mean": 0.25, "step_seconds": 2.0, "status/correct": 1.0,
            "status/incorrect": 3.0}  # fmt: skip
    assert r0["metrics"] == want and r1["metrics"] == want
    assert r0["gathered"] == [{"rank": 0}, {"rank": 1}] and r1["gathered"] is None
    assert r0["broadcast"] == r1["broadcast"] == "run-of-rank-0"


def test_global_whiten_equals_whole_batch(two_ranks: Path) -> None:
    from verirl.algos import masked_whiten

    g = torch.Generator().manual_seed(7)
    x, mask = torch.randn(4, 5, generator=g), (torch.rand(4, 5, generator=g) > 0.3).float()
    got = torch.tensor([row for r in rank_results(two_ranks) for row in r["whiten"]])
    torch.testing.assert_close(got, masked_whiten(x, mask), atol=1e-6, rtol=1e-5)


def test_single_process_reductions_are_the_identity() -> None:
    ctx = DistContext()
    assert all_reduce_metrics({"a": 2.0}, ctx) == {"a": 2.0}
    assert gather_objects("x", ctx) == ["x"] and broadcast_object("y", ctx) == "y"
    assert loss_normalizer(7, ctx) == 7.0
    assert loss_normalizer(0, ctx) == 1.0  # no loss terms: clamped like the 1-process mean
    x = torch.tensor([1.5, -2.0])
    total, top = all_reduce_sum(x, ctx), all_reduce_max(x, ctx)
    assert total.dtype == torch.float64 and total.tolist() == [1.5, -2.0]
    total += 1  # a copy: the caller's tensor is untouched
    assert x.tolist() == [1.5, -2.0] and top.tolist() == [1.5, -2.0]


def test_metric_weighting_ops_and_missing_keys_single_process() -> None:
    metrics = {"reward_mean": 0.5, "status/timeout": 2.0, "x": 3.0}
    ops = {"x": "min", "status/": "sum"}
    m = all_reduce_metrics(metrics, DistContext(), counts={"reward_mean": 4.0}, ops=ops)
    assert m == {"reward_mean": 0.5, "status/timeout": 2.0, "x": 3.0}
    with pytest.raises(ValueError, match="op must be one of"):
        all_reduce_metrics({"a": 1.0}, DistContext(), ops={"a": "median"})


def test_doctests() -> None:
    import doctest

    import verirl.train.distributed.collectives as mod

    assert doctest.testmod(mod).failed == 0
