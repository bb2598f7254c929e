"""verirl.algos.policy_losses: GSPO, CISPO, dual-clip PPO and PPO-clip by hand, and against TRL's
and verl's formulas on identical tensors (loss value and gradient).

References, transcribed (neither computes the loss in an importable pure function):
- TRL 1.16.0 (Apache-2.0), installed ``trl/trainer/grpo_trainer.py``, ``_compute_loss``:
  L3083-3090 sequence-level importance weights (GSPO), L3109-3119 cispo / clipped losses,
  L3153-3174 the grpo, dr_grpo, dapo/cispo aggregations.
- verl (Apache-2.0), ``verl/trainer/ppo/core_algos.py`` at 012be9d, ``compute_policy_loss_vanilla``
  (dual-clip with ``clip_ratio_c``).
"""

from __future__ import annotations

import math

import pytest
import torch

from verirl.algos import (
    POLICY_LOSSES,
    PolicyLossParams,
    aggregate_loss,
    policy_loss,
    register_policy_loss,
)


def grad_of(name, logp0, old, adv, mask, params, agg, **kw):
    logp = logp0.clone().requires_grad_(True)
    tok, clipped = policy_loss(name, logp, old, adv, mask, params)
    loss = aggregate_loss(tok, mask, agg, **kw)
    loss.backward()
    return loss.detach(), logp.grad, clipped


def one(x: list[float]) -> torch.Tensor:
    return torch.tensor([x])


def test_dual_clip_by_hand():
    p = PolicyLossParams(clip_low=0.2, clip_high=0.2, dual_clip_c=3.0)
    old = torch.zeros(1, 3)
    mask = torch.ones(1, 3)
    logp = one([2.0, math.log(2.0), 0.0])  # ρ = e² ≈ 7.39 (> c), 2 (< c), 1
    _, grad, clipped = grad_of("dual_clip", logp, old, -torch.ones(1), mask, p, "token-mean")
    tok, _ = policy_loss("dual_clip", logp, old, -torch.ones(1), mask, p)
    torch.testing.assert_close(tok, one([3.0, 2.0, 1.0]))  # min(|A|ρ, c|A|)
    assert (
        grad[0, 0] == 0
        and grad[0, 1] == pytest.approx(2 / 3)
        and clipped.tolist() == [[True, False, False]]
    )
    # A > 0: plain PPO clipping, no cap
    tok, clipped = policy_loss("dual_clip", logp, old, torch.ones(1), mask, p)
    torch.testing.assert_close(tok, one([-1.2, -1.2, -1.0]))
    assert clipped.tolist() == [[True, True, False]]
    with pytest.raises(ValueError, match="dual_clip_c must be > 1"):
        policy_loss("dual_clip", logp, old, torch.ones(1), mask, PolicyLossParams(dual_clip_c=1.0))


def test_gspo_by_hand_one_ratio_per_sequence():
    p = PolicyLossParams(clip_low=0.2, clip_high=0.2)
    mask = torch.ones(1, 2)
    # log ρ = [0.3, −0.3]: PPO clips token 0 (ρ = 1.35); GSPO's s = e⁰ = 1 clips nothing.
    logp, old = one([0.3, -0.3]), torch.zeros(1, 2)
    _, ppo_clipped = policy_loss("ppo_clip", logp, old, torch.ones(1), mask, p)
    loss, grad, clipped = grad_of("gspo", logp, old, torch.ones(1), mask, p, "seq-mean-token-mean")
    assert ppo_clipped.tolist() == [[True, False]] and not clipped.any()
    assert loss.item() == pytest.approx(-1.0) and grad[0].tolist() == pytest.approx([-0.5, -0.5])
    # log ρ = [0.2, −0.1]: s = e^0.05; ∇ = −s·A/|o| per token
    s = math.exp(0.05)
    loss, grad, _ = grad_of(
        "gspo", one([0.2, -0.1]), old, torch.ones(1), mask, p, "seq-mean-token-mean"
    )
    assert loss.item() == pytest.approx(-s, rel=1e-6)
    assert grad[0].tolist() == pytest.approx([-s / 2, -s / 2], rel=1e-6)
    # mean log ρ 0.5 > log 1.2: the whole sequence is clipped, zero gradient
    loss, grad, clipped = grad_of(
        "gspo", one([0.5, 0.5]), old, torch.ones(1), mask, p, "token-mean"
    )
    assert loss.item() == pytest.approx(-1.2) and (grad == 0).all() and clipped.all()


def test_gspo_ignores_padding_in_the_geometric_mean():
    p = PolicyLossParams()
    mask = one([1.0, 1.0, 0.0])
    a, _ = policy_loss("gspo", one([0.1, 0.1, 50.0]), torch.zeros(1, 3), torch.ones(1), mask, p)
    assert a[0, :2].tolist() == pytest.approx([-math.exp(0.1)] * 2) and a[0, 2] == 0


def test_cispo_by_hand_keeps_the_gradient_of_capped_tokens():
    p = PolicyLossParams(cispo_max=5.0)
    logp, old = one([-0.5, -1.0]), one([-2.5, -1.0])  # ρ = e² ≈ 7.39 -> weight 5; ρ = 1
    loss, grad, clipped = grad_of("cispo", logp, old, torch.ones(1), torch.ones(1, 2), p,
                                  "token-mean")  # fmt: skip
    assert loss.item() == pytest.approx((5 * 0.5 + 1.0) / 2)  # −w·A·log π, token mean
    assert grad[0].tolist() == pytest.approx([-2.5, -0.5])  # PPO's clip would give 0 on token 0
    assert clipped.tolist() == [[True, False]]


def test_ppo_clip_entry_is_clipped_policy_loss():
    from verirl.algos import clipped_policy_loss

    g = torch.Generator().manual_seed(0)
    logp, old = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    adv, mask = torch.randn(3, generator=g), (torch.rand(3, 5, generator=g) > 0.3).float()
    p = PolicyLossParams(0.2, 0.28)
    a = policy_loss("ppo_clip", logp, old, adv, mask, p)
    b = clipped_policy_loss(logp, old, adv, mask, 0.2, 0.28)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# --- against TRL and verl on the same tensors ----------------------------------------------------


def _inputs(seed: int, b: int = 16, t: int = 12, spread: float = 0.3):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(b, t, generator=g) * 3
    old = logp + spread * torch.randn(b, t, generator=g)
    adv = torch.randn(b, generator=g)
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    mask = (torch.arange(t) < lengths.unsqueeze(-1)).float()
    return logp, old, adv, mask


def _trl_loss(kind, logp, old, adv, mask, eps_low, eps_high, max_completion_length=None):
    """TRL 1.16.0 grpo_trainer.py L3083-3174 on one accumulation window (beta = 0, no IS)."""
    a = adv.unsqueeze(1)
    log_ratio = logp - old
    if kind == "gspo":  # importance_sampling_level="sequence", loss_type="grpo"
        log_w = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    else:
        log_w = log_ratio
    coef_1 = torch.exp(log_w)
    if kind == "cispo":
        per_token = -torch.clamp(coef_1, max=eps_high).detach() * a * logp
    else:
        coef_2 = torch.clamp(coef_1, 1 - eps_low, 1 + eps_high)
        per_token = -torch.min(coef_1 * a, coef_2 * a)
    if kind in ("gspo", "grpo"):
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if kind == "dr_grpo":
        return (per_token * mask).sum() / (per_token.size(0) * max_completion_length)
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0)  # dapo, cispo


@pytest.mark.parametrize(
    ("trl_kind", "ours", "agg", "eps", "spread"),
    [
        ("gspo", "gspo", "seq-mean-token-mean", (3e-4, 4e-4), 1e-3),
        ("gspo", "gspo", "seq-mean-token-mean", (0.2, 0.28), 0.3),
        ("cispo", "cispo", "token-mean", (0.2, 5.0), 1.0),
        ("dapo", "ppo_clip", "token-mean", (0.2, 0.28), 0.3),
        ("grpo", "ppo_clip", "seq-mean-token-mean", (0.2, 0.2), 0.3),
        ("dr_grpo", "ppo_clip", "seq-mean-token-sum-norm", (0.2, 0.2), 0.3),
    ],
    ids=["gspo-paper-eps", "gspo-wide", "cispo", "dapo", "grpo", "dr_grpo"],
)
def test_losses_equal_trl_value_and_gradient(trl_kind, ours, agg, eps, spread):
    logp0, old, adv, mask = _inputs(1, spread=spread)
    lo, hi = eps
    params = (PolicyLossParams(clip_low=lo, cispo_max=hi) if ours == "cispo"
              else PolicyLossParams(clip_low=lo, clip_high=hi))  # fmt: skip
    loss, grad, clipped = grad_of(ours, logp0, old, adv, mask, params, agg, max_len=20.0)
    ref_logp = logp0.clone().requires_grad_(True)
    ref = _trl_loss(trl_kind, ref_logp, old, adv, mask, lo, hi, max_completion_length=20)
    ref.backward()
    assert abs(loss.item() - ref.item()) <= 1e-6
    assert (grad - ref_logp.grad).abs().max() <= 1e-6
    assert 0 < clipped.sum() < mask.sum() or trl_kind in ("gspo",)  # the clip branch is exercised


def _verl_dual_clip(logp, old, adv, mask, lo, hi, c):
    """verl core_algos.py compute_policy_loss_vanilla (012be9d): the per-token pg_losses."""
    ratio = torch.exp(torch.clamp(logp - old, -20.0, 20.0))
    a = adv.unsqueeze(-1).expand_as(logp)
    pg1, pg2 = -a * ratio, -a * torch.clamp(ratio, 1 - lo, 1 + hi)
    c1 = torch.maximum(pg1, pg2)
    c2 = torch.min(-a * c, c1)
    return torch.where(a < 0, c2, c1)


def test_dual_clip_equals_verl_value_and_gradient():
    logp0, old, adv, mask = _inputs(2, spread=1.5)  # ratios well past c = 3
    p = PolicyLossParams(0.2, 0.28, dual_clip_c=3.0)
    loss, grad, clipped = grad_of("dual_clip", logp0, old, adv, mask, p, "token-mean")
    ref_logp = logp0.clone().requires_grad_(True)
    ref = aggregate_loss(_verl_dual_clip(ref_logp, old, adv, mask, 0.2, 0.28, 3.0), mask,
                         "token-mean")  # fmt: skip
    ref.backward()
    assert abs(loss.item() - ref.item()) <= 1e-6
    assert (grad - ref_logp.grad).abs().max() <= 1e-6
    capped = (adv.unsqueeze(-1) < 0) & ((logp0 - old).exp() > 3.0) & (mask > 0)
    assert capped.any() and (clipped | ~capped).all()


def test_unknown_loss_and_duplicate_registration_are_errors():
    p = PolicyLossParams()
    with pytest.raises(ValueError, match=r"unknown policy loss 'ppo'.*cispo"):
        policy_loss("ppo", torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1), torch.ones(1, 1), p)
    with pytest.raises(ValueError, match="already registered"):
        register_policy_loss("gspo")(POLICY_LOSSES["cispo"])
