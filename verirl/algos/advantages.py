"""Advantage estimators: GRPO's group-normalised rewards and PPO's GAE, as pure tensor functions.

Shapes: B sequences, T token positions, G = ``group_size`` completions per prompt. A ``mask``
[B, T] is 1 on the tokens the loss trains on (the completion) and 0 on prompt and padding.
Group-level tensors are laid out group-major: group g is rows ``g*G .. g*G+G-1``.

Sources: GRPO — Shao et al. 2024, "DeepSeekMath" (arXiv:2402.03300), §4.1.2; Dr. GRPO — Liu et
al. 2025, "Understanding R1-Zero-Like Training" (arXiv:2503.20783); DAPO dynamic sampling — Yu et
al. 2025 (arXiv:2503.14476); GAE — Schulman et al. 2016 (arXiv:1506.02438). The code mirrors
verl's ``core_algos.py`` (one function per estimator).
"""

from __future__ import annotations

from collections.abc import Callable

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
    "t+1" is the next *masked* position (so masked-out gaps, e.g. tool output in multi-turn, are
    skipped, as in verl), rewards and values outside the mask are ignored, and V after the last
    token is 0 (the episode ends there). γ = λ = 1 gives reward-to-go minus V.

    token_rewards, values, mask: [B, T]. Returns (advantages [B, T], returns [B, T]), float32
    (or float64), detached, both 0 outside the mask. Not whitened: see ``masked_whiten``.
    """
    dtype = torch.promote_types(values.dtype, torch.float32)  # a bf16 critic: sum in float32
    on = mask > 0  # [B, T]
    m = on.to(dtype)
    # where, not ·mask: whatever sits outside the mask (even NaN) must not leak in.
    v = torch.where(on, values.detach().to(dtype), 0.0)  # [B, T] no gradient into the critic
    r = torch.where(on, token_rewards.to(dtype), 0.0)  # [B, T]
    next_value = torch.zeros_like(v[:, 0])  # [B] V(s_{t+1}); 0 past the last token
    running = torch.zeros_like(v[:, 0])  # [B] A_{t+1}
    adv = torch.zeros_like(v)  # [B, T]
    for t in reversed(range(v.shape[1])):
        delta = r[:, t] + gamma * next_value - v[:, t]  # [B]
        a_t = delta + gamma * gae_lambda * running  # [B]
        # A masked-out position is not a step: it passes the next step's state through unchanged.
        keep = m[:, t]
        running = keep * a_t + (1 - keep) * running
        next_value = keep * v[:, t] + (1 - keep) * next_value
        adv[:, t] = a_t * keep
    return adv, (adv + v) * m


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


# Group advantage estimators by name: (rewards [B], group_size, valid [B] | None) -> [B].
ADVANTAGE_ESTIMATORS: dict[str, Callable[..., torch.Tensor]] = {
    "grpo": lambda rewards, group_size, valid=None: grpo_advantages(
        rewards, group_size, scale_by_std=True, valid=valid
    ),
    "dr-grpo": lambda rewards, group_size, valid=None: grpo_advantages(
        rewards, group_size, scale_by_std=False, valid=valid
    ),
}
