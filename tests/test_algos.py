"""verirl.algos: every function against values computed by hand, plus the properties it promises."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from verirl.algos import (
    KL_ESTIMATORS,
    LOSS_AGGREGATIONS,
    adapters_disabled,
    aggregate_loss,
    clipped_policy_loss,
    ema_update,
    entropy_from_logits,
    frozen_copy,
    gae_advantages,
    group_has_signal,
    grpo_advantages,
    kl_penalty,
    kl_shaped_rewards,
    last_token_rewards,
    masked_mean,
    masked_whiten,
    sft_loss,
    token_logprobs,
    value_loss,
)
from verirl.algos.logprobs import token_logprobs_and_entropy


def close(a: torch.Tensor, b: object, atol: float = 1e-5) -> None:
    torch.testing.assert_close(a, torch.as_tensor(b, dtype=a.dtype), atol=atol, rtol=1e-5)


# --- GRPO advantages -----------------------------------------------------------------------------


def test_grpo_advantages_by_hand():
    # Group 1 [1,0,0,0]: mean 1/4, sample var (9/16 + 3/16)/3 = 1/4, std 1/2.
    # Group 2 [1,1,0,0]: mean 1/2, sample var (4 * 1/4)/3 = 1/3, std 1/sqrt(3).
    r = torch.tensor([1.0, 0, 0, 0, 1, 1, 0, 0])
    s = math.sqrt(3) / 2
    close(grpo_advantages(r, 4), [1.5, -0.5, -0.5, -0.5, s, s, -s, -s], atol=1e-5)
    # Dr. GRPO: centred only.
    close(
        grpo_advantages(r, 4, scale_by_std=False),
        [0.75, -0.25, -0.25, -0.25] + [0.5] * 2 + [-0.5] * 2,
    )


def test_grpo_advantages_properties():
    g = torch.Generator().manual_seed(0)
    r = torch.rand(5 * 8, generator=g)
    r[8:16] = 0.7  # one constant group
    a = grpo_advantages(r, 8).view(5, 8)
    assert torch.isfinite(a).all()
    close(a.mean(-1), torch.zeros(5), atol=1e-6)  # zero-mean per group
    assert (a[1] == 0).all()  # constant group: exactly 0, not NaN
    assert torch.allclose(a[[0, 2, 3, 4]].std(-1), torch.ones(4), atol=1e-4)  # unit sample std
    dr = grpo_advantages(r, 8, scale_by_std=False).view(5, 8)
    assert not torch.allclose(a, dr)
    close(dr, r.view(5, 8) - r.view(5, 8).mean(-1, keepdim=True))
    # Group size 1: nothing to compare with, advantage 0.
    close(grpo_advantages(torch.tensor([3.0, 1.0]), 1), [0.0, 0.0])


def test_grpo_advantages_valid_mask_drops_samples():
    # Group [1, 0, (9 invalid), 0]: stats over [1, 0, 0] -> mean 1/3, sample std sqrt(1/3).
    r = torch.tensor([1.0, 0.0, 9.0, 0.0])
    a = grpo_advantages(r, 4, valid=torch.tensor([1, 1, 0, 1]))
    sd = math.sqrt(1 / 3)
    close(a, [(2 / 3) / sd, (-1 / 3) / sd, 0.0, (-1 / 3) / sd], atol=1e-5)
    assert (grpo_advantages(r, 4, valid=torch.zeros(4)) == 0).all()
    r_nan = torch.tensor([1.0, 0.0, float("nan"), 0.0])  # whatever an invalid sample holds
    close(grpo_advantages(r_nan, 4, valid=torch.tensor([1, 1, 0, 1])), a)


def test_grpo_advantages_bad_shapes():
    with pytest.raises(ValueError, match="not a whole number of groups of 4"):
        grpo_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="1-D"):
        grpo_advantages(torch.zeros(2, 4), 4)


def test_group_has_signal():
    r = torch.tensor([1.0, 1, 1, 0, 0, 0, 0.5, 0.5])
    assert group_has_signal(r, 2).tolist() == [False, True, False, False]
    # Ignoring the invalid 0 in group 1 leaves [1] alone: no signal; all-invalid group: none.
    valid = torch.tensor([1, 1, 1, 0, 0, 0, 1, 1])
    assert group_has_signal(r, 2, valid=valid).tolist() == [False, False, False, False]
    assert group_has_signal(torch.tensor([0.0, 1, 1, 1]), 4).tolist() == [True]


# --- PPO pieces ----------------------------------------------------------------------------------


def test_last_token_rewards():
    # Row 0: prompt, 2 response tokens, padding. Row 1: response to the end. Row 2: empty.
    mask = torch.tensor([[0, 1, 1, 0], [0, 1, 1, 1], [0, 0, 0, 0]])
    out = last_token_rewards(torch.tensor([2.0, -1.0, 5.0]), mask)
    close(out, [[0, 0, 2.0, 0], [0, 0, 0, -1.0], [0, 0, 0, 0]])
    assert last_token_rewards(torch.tensor([1, 0]), mask[:2]).dtype == torch.float32


def test_gae_by_hand():
    # r = [0, 0, 1], V = [.5, .6, .7], γ = .9, λ = .8 (γλ = .72):
    # δ2 = 1 - .7 = .3                 A2 = .3
    # δ1 = .9*.7 - .6 = .03            A1 = .03 + .72*.3 = .246
    # δ0 = .9*.6 - .5 = .04            A0 = .04 + .72*.246 = .21712
    r = torch.tensor([[0.0, 0.0, 1.0]])
    v = torch.tensor([[0.5, 0.6, 0.7]])
    adv, ret = gae_advantages(r, v, torch.ones(1, 3), gamma=0.9, gae_lambda=0.8)
    close(adv, [[0.21712, 0.246, 0.3]])
    close(ret, [[0.71712, 0.846, 1.0]])
    # The same episode behind a prompt and before padding, with junk outside the mask: identical.
    r2 = torch.tensor([[7.0, 0.0, 0.0, 1.0, 5.0]])
    v2 = torch.tensor([[9.0, 0.5, 0.6, 0.7, -3.0]])
    m2 = torch.tensor([[0, 1, 1, 1, 0]])
    adv2, ret2 = gae_advantages(r2, v2, m2, gamma=0.9, gae_lambda=0.8)
    close(adv2, [[0, 0.21712, 0.246, 0.3, 0]])
    close(ret2, [[0, 0.71712, 0.846, 1.0, 0]])
    nan_out = torch.tensor([[float("nan"), 0.5, 0.6, 0.7, float("inf")]])
    close(gae_advantages(r2, nan_out, m2.bool(), gamma=0.9, gae_lambda=0.8)[0], adv2)
    # A masked-out gap inside the response (e.g. tool output) is skipped, not a step.
    m3 = torch.tensor([[1, 0, 1, 1]])
    adv3, _ = gae_advantages(
        torch.tensor([[0.0, 4, 0, 1]]), torch.tensor([[0.5, 8, 0.6, 0.7]]), m3, 0.9, 0.8
    )
    close(adv3, [[0.21712, 0, 0.246, 0.3]])
    # A bf16 critic: the recursion runs in float32.
    adv_bf, _ = gae_advantages(r, v.to(torch.bfloat16), torch.ones(1, 3), 0.9, 0.8)
    assert adv_bf.dtype == torch.float32
    close(adv_bf, [[0.21712, 0.246, 0.3]], atol=5e-3)


def test_gae_gamma_lambda_one_is_reward_to_go_minus_values():
    g = torch.Generator().manual_seed(1)
    mask = torch.zeros(4, 7)
    for i, (a, b) in enumerate([(0, 7), (2, 5), (1, 2), (3, 7)]):  # ragged: prompt + padding
        mask[i, a:b] = 1
    r = torch.randn(4, 7, generator=g) * mask
    v = torch.randn(4, 7, generator=g)
    adv, ret = gae_advantages(r, v, mask, gamma=1.0, gae_lambda=1.0)
    to_go = r.flip(-1).cumsum(-1).flip(-1)  # Σ_{t' ≥ t} r_t'
    close(adv, (to_go - v) * mask)
    close(ret, to_go * mask)
    # λ = 0: one-step TD error r_t + γV_{t+1} − V_t (V after the last token is 0).
    adv0, _ = gae_advantages(r[:1], v[:1], mask[:1], gamma=0.5, gae_lambda=0.0)
    nxt = torch.cat([v[0, 1:], torch.zeros(1)])
    close(adv0[0], r[0] + 0.5 * nxt - v[0])


def test_masked_whiten():
    x = torch.tensor([1.0, 3.0, 9.0])
    m = torch.tensor([1, 1, 0])
    # mean 2, unbiased var ((1)^2 + (1)^2)/1 = 2.
    close(masked_whiten(x, m), [-1 / math.sqrt(2), 1 / math.sqrt(2), 0.0])
    close(masked_whiten(x, m, shift_mean=False), [2 - 1 / math.sqrt(2), 2 + 1 / math.sqrt(2), 0.0])
    close(masked_whiten(torch.tensor([1.0, 3.0, float("nan")]), m), masked_whiten(x, m))
    g = torch.Generator().manual_seed(2)
    big = torch.randn(3, 9, generator=g) * 5 + 3
    bm = torch.rand(3, 9, generator=g) > 0.3
    w = masked_whiten(big, bm)[bm]
    assert abs(w.mean().item()) < 1e-5 and abs(w.std().item() - 1) < 1e-4


# --- KL ------------------------------------------------------------------------------------------


def test_kl_estimators_by_hand():
    logp = torch.tensor([[-1.0, -2.0, 0.0]])
    ref = torch.tensor([[-2.0, -1.0, 0.0]])  # x = ref - logp = [-1, 1, 0]
    close(kl_penalty(logp, ref, "k1"), [[1.0, -1.0, 0.0]])
    close(kl_penalty(logp, ref, "k2"), [[0.5, 0.5, 0.0]])
    close(kl_penalty(logp, ref, "k3"), [[math.exp(-1), math.e - 2, 0.0]])
    assert set(KL_ESTIMATORS) == {"k1", "k2", "k3"}
    with pytest.raises(ValueError, match="expected one of: k1, k2, k3"):
        kl_penalty(logp, ref, "full")


def test_kl_k3_nonnegative_and_unbiased():
    g = torch.Generator().manual_seed(3)
    lp, lr = torch.randn(10_000, generator=g) * 3, torch.randn(10_000, generator=g) * 3
    assert (kl_penalty(lp, lr, "k3") >= 0).all()
    assert (kl_penalty(lp, lp + 1e-7, "k3") >= 0).all()  # no cancellation below 0 near x = 0
    # Monte Carlo with o ~ p: E[k1] = E[k3] = KL(p‖q) (unbiased), k2 close for nearby p, q.
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    q = torch.tensor([0.4, 0.3, 0.2, 0.1])
    exact = (p * (p / q).log()).sum().item()
    o = torch.multinomial(p, 200_000, replacement=True, generator=g)
    for name in ("k1", "k3"):
        est = kl_penalty(p.log()[o], q.log()[o], name).mean().item()
        assert abs(est - exact) < 0.004, (name, est, exact)
    assert abs(kl_penalty(p.log()[o], q.log()[o], "k2").mean().item() - exact) < 0.01


# --- log-probs and entropy -----------------------------------------------------------------------


def test_token_logprobs_matches_log_softmax_gather():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(5, 6, 50, generator=g) * 4
    tokens = torch.randint(0, 50, (5, 6), generator=g)
    want = torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    for chunk in (1, 4, 6, 7, 12, 1000):  # parts of rows, whole rows, ragged last block
        close(token_logprobs(logits, tokens, chunk_tokens=chunk), want)
    want_t = torch.log_softmax(logits / 0.7, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    close(token_logprobs(logits, tokens, temperature=0.7), want_t)
    # bf16 logits come back in float32, computed from the upcast values.
    lb = logits.to(torch.bfloat16)
    got = token_logprobs(lb, tokens)
    assert got.dtype == torch.float32
    close(got, torch.log_softmax(lb.float(), -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1))
    # Gradient flows through the chunks.
    lg = logits.clone().requires_grad_(True)
    token_logprobs(lg, tokens, chunk_tokens=4).sum().backward()
    want_grad = F.one_hot(tokens, 50) - torch.softmax(logits, -1)
    close(lg.grad, want_grad)


def test_token_logprobs_and_entropy_in_one_pass():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(4, 7, 40, generator=g) * 3
    tokens = torch.randint(0, 40, (4, 7), generator=g)
    for chunk, tau in ((3, 1.0), (7, 1.0), (1000, 0.7)):
        lg = logits.clone().requires_grad_(True)
        lp, ent = token_logprobs_and_entropy(lg, tokens, chunk_tokens=chunk, temperature=tau)
        close(lp, token_logprobs(logits, tokens, temperature=tau))
        close(ent, entropy_from_logits(logits / tau))
        assert not ent.requires_grad
        (lp * torch.arange(7.0)).sum().backward()  # gradient of the log-probs only
        ref = logits.clone().requires_grad_(True)
        (token_logprobs(ref, tokens, temperature=tau) * torch.arange(7.0)).sum().backward()
        close(lg.grad, ref.grad)


def test_token_logprobs_custom_backward_gradcheck():
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(3, 2, 5, generator=g, dtype=torch.float64).requires_grad_(True)
    tokens = torch.randint(0, 5, (3, 2), generator=g)
    for tau in (1.0, 0.6):
        assert torch.autograd.gradcheck(
            lambda z, tau=tau: token_logprobs(z, tokens, chunk_tokens=3, temperature=tau), (logits,)
        )


def test_token_logprobs_bf16_grad_and_noncontiguous_view():
    g = torch.Generator().manual_seed(12)
    full = torch.randn(4, 7, 30, generator=g).to(torch.bfloat16).requires_grad_(True)
    tokens = torch.randint(0, 30, (4, 6), generator=g)
    view = full[:, :-1]  # the trainer's logits[:, :-1] slice
    upstream = torch.randn(4, 6, generator=g)
    (token_logprobs(view, tokens, chunk_tokens=4) * upstream).sum().backward()
    ref = full.detach().float().requires_grad_(True)
    want = torch.log_softmax(ref[:, :-1], -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    (want * upstream).sum().backward()
    assert full.grad.dtype == torch.bfloat16
    close(full.grad.float(), ref.grad, atol=2e-2)  # bf16 rounding of the gradient only
    assert (full.grad[:, -1] == 0).all()


def _saved_bytes(fn) -> int:
    """Bytes autograd keeps for the backward pass of fn() (deterministic, unlike peak RSS)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def test_token_logprobs_keeps_no_float32_vocab_copy_for_backward():
    b, t, v = 4, 16, 2048
    logits = torch.randn(b, t, v).to(torch.bfloat16).requires_grad_(True)
    tokens = torch.randint(0, v, (b, t))
    fp32_copy = b * t * v * 4

    def naive() -> torch.Tensor:
        return torch.log_softmax(logits.float(), -1).gather(-1, tokens.unsqueeze(-1))

    assert _saved_bytes(naive) >= fp32_copy
    ours = _saved_bytes(lambda: token_logprobs(logits, tokens))
    # Only the bf16 logits (which the caller holds anyway) and [B, T] tensors: tokens, lse.
    assert ours <= logits.numel() * 2 + b * t * (8 + 4) < fp32_copy


def test_token_logprobs_default_blocks_follow_the_vocabulary(monkeypatch):
    import verirl.algos.logprobs as lp_mod

    g = torch.Generator().manual_seed(14)
    logits = torch.randn(3, 5, 40, generator=g)
    tokens = torch.randint(0, 40, (3, 5), generator=g)
    want = torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    monkeypatch.setattr(lp_mod, "BLOCK_ELEMENTS", 40 * 3)  # 3 positions per block
    assert list(lp_mod._blocks(3, 5, lp_mod._chunk(None, 40)))[:2] == [
        (slice(0, 1), slice(0, 3)),
        (slice(0, 1), slice(3, 6)),
    ]
    close(token_logprobs(logits, tokens), want)
    p = torch.softmax(logits, -1)
    close(entropy_from_logits(logits), -(p * p.log()).sum(-1))
    with pytest.raises(ValueError, match="chunk_tokens must be >= 1"):
        token_logprobs(logits, tokens, chunk_tokens=0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        token_logprobs(logits, tokens, temperature=0.0)
    with pytest.raises(ValueError, match="do not match"):
        token_logprobs(logits, tokens[:, :4])


def test_entropy_from_logits():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(3, 4, 20, generator=g) * 3
    p = torch.softmax(logits, -1)
    for chunk in (3, 4, 100):
        close(entropy_from_logits(logits, chunk_tokens=chunk), -(p * p.log()).sum(-1))
    # With grad (an entropy bonus): d H / d z matches autograd through the dense formula.
    z = logits.clone().requires_grad_(True)
    entropy_from_logits(z, chunk_tokens=5).sum().backward()
    z2 = logits.clone().requires_grad_(True)
    (-(torch.softmax(z2, -1) * torch.log_softmax(z2, -1)).sum(-1)).sum().backward()
    close(z.grad, z2.grad)
    close(entropy_from_logits(torch.zeros(1, 1, 8)), [[math.log(8)]])
    peaked = torch.tensor([[[0.0, -1e4, -1e4]]])
    close(entropy_from_logits(peaked), [[0.0]])


def test_kl_k3_saturates_instead_of_overflowing():
    logp = torch.tensor([-150.0, 0.0], requires_grad=True)
    ref = torch.tensor([0.0, -150.0])
    k3 = kl_penalty(logp, ref, "k3")
    assert torch.isfinite(k3).all()
    close(k3.detach(), [math.expm1(20.0) - 20.0, math.expm1(-20.0) + 20.0], atol=1.0)
    k3.sum().backward()
    assert torch.isfinite(logp.grad).all()


# --- clipped policy loss -------------------------------------------------------------------------

RATIOS = torch.tensor([1.5, 1.25, 1.1, 0.9, 0.82, 0.78, 0.5])


def _ppo(adv_sign: float, mask: torch.Tensor | None = None):
    old = torch.zeros(1, len(RATIOS))
    logp = RATIOS.log().unsqueeze(0).clone().requires_grad_(True)
    m = torch.ones_like(old) if mask is None else mask
    loss, clipped = clipped_policy_loss(logp, old, torch.tensor([adv_sign]), m, 0.2, 0.28)
    return logp, loss, clipped


def test_clipped_policy_loss_clip_higher_asymmetric():
    # ε_low = 0.2, ε_high = 0.28: range [0.8, 1.28].
    # A = +1: -min(ρ, clip ρ): only ρ above 1.28 is clipped (1.25 is not, as it would be at 0.2).
    _, loss, clipped = _ppo(+1.0)
    close(loss, [[-1.28, -1.25, -1.1, -0.9, -0.82, -0.78, -0.5]])
    assert clipped.tolist() == [[True, False, False, False, False, False, False]]
    # A = -1: -min(-ρ, -clip ρ) = max(ρ, clip ρ): only ρ below 0.8 is clipped.
    _, loss, clipped = _ppo(-1.0)
    close(loss, [[1.5, 1.25, 1.1, 0.9, 0.82, 0.8, 0.8]])
    assert clipped.tolist() == [[False, False, False, False, False, True, True]]


def test_clipped_policy_loss_gradient_zero_exactly_on_clipped_tokens():
    for sign in (+1.0, -1.0):
        logp, loss, clipped = _ppo(sign)
        loss.sum().backward()
        grad = logp.grad[0]
        assert (grad[clipped[0]] == 0).all()
        # Unclipped: d(-ρA)/dlogp = -ρA.
        close(grad[~clipped[0]], -sign * RATIOS[~clipped[0]])
    # Masked-out tokens: no loss, no gradient, never counted as clipped.
    mask = torch.tensor([[0, 1, 1, 1, 1, 1, 1]])
    logp, loss, clipped = _ppo(+1.0, mask)
    loss.sum().backward()
    assert loss[0, 0] == 0 and logp.grad[0, 0] == 0 and not clipped[0, 0]


def test_clipped_policy_loss_sequence_and_token_advantages_agree():
    g = torch.Generator().manual_seed(6)
    logp, old = torch.randn(3, 5, generator=g) * 0.3, torch.randn(3, 5, generator=g) * 0.3
    adv = torch.tensor([1.0, -2.0, 0.5])
    mask = torch.ones(3, 5)
    a = clipped_policy_loss(logp, old, adv, mask, 0.2, 0.2)
    b = clipped_policy_loss(logp, old, adv.unsqueeze(-1).expand(3, 5), mask, 0.2, 0.2)
    close(a[0], b[0])
    assert torch.equal(a[1], b[1])
    # A ratio of e^100 from a corrupted old log-prob stays finite.
    huge, _ = clipped_policy_loss(
        torch.zeros(1, 1), torch.full((1, 1), -100.0), adv[:1], mask[:1, :1], 0.2, 0.2
    )
    assert torch.isfinite(huge).all()


# --- aggregation ---------------------------------------------------------------------------------

LOSS = torch.tensor([[1.0, 2, 3, 4], [5, 6, 99, 99], [7, 99, 99, 99], [99, 99, 99, 99]])
MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]])


def test_aggregations_on_ragged_mask_by_hand():
    # Masked sums per row: 10, 11, 7 (the 99s are outside the mask; row 3 is empty).
    close(aggregate_loss(LOSS, MASK, "token-mean"), 28 / 7)
    close(aggregate_loss(LOSS, MASK, "seq-mean-token-mean"), (2.5 + 5.5 + 7) / 3)
    close(aggregate_loss(LOSS, MASK, "seq-mean-token-sum-norm", max_len=8), (10 + 11 + 7) / 8 / 3)
    close(aggregate_loss(LOSS, MASK, "seq-mean-token-sum-norm"), (10 + 11 + 7) / 4 / 3)  # T = 4
    close(masked_mean(LOSS, MASK), 4.0)
    close(masked_mean(LOSS, MASK, dim=-1), [2.5, 5.5, 7.0, 0.0])
    # Nothing left to train on (all groups filtered): 0, not NaN, even with global counts of 0.
    for mode in LOSS_AGGREGATIONS:
        empty = torch.zeros_like(MASK)
        assert aggregate_loss(LOSS, empty, mode).item() == 0.0
        assert aggregate_loss(LOSS, empty, mode, num_tokens=0, num_seqs=0).item() == 0.0
    with pytest.raises(ValueError, match="max_len must be > 0"):
        aggregate_loss(LOSS, MASK, "seq-mean-token-sum-norm", max_len=0)
    with pytest.raises(
        ValueError, match="token-mean, seq-mean-token-mean, seq-mean-token-sum-norm"
    ):
        aggregate_loss(LOSS, MASK, "seq-sum")


@pytest.mark.parametrize("mode", list(LOSS_AGGREGATIONS))
def test_aggregation_ignores_nan_at_padding_and_takes_bool_masks(mode):
    bad = LOSS.clone()
    bad[MASK == 0] = float("nan")
    close(aggregate_loss(bad, MASK.bool(), mode), aggregate_loss(LOSS, MASK, mode).item())


@pytest.mark.parametrize("mode", list(LOSS_AGGREGATIONS))
def test_microbatch_accumulation_equals_full_batch(mode):
    g = torch.Generator().manual_seed(7)
    b, t = 6, 9
    lengths = torch.tensor([9, 3, 1, 0, 6, 4])
    mask = (torch.arange(t) < lengths.unsqueeze(1)).float()  # [6, 9] ragged, one empty row
    w = torch.randn(t, generator=g).requires_grad_(True)
    x = torch.randn(b, t, generator=g)
    full = aggregate_loss(x * w, mask, mode, max_len=16)
    (g_full,) = torch.autograd.grad(full, w)
    n_tok, n_seq = mask.sum().item(), float((mask.sum(-1) > 0).sum())
    total = torch.zeros(())
    for s in range(0, b, 2):
        width = max(int(mask[s : s + 2].sum(-1).max()), 1)  # trimmed like the trainer's batches
        mb_loss = aggregate_loss(
            (x * w)[s : s + 2, :width],
            mask[s : s + 2, :width],
            mode,
            max_len=16,
            num_tokens=n_tok,
            num_seqs=n_seq,
        )
        total = total + mb_loss
    (g_acc,) = torch.autograd.grad(total, w)
    close(total, full.item())
    close(g_acc, g_full)


def test_normalisers_are_keyword_only():
    # A positional call written for another argument order must fail, not normalise wrongly.
    with pytest.raises(TypeError):
        aggregate_loss(LOSS, MASK, "token-mean", 8.0)  # type: ignore[misc]
    with pytest.raises(TypeError):
        sft_loss(torch.zeros(1, 2, 3), torch.zeros(1, 2, dtype=torch.long), 4)  # type: ignore[misc]
    with pytest.raises(TypeError):
        grpo_advantages(torch.zeros(4), 2, True, 1e-6, torch.ones(4))  # type: ignore[misc]


# --- value and SFT losses ------------------------------------------------------------------------


def test_value_loss_clipping_by_hand():
    v = torch.tensor([[2.0, 0.5, 9.0]])
    old = torch.zeros(1, 3)
    ret = torch.tensor([[3.0, 1.0, 0.0]])
    m = torch.tensor([[1, 1, 0]])
    # Token 0: V moved 2 > 0.5 -> V_clip = 0.5: max((2-3)², (0.5-3)²) = 6.25.
    # Token 1: V moved 0.5, inside the range: (0.5-1)² = 0.25. Token 2 masked.
    close(value_loss(v, old, ret, m, clip_range=0.5), 0.5 * (6.25 + 0.25) / 2)
    close(value_loss(v, old, ret, m, clip_range=None), 0.5 * (1.0 + 0.25) / 2)
    close(value_loss(v, old, ret, m, clip_range=0.5, num_tokens=5), 0.5 * (6.25 + 0.25) / 5)
    # Clipping pessimism: the gradient of token 0 goes through the clipped branch (0 wrt V).
    vv = v.clone().requires_grad_(True)
    value_loss(vv, old, ret, m, clip_range=0.5).backward()
    close(vv.grad, [[0.0, 0.5 * (0.5 - 1.0), 0.0]])


def test_sft_loss():
    g = torch.Generator().manual_seed(8)
    logits = torch.randn(2, 5, 11, generator=g)
    labels = torch.tensor([[-100, -100, 3, 4, -100], [-100, 1, 2, 3, 10]])
    keep = labels != -100
    want = F.cross_entropy(logits[keep], labels[keep])
    close(sft_loss(logits, labels), want.item())
    close(sft_loss(torch.zeros(1, 3, 4), torch.tensor([[-100, 0, 1]])), math.log(4))
    close(sft_loss(logits, torch.full((2, 5), -100)), 0.0)  # nothing to learn: 0, not NaN
    lg = logits.clone().requires_grad_(True)
    sft_loss(lg, labels).backward()
    assert (lg.grad[~keep] == 0).all() and (lg.grad[keep].abs().sum(-1) > 0).all()


# --- reference model -----------------------------------------------------------------------------


def test_ema_update_linear():
    torch.manual_seed(9)
    ref, pol = nn.Linear(3, 2), nn.Linear(3, 2)
    r0 = {k: p.detach().clone() for k, p in ref.named_parameters()}
    ema_update(ref, pol, decay=0.9)
    for k, p in ref.named_parameters():
        close(p.detach(), 0.9 * r0[k] + 0.1 * dict(pol.named_parameters())[k].detach())
        assert p.grad is None
    before = {k: p.detach().clone() for k, p in ref.named_parameters()}
    ema_update(ref, pol, decay=1.0)  # frozen
    assert all(torch.equal(p, before[k]) for k, p in ref.named_parameters())
    ema_update(ref, pol, decay=0.0)  # copy
    assert all(torch.equal(p, q) for p, q in zip(ref.parameters(), pol.parameters(), strict=True))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ema_update(ref, pol, decay=1.5)
    with pytest.raises(ValueError, match="differ"):
        ema_update(ref, nn.Linear(3, 2, bias=False), decay=0.5)
    with pytest.raises(ValueError, match="weight"):
        ema_update(ref, nn.Linear(4, 2), decay=0.5)


def test_ema_update_bf16_reference_tracks_fp32_policy():
    ref = nn.Linear(2, 2, bias=False).to(torch.bfloat16)
    pol = nn.Linear(2, 2, bias=False)
    ref.weight.data.fill_(1.0)
    pol.weight.data.fill_(2.0)
    ema_update(ref, pol, decay=0.5)
    assert ref.weight.dtype == torch.bfloat16
    close(ref.weight.float(), torch.full((2, 2), 1.5))


def test_frozen_copy_and_adapters_disabled():
    pol = nn.Sequential(nn.Linear(3, 3))
    ref = frozen_copy(pol)
    assert not any(p.requires_grad for p in ref.parameters()) and not ref.training
    assert all(p.requires_grad for p in pol.parameters())
    with torch.no_grad():
        pol[0].weight.add_(1.0)
    assert not torch.equal(pol[0].weight, ref[0].weight)  # independent storage
    with pytest.raises(TypeError, match="no LoRA adapters"):
        adapters_disabled(pol)


def test_adapters_disabled_gives_the_base_model_with_peft():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(10)

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    base = Tiny()
    x = torch.randn(2, 4)
    want = base(x).detach()
    model = get_peft_model(base, LoraConfig(r=2, target_modules=["fc"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.5)  # adapters now change the output
    assert not torch.allclose(model(x), want)
    with adapters_disabled(model):
        close(model(x).detach(), want)
    assert not torch.allclose(model(x), want)  # adapters back on afterwards


def test_kl_shaped_rewards():
    mask = torch.tensor([[0, 1, 1, 1, 0]])
    kl = torch.tensor([[9.0, 0.5, -0.5, 1.0, 9.0]])  # k1 can be negative; outside the mask: junk
    out = kl_shaped_rewards(torch.tensor([2.0]), mask, kl, beta=0.1)
    close(out, [[0.0, -0.05, 0.05, 2.0 - 0.1, 0.0]])
    close(kl_shaped_rewards(torch.tensor([2.0]), mask, None, beta=0.1), [[0, 0, 0, 2.0, 0]])


def test_masked_whiten_bf16_in_float32():
    x = torch.tensor([1.0, 3.0, 9.0], dtype=torch.bfloat16)
    out = masked_whiten(x, torch.tensor([1, 1, 0]))
    assert out.dtype == torch.float32
    close(out, [-1 / math.sqrt(2), 1 / math.sqrt(2), 0.0])


def test_ema_update_only_trainable_skips_frozen_parameters():
    ref, pol = nn.Linear(2, 2), nn.Linear(2, 2)
    pol.weight.requires_grad_(False)  # like a LoRA model's frozen base
    w0, b0 = ref.weight.detach().clone(), ref.bias.detach().clone()
    ema_update(ref, pol, decay=0.5, only_trainable=True)
    assert torch.equal(ref.weight, w0)
    close(ref.bias.detach(), 0.5 * b0 + 0.5 * pol.bias.detach())


# --- the pieces together: multi-epoch GRPO on a 4-armed bandit ---------------------------------


def _bandit_grpo(beta: float, epochs: int = 6, clip: float = 0.2) -> tuple[float, list[float]]:
    """One GRPO batch (group of 16 one-token answers, arm 2 correct), several epochs against the
    sampling policy π_old, KL(k3) to the initial policy in the loss. Returns (p(arm 2), clip
    fraction per epoch)."""
    theta = torch.zeros(4, requires_grad=True)
    opt = torch.optim.SGD([theta], lr=0.5)
    arms = torch.arange(4).repeat(4).unsqueeze(1)  # [16, 1] the sampled tokens
    mask = torch.ones(16, 1)
    adv = grpo_advantages((arms[:, 0] == 2).float(), group_size=16)  # [16]
    old_logp = ref_logp = token_logprobs(theta.detach().expand(16, 1, 4), arms)  # [16, 1]
    clip_fracs = []
    for _ in range(epochs):
        logp = token_logprobs(theta.expand(16, 1, 4), arms)
        pg, clipped = clipped_policy_loss(logp, old_logp, adv, mask, clip, clip + 0.08)
        per_token = pg + beta * kl_penalty(logp, ref_logp, "k3")
        loss = aggregate_loss(per_token, mask, "token-mean")
        opt.zero_grad()
        loss.backward()
        opt.step()
        clip_fracs.append(masked_mean(clipped.float(), mask).item())
    return torch.softmax(theta.detach(), -1)[2].item(), clip_fracs


def test_multi_epoch_grpo_learns_clips_and_kl_holds_back():
    p6, clip_fracs = _bandit_grpo(beta=0.0)
    assert p6 > 0.4  # from 0.25
    assert clip_fracs[0] == 0.0  # epoch 1: π_θ = π_old, ratio 1
    assert clip_fracs[-1] == 1.0  # by epoch 6 every token has left the trust region
    # ... so more epochs on the same batch change nothing; without clipping they keep going.
    assert _bandit_grpo(beta=0.0, epochs=20)[0] == p6
    assert _bandit_grpo(beta=0.0, epochs=20, clip=100.0)[0] > p6 + 0.1
    p_kl, _ = _bandit_grpo(beta=1.0)
    assert 0.25 < p_kl < p6  # the KL term to π_ref pulls back


# --- on a real (tiny) Qwen2 ----------------------------------------------------------------------


def test_sft_loss_and_logprob_grads_on_tiny_qwen2(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(13)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    ids = torch.randint(2, 200, (2, 9))
    labels = ids.clone()
    labels[:, :4] = -100  # prompt
    out = model(input_ids=ids, labels=labels)
    logits = out.logits[:, :-1]  # position t predicts token t+1: the caller shifts
    close(sft_loss(logits, labels[:, 1:]), out.loss.item(), atol=1e-5)
    # The chunked custom backward gives the same parameter gradients as log_softmax + gather.
    grads = []
    for fn in (
        lambda lg, tok: token_logprobs(lg, tok, chunk_tokens=5),
        lambda lg, tok: torch.log_softmax(lg, -1).gather(-1, tok.unsqueeze(-1)).squeeze(-1),
    ):
        model.zero_grad()
        lg = model(input_ids=ids).logits[:, :-1]
        (fn(lg, ids[:, 1:]) * torch.linspace(-1, 1, 8)).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    close(grads[0], grads[1], atol=1e-5)
