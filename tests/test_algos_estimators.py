"""verirl.algos.advantages' table: RLOO, REINFORCE++ (+ baseline), GRPO and GAE entries by hand,
``compute_advantages``' masks, and RLOO against TRL's formula on the same tensors.

The TRL reference is transcribed from the installed trl 1.16.0 (Apache-2.0),
``trl/trainer/rloo_trainer.py`` lines 1683-1699 (``_generate_and_score_completions``): it is not
an importable function; ``nanstd`` is TRL's own, imported.
"""

from __future__ import annotations

import math

import pytest
import torch

from verirl.algos import (
    ADVANTAGE_ESTIMATORS,
    AdvantageInputs,
    compute_advantages,
    gae_advantages,
    grpo_advantages,
    masked_whiten,
    register_advantage,
    rloo_advantages,
)


def close(a: torch.Tensor, b: object, atol: float = 1e-5) -> None:
    torch.testing.assert_close(a, torch.as_tensor(b, dtype=a.dtype), atol=atol, rtol=1e-5)


def lengths_mask(lengths: list[int], width: int) -> torch.Tensor:
    return (torch.arange(width) < torch.tensor(lengths).unsqueeze(-1)).float()  # [B, T]


def test_rloo_by_hand_with_an_invalid_sample():
    # Group 1 [1, 0, 0, 1]: r_i − mean of the other three; group 2 sample 3 is an infra error:
    # n = 3, [1, 0, ·, 1] -> 1 − ½, 0 − 1, 0, 1 − ½.
    r = torch.tensor([1.0, 0, 0, 1, 1, 0, 7, 1])
    valid = torch.tensor([1, 1, 1, 1, 1, 1, 0, 1]).bool()
    t = 2 / 3
    close(rloo_advantages(r, 4, valid=valid), [t, -t, -t, t, 0.5, -1.0, 0.0, 0.5])
    # n/(n−1) · (r − mean): RLOO is GRPO without the std, scaled by G/(G−1)
    close(rloo_advantages(r[:4], 4), 4 / 3 * grpo_advantages(r[:4], 4, scale_by_std=False))
    # one valid sample: no baseline, no signal
    close(rloo_advantages(torch.tensor([1.0, 0.0]), 2, valid=torch.tensor([True, False])), [0, 0])


def _trl_rloo(rewards: torch.Tensor, g: int) -> torch.Tensor:
    """TRL 1.16.0 rloo_trainer.py L1683-1699 (normalize_advantages=False), NaN = unscorable."""
    grouped = rewards.view(-1, g)
    count = (~torch.isnan(grouped)).sum(dim=1, keepdim=True)
    total = torch.nansum(grouped, dim=1, keepdim=True)
    baselines = ((total - grouped) / (count - 1)).view(-1)
    return torch.nan_to_num(rewards - baselines, nan=0.0)


def test_rloo_equals_trl_on_the_same_rewards():
    g = torch.Generator().manual_seed(0)
    r = torch.rand(64, generator=g).round() + 0.1 * torch.randn(64, generator=g)
    bad = torch.rand(64, generator=g) < 0.15
    r_nan = torch.where(bad, torch.nan, r)
    ours = rloo_advantages(r, 8, valid=~bad)
    trl = _trl_rloo(r_nan, 8)
    assert (ours - trl).abs().max() <= 1e-6, (ours - trl).abs().max()


def test_reinforce_pp_whitens_over_the_batchs_tokens_by_hand():
    # Token returns (γ = 1): row 0 = 1,1; rows 1-3 = 0 on 1, 3, 2 tokens. N = 8, mean ¼,
    # unbiased var (2·¾² + 6·¼²)/7 = 3/14 -> A = ¾/σ on row 0, −¼/σ elsewhere.
    mask = lengths_mask([2, 1, 3, 2], 4)
    x = AdvantageInputs(torch.tensor([1.0, 0, 0, 0]), mask, group_size=1)
    adv, ret = ADVANTAGE_ESTIMATORS["reinforce_pp"](x)
    s = math.sqrt(3 / 14)
    expect = torch.tensor(
        [[0.75, 0.75, 0, 0], [-0.25, 0, 0, 0], [-0.25] * 3 + [0], [-0.25] * 2 + [0, 0]]
    )
    close(adv, expect / s * mask)
    assert ret is None


def test_reinforce_pp_discounts_and_puts_the_kl_in_the_reward():
    # Without whitening: G_t = Σ γ^l r_{t+l}, r = score on the last token − β·KL_t.
    # Row [1, 1, 1] tokens, score 1, γ = ½, β·KL = 0.1 per token: r = [−.1, −.1, .9]
    # G_2 = .9, G_1 = −.1 + .45 = .35, G_0 = −.1 + .175 = .075.
    x = AdvantageInputs(torch.tensor([1.0]), torch.ones(1, 3), 1, token_kl=torch.ones(1, 3),
                        beta=0.1, gamma=0.5, whiten=lambda a, m: a)  # fmt: skip
    adv, _ = ADVANTAGE_ESTIMATORS["reinforce_pp"](x)
    close(adv, [[0.075, 0.35, 0.9]])


def test_reinforce_pp_baseline_by_hand():
    # Groups [1, 0] and [1, 1]: centred [½, −½, 0, 0] on one token each, whitened over the 4:
    # mean 0, unbiased var (¼ + ¼)/3 = 1/6.
    x = AdvantageInputs(torch.tensor([1.0, 0, 1, 1]), torch.ones(4, 1), group_size=2)
    adv, _ = ADVANTAGE_ESTIMATORS["reinforce_pp_baseline"](x)
    s = math.sqrt(1 / 6)
    close(adv.view(-1), [0.5 / s, -0.5 / s, 0.0, 0.0])
    # The batch std, not the group's: a group [1, 0] next to a group [0.1, 0] keeps its scale,
    # where GRPO would give both groups ±0.707.
    x2 = AdvantageInputs(torch.tensor([1.0, 0, 0.1, 0]), torch.ones(4, 1), group_size=2)
    adv2, _ = ADVANTAGE_ESTIMATORS["reinforce_pp_baseline"](x2)
    assert adv2[0, 0] / adv2[2, 0] == pytest.approx(10.0, rel=1e-5)


def test_grpo_and_gae_entries_are_the_primitives():
    r = torch.tensor([1.0, 0, 0, 0, 1, 1, 0, 0])
    mask = lengths_mask([3, 1, 2, 4, 1, 1, 2, 3], 4)
    adv, ret = ADVANTAGE_ESTIMATORS["grpo"](AdvantageInputs(r, mask, 4))
    close(adv, grpo_advantages(r, 4).unsqueeze(-1) * mask)
    assert ret is None
    drgrpo, _ = ADVANTAGE_ESTIMATORS["grpo"](AdvantageInputs(r, mask, 4, scale_by_std=False))
    close(drgrpo, grpo_advantages(r, 4, scale_by_std=False).unsqueeze(-1) * mask)
    values = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    adv, ret = ADVANTAGE_ESTIMATORS["gae"](AdvantageInputs(r, mask, 1, values=values, lam=0.9))
    from verirl.algos import last_token_rewards

    a0, r0 = gae_advantages(last_token_rewards(r, mask), values, mask, 1.0, 0.9)
    close(adv, masked_whiten(a0, mask))
    close(ret, r0)
    with pytest.raises(ValueError, match="critic values"):
        ADVANTAGE_ESTIMATORS["gae"](AdvantageInputs(r, mask, 1))


def test_compute_advantages_returns_a_new_mask_and_leaves_its_inputs_alone():
    r = torch.tensor([1.0, 0, 1, 1, 0, 1])  # groups of 2: [1,0] [1,1] [0,1]
    mask = torch.ones(6, 3)
    valid = torch.tensor([1, 1, 1, 1, 1, 0]).bool()  # the last group has one valid sample
    x = AdvantageInputs(r, mask, 2, valid=valid)
    out = compute_advantages("grpo", x)
    assert out.mask[:, 0].tolist() == [1, 1, 1, 1, 1, 0]
    assert out.groups_kept == 3
    assert mask.sum() == 18 and x.mask is mask  # untouched
    dapo = compute_advantages("grpo", x, filter_zero_variance=True)
    assert dapo.mask[:, 0].tolist() == [1, 1, 0, 0, 0, 0] and dapo.groups_kept == 1
    assert (dapo.advantages[2:] == 0).all() and (out.advantages[5] == 0).all()
    # REINFORCE++'s batch statistics are over the tokens left in the mask: rows [1, 0] x 3
    # tokens, mean ½, unbiased var 6·¼/5 = 0.3.
    rpp = compute_advantages("reinforce_pp", x, filter_zero_variance=True)
    close(rpp.advantages[:2, 0], [0.5 / math.sqrt(0.3), -0.5 / math.sqrt(0.3)])
    with pytest.raises(ValueError, match=r"unknown advantage estimator 'ppo'.*rloo"):
        compute_advantages("ppo", x)


def test_register_advantage_refuses_a_second_function_under_a_name():
    with pytest.raises(ValueError, match="already registered"):
        register_advantage("rloo")(lambda x: (x.mask, None))
    assert register_advantage("rloo")(ADVANTAGE_ESTIMATORS["rloo"]) is ADVANTAGE_ESTIMATORS["rloo"]
