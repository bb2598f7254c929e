"""verirl.algos.objective and verirl.algos.shaping: the micro-batch objective by hand, micro-batches
summing to the batch, and the DAPO soft overlong punishment against TRL's own reward function
(``trl.rewards.get_soft_overlong_punishment``, trl 1.16.0, Apache-2.0), called directly.
"""

from __future__ import annotations

import pytest
import torch

from verirl.algos import (
    ObjectiveConfig,
    PolicyLossParams,
    kl_k3,
    length_penalty,
    policy_objective,
    soft_overlong_penalty,
)


def test_objective_by_hand_kl_tis_and_value():
    # One row, two tokens, π_old = π_θ (ratio 1, no clip): pg_t = −A = −2.
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, -2.0]])
    rollout = torch.tensor([[-1.0, -2.0 - 1.0]])  # TIS weights min(e^0, 2) = 1, min(e^1, 2) = 2
    cfg = ObjectiveConfig(kl_coef=0.1, tis_cap=2.0, vf_coef=0.5, value_clip=None)
    v = torch.tensor([[1.0, 1.0]], requires_grad=True)
    loss, m = policy_objective(logp, None, torch.tensor([[2.0, 2.0]]), torch.ones(1, 2), cfg,
                               num_tokens=2.0, num_seqs=1.0, ref_logp=ref, rollout_logp=rollout,
                               values=v, old_values=v.detach(), returns=torch.zeros(1, 2))  # fmt: skip
    kl = kl_k3(logp.detach(), ref)  # [[e^−0.5 − 0.5, 0]]
    pg = torch.tensor([[-2.0, -4.0]])  # −A·w
    expect = (pg + 0.1 * kl).mean() + 0.5 * 0.5  # value loss ½(V − R)² = ½
    assert loss.item() == pytest.approx(expect.item(), rel=1e-6)
    assert m["pg_loss"] == pytest.approx(-3.0) and m["tis_weight_sum"] == pytest.approx(3.0)
    assert m["kl"] == pytest.approx(kl.mean().item()) and m["value_loss"] == pytest.approx(0.5)
    assert m["clip_frac"] == 0.0 and m["loss"] == pytest.approx(loss.item())
    loss.backward()
    assert logp.grad is not None and v.grad is not None
    # KL measured but not in the loss when kl_coef = 0
    lp = logp.detach()
    loss0, m0 = policy_objective(lp, None, torch.ones(1, 2), torch.ones(1, 2), ObjectiveConfig(),
                                 num_tokens=2.0, num_seqs=1.0, ref_logp=ref)  # fmt: skip
    assert loss0.item() == pytest.approx(-1.0) and m0["kl"] > 0


@pytest.mark.parametrize("name", ["ppo_clip", "gspo", "cispo", "dual_clip"])
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_micro_batches_sum_to_the_batch(name, agg):
    g = torch.Generator().manual_seed(3)
    logp = -torch.rand(6, 5, generator=g) * 2
    old = logp + 0.3 * torch.randn(6, 5, generator=g)
    ref = logp + 0.1 * torch.randn(6, 5, generator=g)
    adv = torch.randn(6, 1, generator=g).expand(6, 5)
    mask = (torch.arange(5) < torch.tensor([[5], [3], [1], [4], [2], [5]])).float()
    cfg = ObjectiveConfig(policy_loss=name, params=PolicyLossParams(0.2, 0.28), loss_agg=agg,
                          max_len=8.0, kl_coef=0.05)  # fmt: skip
    norms = {"num_tokens": float(mask.sum()), "num_seqs": 6.0}
    full, fm = policy_objective(logp, old, adv, mask, cfg, ref_logp=ref, **norms)
    parts = [policy_objective(logp[s], old[s], adv[s], mask[s], cfg, ref_logp=ref[s], **norms)
             for s in (slice(0, 2), slice(2, 6))]  # fmt: skip
    assert sum(p[0].item() for p in parts) == pytest.approx(full.item(), abs=1e-6)
    for k in ("pg_loss", "clip_frac", "kl"):
        assert sum(p[1][k] for p in parts) == pytest.approx(fm[k], abs=1e-6)


def test_objective_needs_the_critics_targets():
    with pytest.raises(ValueError, match="old_values and returns"):
        policy_objective(torch.zeros(1, 1), None, torch.ones(1, 1), torch.ones(1, 1),
                         ObjectiveConfig(), num_tokens=1.0, num_seqs=1.0,
                         values=torch.zeros(1, 1))  # fmt: skip


def test_soft_overlong_penalty_by_hand_and_against_trl():
    from trl.rewards import get_soft_overlong_punishment

    lengths = torch.tensor([1, 79, 80, 81, 90, 99, 100, 101, 150])
    ours = soft_overlong_penalty(lengths, 100, 20)
    assert ours.tolist()[:5] == pytest.approx([0.0, 0.0, 0.0, -0.05, -0.5])
    assert ours.tolist()[6:] == [-1.0, -1.0, -1.0]
    for max_len, cache in [(100, 20), (16, 4), (16, 16), (8, 0)]:
        lens = torch.arange(0, max_len + 3)
        trl = get_soft_overlong_punishment(max_len, cache)([[1] * n for n in lens.tolist()])
        diff = (soft_overlong_penalty(lens, max_len, cache) - torch.tensor(trl)).abs().max()
        assert diff <= 1e-6, (max_len, cache, diff)
    with pytest.raises(ValueError, match="overlong cache"):
        soft_overlong_penalty(lengths, 10, 11)


def test_length_penalty_by_hand():
    assert length_penalty(torch.tensor([0, 8, 32]), 32, 0.2).tolist() == pytest.approx(
        [0, -0.05, -0.2]
    )
    with pytest.raises(ValueError, match="max_len"):
        length_penalty(torch.tensor([1]), 0, 0.1)
