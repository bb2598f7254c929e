"""Policy-gradient losses per token, chosen by name from ``POLICY_LOSSES``.

Every entry has one signature, ``(logp, old_logp, advantages, mask, params) -> (loss [B, T],
clipped [B, T] bool)``: logp [B, T] is log π_θ of the sampled tokens (with gradient), old_logp
[B, T] log π_old (no gradient), advantages [B, T] (or [B], one per sequence), mask [B, T] 1 on
the tokens that train. ``loss`` is 0 outside the mask; ``clipped`` marks the tokens a clip or
cap acted on (the clip-fraction metric). The caller aggregates with ``aggregate_loss``.

Sources: PPO — Schulman et al. 2017 (arXiv:1707.06347); clip-higher — DAPO (arXiv:2503.14476);
dual-clip PPO — Ye et al. 2020, "Mastering Complex Control in MOBA Games with Deep RL"
(arXiv:1912.09729, eq. 5); GSPO — Zheng et al. 2025, "Group Sequence Policy Optimization"
(arXiv:2507.18071, eq. 5-7, 10-11); CISPO — MiniMax 2025, "MiniMax-M1" (arXiv:2506.13585, eq.
4-5), with ScaleRL's ε_max (arXiv:2510.13786). The table mirrors verl's ``register_policy_loss``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from verirl.algos.losses import MAX_LOG_RATIO, clipped_policy_loss, clipped_surrogate


@dataclass(frozen=True)
class PolicyLossParams:
    """The knobs of every policy loss; each loss reads the ones its formula has."""

    clip_low: float = 0.2  # ε_low: ratio floor 1 − ε_low (ppo_clip, dual_clip, gspo)
    clip_high: float = 0.2  # ε_high: ratio ceiling 1 + ε_high (DAPO clip-higher: 0.28)
    dual_clip_c: float = 3.0  # dual_clip: a negative-advantage token's loss ≤ c·|A|, c > 1
    cispo_max: float = 5.0  # cispo: IS weight cap ε_max (ScaleRL and TRL recommend 5)


PolicyLossFn = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, PolicyLossParams],
    tuple[torch.Tensor, torch.Tensor],
]
POLICY_LOSSES: dict[str, PolicyLossFn] = {}


def register_policy_loss(name: str) -> Callable[[PolicyLossFn], PolicyLossFn]:
    """Add a loss to ``POLICY_LOSSES`` (verl's ``register_policy_loss``); a second function
    under a taken name is an error."""

    def add(fn: PolicyLossFn) -> PolicyLossFn:
        if POLICY_LOSSES.get(name, fn) is not fn:
            raise ValueError(f"policy loss {name!r} is already registered")
        POLICY_LOSSES[name] = fn
        return fn

    return add


def _tokens(adv: torch.Tensor) -> torch.Tensor:
    return adv.unsqueeze(-1) if adv.dim() == 1 else adv  # [B, 1] | [B, T]


@register_policy_loss("ppo_clip")
def ppo_clip_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    p: PolicyLossParams,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO/GRPO/DAPO: L_t = −min(ρ_t A_t, clip(ρ_t, 1 − ε_low, 1 + ε_high) A_t) per token
    (``clipped_policy_loss``)."""
    return clipped_policy_loss(logp, old_logp, advantages, mask, p.clip_low, p.clip_high)


@register_policy_loss("dual_clip")
def dual_clip_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    p: PolicyLossParams,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dual-clip PPO (Ye et al. 2020, eq. 5): for A_t < 0 the clipped loss −min(ρA, clip(ρ)A)
    = |A|·ρ grows without bound in ρ; cap it at c·|A|:

    L_t = −min(ρ_t A_t, clip(ρ_t) A_t)                        A_t ≥ 0
    L_t = min(−min(ρ_t A_t, clip(ρ_t) A_t), −c A_t)           A_t < 0,  c > 1

    A token on the cap (ρ > c with A < 0) has zero gradient and counts as clipped.
    """
    if p.dual_clip_c <= 1.0:
        raise ValueError(f"dual_clip_c must be > 1, got {p.dual_clip_c}")
    loss, clipped = clipped_policy_loss(logp, old_logp, advantages, mask, p.clip_low, p.clip_high)
    adv = _tokens(advantages).expand_as(loss)  # [B, T]
    cap = -p.dual_clip_c * adv  # [B, T] c·|A| where A < 0
    capped = (adv < 0) & (loss > cap) & (mask > 0)
    loss = torch.where(capped, cap, loss)
    return torch.where(mask > 0, loss, 0.0), clipped | capped


@register_policy_loss("gspo")
def gspo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    p: PolicyLossParams,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GSPO (Zheng et al. 2025): one importance ratio per *sequence*, the geometric mean of
    its token ratios, clipped as a whole:

    s_i = (π_θ(o_i) / π_old(o_i))^(1/|o_i|) = exp(1/|o_i| Σ_t log ρ_{i,t})           (eq. 7)
    L_{i,t} = −min(s_{i,t} A_{i,t}, clip(s_{i,t}, 1 − ε_low, 1 + ε_high) A_{i,t}),
    s_{i,t} = sg[s_i] · π_θ(o_{i,t}) / sg[π_θ(o_{i,t})]                       (GSPO-token, eq. 13)

    s_{i,t} equals s_i in value and its gradient is s_i ∇ log π_θ(o_{i,t}); with one advantage
    per sequence, 1/|o_i| Σ_t ∇L_{i,t} is the paper's sequence gradient (eq. 11). Aggregate with
    ``seq-mean-token-mean`` for the paper's objective (1/G Σ_i of the sequence loss). The paper's
    ranges are far narrower than PPO's (ε_low = 3e-4, ε_high = 4e-4).
    """
    m = mask > 0
    log_ratio = torch.where(m, logp.detach() - old_logp.detach(), 0.0)  # [B, T]
    log_s = log_ratio.sum(-1) / m.sum(-1).clamp(min=1)  # [B] log s_i, no gradient
    log_s = log_s.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    s = torch.exp(log_s.unsqueeze(-1) + logp - logp.detach())  # [B, T] value s_i, grad via logp
    return clipped_surrogate(s, _tokens(advantages), mask, p.clip_low, p.clip_high)


@register_policy_loss("cispo")
def cispo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    p: PolicyLossParams,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CISPO (MiniMax-M1, eq. 4-5): clip the importance-sampling *weight*, not the update, so
    every token keeps a gradient (PPO's clip zeroes rare "fork" tokens whose ratio runs away):

    L_t = −sg[min(ρ_t, ε_max)] · A_t · log π_θ(o_t)

    ∇L_t = −min(ρ_t, ε_max) A_t ∇ log π_θ(o_t): at ρ = 1 this is PPO's gradient. No lower bound
    (the paper sets ε_low^IS large); ``cispo_max`` is ε_max = 1 + ε_high^IS. Tokens whose
    weight is capped count as clipped.
    """
    if p.cispo_max <= 0:
        raise ValueError(f"cispo_max must be > 0, got {p.cispo_max}")
    m = mask > 0
    log_ratio = (logp.detach() - old_logp.detach()).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    ratio = torch.exp(log_ratio)  # [B, T] no gradient
    weight = ratio.clamp(max=p.cispo_max)
    loss = -weight * _tokens(advantages) * logp  # [B, T]
    return torch.where(m, loss, 0.0), (ratio > p.cispo_max) & m


def policy_loss(
    name: str,
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    params: PolicyLossParams,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token loss and clip flags [B, T] by the ``POLICY_LOSSES`` entry ``name``.

    >>> lp = torch.tensor([[0.0, -1.0]])
    >>> loss, _ = policy_loss("cispo", lp, lp, torch.tensor([2.0]), torch.ones(1, 2),
    ...                       PolicyLossParams())
    >>> loss.tolist()  # −1 · 2 · log π
    [[-0.0, 2.0]]
    """
    try:
        fn = POLICY_LOSSES[name]
    except KeyError:
        names = ", ".join(POLICY_LOSSES)
        raise ValueError(f"unknown policy loss {name!r}; expected one of: {names}") from None
    return fn(logp, old_logp, advantages, mask, params)
