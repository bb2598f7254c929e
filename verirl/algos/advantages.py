"""Advantage estimators as pure tensor functions, chosen by name from ``ADVANTAGE_ESTIMATORS``.

Shapes: B sequences, T token positions, G = ``group_size`` completions per prompt. A ``mask``
[B, T] is 1 on the tokens the loss trains on (the completion) and 0 on prompt and padding.
Group-level tensors are laid out group-major: group g is rows ``g*G .. g*G+G-1``.

Every table entry takes one ``AdvantageInputs`` and returns ``(advantages [B, T], returns
[B, T] | None)``; ``compute_advantages`` is the trainer's entry point: it drops infra errors
(and, with DAPO dynamic sampling, groups without signal) from the loss mask and returns the
new mask beside the advantages, never changing its inputs.

Sources: GRPO — Shao et al. 2024, "DeepSeekMath" (arXiv:2402.03300), §4.1.2; Dr. GRPO — Liu et
al. 2025, "Understanding R1-Zero-Like Training" (arXiv:2503.20783); DAPO dynamic sampling — Yu et
al. 2025 (arXiv:2503.14476); GAE — Schulman et al. 2016 (arXiv:1506.02438); RLOO — Kool et al.
2019, "Buy 4 REINFORCE samples, get a baseline for free!" and Ahmadian et al. 2024 (arXiv:
2402.14740); REINFORCE++ — Hu 2025 (arXiv:2501.03262). The table mirrors verl's
``register_adv_est`` in ``core_algos.py`` (one function per estimator).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch


def _groups(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """[B] -> [B/G, G], with a clear error when B is not a multiple of G."""
    if x.dim() != 1:
        raise ValueError(
            f"expected a 1-D tensor of per-sequence values, got shape {tuple(x.shape)}"
        )
    if group_size < 1 or x.numel() % group_size != 0:
        raise ValueError(f"batch of {x.numel()} is not a whole number of groups of {group_size}")
    return x.view(-1, group_size)


def grpo_advantages(
    rewards: torch.Tensor,
    group_size: int,
    scale_by_std: bool = True,
    eps: float = 1e-6,
    *,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """GRPO outcome advantages, one per sequence, shared by all of its tokens.

    A_i = (r_i − mean(r_group)) / (std(r_group) + ε)        (DeepSeekMath §4.1.2)
    A_i =  r_i − mean(r_group)                               (Dr. GRPO: ``scale_by_std=False``)

    std is the *sample* standard deviation (Bessel, n−1), as TRL's GRPOTrainer and verl compute
    it with ``torch.std``; DeepSeekMath does not say. A constant group (no signal) gets exactly
    A = 0: never NaN, and never an ulp of float rounding blown up by 1/ε. ``valid`` [B]
    (optional, 1 = counts) drops samples such as infra errors from the group's mean and std;
    they get A = 0. A group with one valid sample has no signal: A = 0.

    rewards: [B] group-major, B = num_groups * group_size. Returns [B] float32.

    >>> grpo_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), 2).tolist()
    [0.7071..., -0.7071..., 0.0, 0.0]
    >>> grpo_advantages(torch.tensor([1.0, 0.0]), 2, scale_by_std=False).tolist()
    [0.5, -0.5]
    """
    w = torch.ones_like(rewards, dtype=torch.float32) if valid is None else valid.float()
    w = _groups(w, group_size)  # [P, G]
    r = torch.where(w > 0, _groups(rewards.float(), group_size), 0.0)  # [P, G] invalid: even NaN
    n = w.sum(-1, keepdim=True)  # [P, 1] valid samples per group
    mean = (r * w).sum(-1, keepdim=True) / n.clamp(min=1)  # [P, 1]
    # A constant group must give exactly 0: its float32 mean can miss the common value by an ulp,
    # and dividing that residue by std ≈ 1e-8 (+ ε) would turn it into a spurious advantage.
    signal = group_has_signal(rewards, group_size, valid=valid).unsqueeze(-1)  # [P, 1]
    centred = torch.where(signal, (r - mean) * w, 0.0)  # [P, G]
    if scale_by_std:
        var = (centred**2).sum(-1, keepdim=True) / (n - 1).clamp(min=1)  # [P, 1] unbiased
        centred = centred / (var.sqrt() + eps)
    return centred.reshape(-1)  # [B]


def group_has_signal(
    rewards: torch.Tensor, group_size: int, *, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """DAPO dynamic sampling: a group teaches something only if its rewards are not all equal.

    rewards: [B] group-major; ``valid`` [B] optional (invalid samples are ignored; a group with
    fewer than two valid samples has no signal). Returns [num_groups] bool.

    >>> group_has_signal(torch.tensor([1.0, 1.0, 1.0, 0.0]), 2).tolist()
    [False, True]
    """
    r = _groups(rewards.float(), group_size)  # [P, G]
    ok = torch.ones_like(r, dtype=torch.bool) if valid is None else _groups(valid, group_size) > 0
    hi = torch.where(ok, r, -torch.inf).amax(-1)  # [P]
    lo = torch.where(ok, r, torch.inf).amin(-1)  # [P]
    return hi > lo  # all-invalid groups: -inf > inf is False


def last_token_rewards(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Place each sequence's scalar score on its last valid token (PPO's sparse reward).

    scores: [B]; mask: [B, T]. Returns [B, T] (dtype of ``scores``, float): r_{i,t} = score_i at
    t = max{t : mask_{i,t} = 1}, else 0. A row with an empty mask gets no reward at all.

    >>> last_token_rewards(torch.tensor([2.0]), torch.tensor([[0, 1, 1, 0]])).tolist()
    [[0.0, 0.0, 2.0, 0.0]]
    """
    m = mask > 0  # [B, T]
    t = torch.arange(m.shape[1], device=m.device)  # [T]
    last = torch.where(m, t, -1).amax(-1)  # [B] index of the last valid token, -1 if none
    hit = t.unsqueeze(0) == last.unsqueeze(1)  # [B, T] one-hot (all False for empty rows)
    s = scores.float() if not scores.is_floating_point() else scores
    return hit.to(s.dtype) * s.unsqueeze(1)


def kl_shaped_rewards(
    scores: torch.Tensor, mask: torch.Tensor, kl: torch.Tensor | None, beta: float
) -> torch.Tensor:
    """PPO-RLHF token rewards with the KL *in the reward* (Ziegler et al. 2019; Ouyang et al.
    2022, eq. 2): r_t = −β·KL_t + [t = last] · score.

    scores: [B]; mask, kl: [B, T] (kl from ``kl_penalty``, usually "k1" on the sampling policy's
    log-probs, so it carries no gradient; it is detached here). ``kl=None`` or β = 0 gives the
    sparse ``last_token_rewards``. Returns [B, T], 0 outside the mask. With the KL in the *loss*
    instead (GRPO), leave it out here and add β·KL_t to the per-token loss.

    >>> kl_shaped_rewards(torch.tensor([1.0]), torch.tensor([[1, 1]]),
    ...                   torch.tensor([[0.5, 2.0]]), beta=0.5).tolist()
    [[-0.25, 0.0]]
    """
    r = last_token_rewards(scores, mask)  # [B, T]
    if kl is None or beta == 0.0:
        return r
    return r - beta * torch.where(mask > 0, kl.detach().to(r.dtype), 0.0)


def gae_advantages(
    token_rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the masked tokens of each sequence.

    δ_t = r_t + γ V(s_{t+1}) − V(s_t),   A_t = Σ_l (γλ)^l δ_{t+l},   R_t = A_t + V(s_t)
    (Schulman et al. 2016, eq. 16). Only positions with mask = 1 are steps of the episode:
    "t+1" is the next *masked* position, so gaps (a multi-turn trajectory's tool output and
    feedback, which the model did not choose) are no steps at all: each row's masked positions
    are compacted to the left, the recursion runs over them alone, and the results are
    scattered back. Rewards and values outside the mask are ignored, positions outside it get
    A = R = 0, and V after the last token is 0 (the episode ends there). γ = λ = 1 gives
    reward-to-go minus V.

    token_rewards, values, mask: [B, T]. Returns (advantages [B, T], returns [B, T]), float32
    (or float64), detached, both 0 outside the mask. Not whitened: see ``masked_whiten``.

    >>> adv, _ = gae_advantages(torch.tensor([[0.0, 9.0, 1.0]]), torch.zeros(1, 3),
    ...                         torch.tensor([[1, 0, 1]]), gamma=0.5, gae_lambda=1.0)
    >>> adv.tolist()  # the gap neither gets an advantage nor counts as a step: 0.5 * 1
    [[0.5, 0.0, 1.0]]
    """
    dtype = torch.promote_types(values.dtype, torch.float32)  # a bf16 critic: sum in float32
    on = mask > 0  # [B, T]
    # where, not ·mask: whatever sits outside the mask (even NaN) must not leak in.
    v = torch.where(on, values.detach().to(dtype), 0.0)  # [B, T] no gradient into the critic
    r = torch.where(on, token_rewards.to(dtype), 0.0)  # [B, T]
    # Compact: a stable sort puts each row's masked positions first, in order; K = the most
    # steps any row has. Past a row's own steps its entries are 0 (r = V = 0), so the
    # recursion over them stays 0 and needs no mask.
    k = int(on.sum(-1).max()) if on.numel() else 0
    order = torch.argsort((~on).to(torch.int8), dim=-1, stable=True)[:, :k]  # [B, K]
    rk, vk = r.gather(1, order), v.gather(1, order)  # [B, K]
    next_value = torch.zeros_like(v[:, 0])  # [B] V(s_{t+1}); 0 past the last step
    running = torch.zeros_like(v[:, 0])  # [B] A_{t+1}
    adv_k = torch.zeros_like(vk)  # [B, K]
    for t in reversed(range(k)):
        delta = rk[:, t] + gamma * next_value - vk[:, t]  # [B]
        running = delta + gamma * gae_lambda * running  # [B]
        next_value = vk[:, t]
        adv_k[:, t] = running
    # Scatter back (order is a permutation: each position written once); 0 outside the mask.
    adv = torch.zeros_like(v).scatter(1, order, adv_k)
    adv = torch.where(on, adv, 0.0)
    return adv, torch.where(on, adv + v, 0.0)


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """Normalise ``x`` to unit variance over the masked entries (PPO advantage whitening).

    x' = (x − μ) / sqrt(σ² + ε), plus μ back when ``shift_mean=False`` (scale only, as TRL and
    verl do for returns). μ and σ² are the mean and unbiased variance over entries with mask = 1.
    Entries outside the mask are set to 0. x, mask: same shape; returns that shape, float32
    (or float64).

    >>> masked_whiten(torch.tensor([1.0, 3.0, 9.0]), torch.tensor([1, 1, 0])).tolist()
    [-0.7071..., 0.7071..., 0.0]
    """
    x = x.to(torch.promote_types(x.dtype, torch.float32))  # bf16 statistics are too coarse
    on = mask > 0
    x = torch.where(on, x, 0.0)
    n = on.sum()
    mean = x.sum() / n.clamp(min=1)
    # Bessel's correction as verl/TRL's masked_var; one valid entry has no spread: var = 0.
    var = torch.where(on, (x - mean) ** 2, 0.0).sum() / (n - 1).clamp(min=1)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(on, out, 0.0)


def rloo_advantages(
    rewards: torch.Tensor, group_size: int, *, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """RLOO: each sample's baseline is the mean reward of the *other* samples of its group.

    A_i = r_i − 1/(n−1) Σ_{j≠i} r_j  =  n/(n−1) · (r_i − mean(r_group))
    (Kool et al. 2019; Ahmadian et al. 2024, arXiv:2402.14740, eq. 7). The baseline does not
    depend on r_i, so the estimate stays unbiased. ``valid`` [B] drops samples (infra errors)
    from the baselines; they get A = 0, and so does every sample of a group with < 2 valid ones.

    rewards: [B] group-major. Returns [B] float32.

    >>> rloo_advantages(torch.tensor([1.0, 0.0, 0.0]), 3).tolist()  # 1 − 0, 0 − ½, 0 − ½
    [1.0, -0.5, -0.5]
    """
    w = torch.ones_like(rewards, dtype=torch.float32) if valid is None else valid.float()
    w = _groups(w, group_size)  # [P, G]
    r = torch.where(w > 0, _groups(rewards.float(), group_size), 0.0)  # [P, G]
    n = w.sum(-1, keepdim=True)  # [P, 1]
    others = (r.sum(-1, keepdim=True) - r) / (n - 1).clamp(min=1)  # [P, G] leave-one-out mean
    return torch.where((w > 0) & (n > 1), r - others, 0.0).reshape(-1)  # [B]


# --- the table: one uniform signature per estimator ---------------------------------------------


@dataclass(frozen=True)
class AdvantageInputs:
    """Everything an estimator may read; each one uses the fields its formula needs."""

    rewards: torch.Tensor  # [B] one score per sequence (env reward + shaping), group-major
    mask: torch.Tensor  # [B, T] the tokens that train (infra errors, filtered groups: 0)
    group_size: int  # G
    valid: torch.Tensor | None = None  # [B] bool; False: counts in no baseline (infra error)
    values: torch.Tensor | None = None  # [B, T] critic V(s_t) at sampling time (gae)
    token_kl: torch.Tensor | None = None  # [B, T] KL estimate to put in the reward, detached
    beta: float = 0.0  # coefficient of token_kl in the reward
    gamma: float = 1.0  # discount (gae, reinforce_pp)
    lam: float = 0.95  # GAE λ
    scale_by_std: bool = True  # grpo: divide by the group's std (False: Dr. GRPO)
    # batch normaliser x, mask -> x' (``masked_whiten``; across ranks when distributed)
    whiten: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = masked_whiten


AdvantageFn = Callable[[AdvantageInputs], tuple[torch.Tensor, torch.Tensor | None]]
ADVANTAGE_ESTIMATORS: dict[str, AdvantageFn] = {}


def register_advantage(name: str) -> Callable[[AdvantageFn], AdvantageFn]:
    """Add an estimator to ``ADVANTAGE_ESTIMATORS`` (verl's ``register_adv_est``); a second
    function under a taken name is an error, not a silent override."""

    def add(fn: AdvantageFn) -> AdvantageFn:
        if ADVANTAGE_ESTIMATORS.get(name, fn) is not fn:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        ADVANTAGE_ESTIMATORS[name] = fn
        return fn

    return add


def _per_token(adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B] sequence advantages spread over each row's masked tokens: [B, T], 0 elsewhere."""
    return torch.where(mask > 0, adv.unsqueeze(-1), 0.0)


@register_advantage("grpo")
def grpo_estimator(x: AdvantageInputs) -> tuple[torch.Tensor, None]:
    """GRPO, A_{i,t} = (r_i − mean_g r) / (std_g r + ε); Dr. GRPO with ``scale_by_std=False``."""
    adv = grpo_advantages(x.rewards, x.group_size, scale_by_std=x.scale_by_std, valid=x.valid)
    return _per_token(adv, x.mask), None


@register_advantage("rloo")
def rloo_estimator(x: AdvantageInputs) -> tuple[torch.Tensor, None]:
    """RLOO, A_{i,t} = r_i − mean_{j≠i} r_j (``rloo_advantages``)."""
    return _per_token(rloo_advantages(x.rewards, x.group_size, valid=x.valid), x.mask), None


def _reward_to_go(x: AdvantageInputs, rewards: torch.Tensor) -> torch.Tensor:
    # GAE with V ≡ 0 and λ = 1 is the discounted reward-to-go Σ_l γ^l r_{t+l} of the token
    # rewards (score on the last token, −β·KL on every token when the KL is in the reward).
    token_r = kl_shaped_rewards(rewards, x.mask, x.token_kl, x.beta)  # [B, T]
    rtg, _ = gae_advantages(token_r, torch.zeros_like(token_r), x.mask, x.gamma, 1.0)
    return rtg  # [B, T]


@register_advantage("reinforce_pp")
def reinforce_pp_estimator(x: AdvantageInputs) -> tuple[torch.Tensor, None]:
    """REINFORCE++ (Hu 2025, arXiv:2501.03262, eq. 6-7): no critic, no group baseline.

    G_t = Σ_{l≥0} γ^l r_{t+l}  (score on the last token, −β·KL_t per token in the reward),
    A_t = (G_t − mean_batch G) / std_batch G  over every masked token of the batch
    (token-weighted, as OpenRLHF and verl whiten). Works with ``group_size`` 1.
    """
    return x.whiten(_reward_to_go(x, x.rewards), x.mask), None


@register_advantage("reinforce_pp_baseline")
def reinforce_pp_baseline_estimator(x: AdvantageInputs) -> tuple[torch.Tensor, None]:
    """REINFORCE++-baseline (Hu 2025, arXiv:2501.03262 v3 §3; verl's
    ``reinforce_plus_plus_baseline``): subtract the group mean first, then whiten over the batch.

    r'_i = r_i − mean_g r,   A_t = whiten_batch(G_t(r')) — the group mean removes the prompt's
    difficulty, the batch statistics scale every prompt alike (GRPO divides each group by its
    own std instead, which boosts nearly-solved prompts).
    """
    centred = grpo_advantages(x.rewards, x.group_size, scale_by_std=False, valid=x.valid)
    return x.whiten(_reward_to_go(x, centred), x.mask), None


@register_advantage("gae")
def gae_estimator(x: AdvantageInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO: GAE over the critic's values (``gae_advantages``), whitened over the batch.
    Returns (advantages, returns): the returns are the critic's regression targets."""
    if x.values is None:
        raise ValueError("the 'gae' estimator needs critic values (algo.name: ppo)")
    token_r = kl_shaped_rewards(x.rewards, x.mask, x.token_kl, x.beta)  # [B, T]
    adv, ret = gae_advantages(token_r, x.values, x.mask, x.gamma, x.lam)
    return x.whiten(adv, x.mask), ret


class Advantages(NamedTuple):
    """What ``compute_advantages`` returns; nothing it was given is changed."""

    advantages: torch.Tensor  # [B, T], 0 outside ``mask``
    mask: torch.Tensor  # [B, T] the loss mask: input mask without infra errors / filtered groups
    returns: torch.Tensor | None  # [B, T] critic targets (gae), else None
    groups_kept: int  # groups with at least one token left in the mask


def compute_advantages(
    name: str, x: AdvantageInputs, *, filter_zero_variance: bool = False
) -> Advantages:
    """Advantages by the ``ADVANTAGE_ESTIMATORS`` entry ``name``, and the mask they apply to.

    Samples with ``valid`` False leave the mask (the trainer counts them, never trains on
    them); with ``filter_zero_variance`` (DAPO dynamic sampling) so do groups whose valid
    rewards are all equal. The estimator sees the reduced mask, so batch statistics
    (REINFORCE++, GAE whitening) are over the tokens that train.

    >>> x = AdvantageInputs(torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.ones(4, 2), 2)
    >>> out = compute_advantages("rloo", x, filter_zero_variance=True)
    >>> out.advantages.tolist(), out.groups_kept
    ([[1.0, 1.0], [-1.0, -1.0], [0.0, 0.0], [0.0, 0.0]], 1)
    """
    try:
        fn = ADVANTAGE_ESTIMATORS[name]
    except KeyError:
        names = ", ".join(ADVANTAGE_ESTIMATORS)
        raise ValueError(
            f"unknown advantage estimator {name!r}; expected one of: {names}"
        ) from None
    keep = torch.ones_like(x.rewards, dtype=torch.bool) if x.valid is None else x.valid > 0  # [B]
    if filter_zero_variance:
        signal = group_has_signal(x.rewards, x.group_size, valid=x.valid)  # [P]
        keep = keep & signal.repeat_interleave(x.group_size)
    mask = x.mask * keep.to(x.mask.dtype).unsqueeze(-1)  # [B, T]
    adv, returns = fn(replace(x, mask=mask))
    kept = int(_groups(keep.float(), x.group_size).amax(-1).sum())
    return Advantages(torch.where(mask > 0, adv, 0.0), mask, returns, kept)
