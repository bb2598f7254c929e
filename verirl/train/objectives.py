"""Stopgap loss/advantage functions from before ``verirl.algos`` landed.

The trainer now uses ``verirl.algos``; this module stays only because the distributed work
(``verirl/train/distributed.py`` and its tests) imports it. New code: use ``verirl.algos``.
Shapes: B sequences, T response positions; ``mask`` is 1 on response tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def grpo_advantages(
    rewards: torch.Tensor, valid: torch.Tensor, scale: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """GRPO (Shao et al. 2024): A_i = (r_i − mean_g r) / (std_g r + ε) within each group.

    `rewards`, `valid`: [P, G]. Invalid samples (infra errors) are left out of the group's mean
    and std and get A = 0. Dr. GRPO (Liu et al. 2025) sets `scale=False` (no std division).

    >>> grpo_advantages(torch.tensor([[1., 0.]]), torch.ones(1, 2), scale=False).tolist()
    [[0.5, -0.5]]
    """
    w = valid.float()
    n = w.sum(-1, keepdim=True).clamp(min=1)
    mean = (rewards * w).sum(-1, keepdim=True) / n
    adv = (rewards - mean) * w
    if scale:
        var = ((rewards - mean) ** 2 * w).sum(-1, keepdim=True) / (n - 1).clamp(min=1)
        adv = adv / (var.sqrt() + eps)
    return adv


def group_has_signal(rewards: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """DAPO dynamic sampling: a group teaches something iff its valid rewards differ. [P] bool.

    >>> group_has_signal(torch.tensor([[1., 1.], [1., 0.]]), torch.ones(2, 2)).tolist()
    [False, True]
    """
    big = torch.finfo(rewards.dtype).max
    hi = torch.where(valid.bool(), rewards, -big).amax(-1)
    lo = torch.where(valid.bool(), rewards, big).amin(-1)
    return hi > lo


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] per position: [B, T, V], [B, T] -> [B, T] (fp32)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """H = −Σ_v p_v log p_v per position: [B, T, V] -> [B, T]."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token KL(π_θ‖π_ref) estimators (Schulman 2020) with x = log π_ref − log π_θ:
    k1 = −x, k2 = x²/2, k3 = eˣ − x − 1.

    >>> kl_penalty(torch.tensor([0.0]), torch.tensor([0.0]), "k3").item()
    0.0
    """
    x = ref_logp - logp
    if kind == "k1":
        return -x
    if kind == "k2":
        return 0.5 * x**2
    if kind == "k3":
        return torch.exp(x) - x - 1
    raise ValueError(f"unknown KL estimator {kind!r}")


def clipped_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv: torch.Tensor,
    clip_low: float,
    clip_high: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO clip (Schulman 2017) with DAPO's asymmetric range: per-token loss
    −min(ρA, clip(ρ, 1−ε_low, 1+ε_high)A), and whether each token was clipped. [B, T] each."""
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - clip_low, 1 + clip_high) * adv
    return -torch.min(unclipped, clipped), (clipped < unclipped).float()


def aggregate_loss(
    loss: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    norm_len: float | None = None,
) -> torch.Tensor:
    """Per-token losses [B, T] to a scalar.

    - token-mean (DAPO): Σ loss·mask / N_tokens;
    - seq-mean-token-mean (GRPO paper): mean over sequences of each sequence's token mean;
    - seq-mean-token-sum-norm (Dr. GRPO): Σ_t loss / L_const, averaged over sequences.
    `num_tokens`/`num_seqs` are the whole batch's counts when this is one micro-batch of a
    gradient-accumulated batch, so the micro-batch losses add up to the full-batch loss.
    """
    m = mask.float()
    if mode == "token-mean":
        return (loss * m).sum() / (num_tokens if num_tokens is not None else m.sum().clamp(min=1))
    seqs = num_seqs if num_seqs is not None else float(loss.shape[0])
    if mode == "seq-mean-token-mean":
        per_seq = (loss * m).sum(-1) / m.sum(-1).clamp(min=1)
        return per_seq.sum() / seqs
    if mode == "seq-mean-token-sum-norm":
        length = norm_len if norm_len is not None else float(loss.shape[-1])
        return (loss * m).sum() / length / seqs
    raise ValueError(f"unknown loss aggregation {mode!r}")


def last_token_rewards(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Put each sequence's scalar reward [B] on its last response token: [B, T].

    >>> last_token_rewards(torch.tensor([2.0]), torch.tensor([[0, 1, 1, 0]])).tolist()
    [[0.0, 0.0, 2.0, 0.0]]
    """
    m = mask.long()
    idx = (m * torch.arange(m.shape[1], device=m.device)).argmax(-1)  # last 1 per row
    out = torch.zeros(m.shape, dtype=rewards.dtype, device=m.device)
    out[torch.arange(m.shape[0]), idx] = rewards * (m.sum(-1) > 0)
    return out


def gae_advantages(
    token_rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE (Schulman et al. 2016) over response tokens: δ_t = r_t + γV_{t+1} − V_t,
    A_t = Σ_l (γλ)^l δ_{t+l}, returns R_t = A_t + V_t. Positions outside `mask` are skipped
    (V beyond the last token is 0). [B, T] -> ([B, T], [B, T])."""
    m = mask.float()
    values = values * m
    adv = torch.zeros_like(values)
    last = torch.zeros_like(values[:, 0])
    next_v = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = token_rewards[:, t] + gamma * next_v - values[:, t]
        last = delta + gamma * lam * last
        adv[:, t] = last * m[:, t]
        # Outside the response the carried state must not leak into earlier tokens.
        next_v = torch.where(m[:, t] > 0, values[:, t], next_v)
        last = last * m[:, t]
    return adv, adv + values


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x − mean) / std over the masked entries; masked-out entries become 0."""
    m = mask.float()
    n = m.sum().clamp(min=1)
    mean = (x * m).sum() / n
    var = ((x - mean) ** 2 * m).sum() / n
    return (x - mean) / (var.sqrt() + eps) * m


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip: float
) -> torch.Tensor:
    """Clipped value loss (PPO2): ½ max((V − R)², (V_old + clip(V − V_old, ±c) − R)²). [B, T]."""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * torch.max((values - returns) ** 2, (clipped - returns) ** 2)


def sft_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """−mean_{t ∈ response} log π(o_t | q, o_<t); the prompt is masked out."""
    nll = F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")
    m = mask.float()
    return (nll * m).sum() / m.sum().clamp(min=1)


@torch.no_grad()
def ema_update(target: torch.nn.Module, source: torch.nn.Module, decay: float) -> None:
    """θ_ref ← d·θ_ref + (1 − d)·θ (an EMA reference drifts slowly toward the policy)."""
    for t, s in zip(target.parameters(), source.parameters(), strict=True):
        t.mul_(decay).add_(s.detach(), alpha=1 - decay)
