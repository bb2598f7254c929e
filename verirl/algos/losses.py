"""Policy, value and SFT losses as pure tensor functions, and how per-token losses become one number.

Shapes: B sequences, T positions, V vocabulary; ``logits[:, t]`` predicts ``tokens[:, t]`` (the
caller shifts). ``mask`` [B, T] is 1 on the tokens that train.

Sources: PPO clipped surrogate and clipped value loss — Schulman et al. 2017 (arXiv:1707.06347)
and OpenAI baselines' ppo2; asymmetric "clip-higher" and token-mean aggregation — DAPO (Yu et al.
2025, arXiv:2503.14476); seq-mean-token-mean — GRPO (Shao et al. 2024, arXiv:2402.03300, eq. 3);
seq-mean-token-sum-norm — Dr. GRPO (Liu et al. 2025, arXiv:2503.20783). Names follow cleanrl
(``clip_coef``-style ranges) and the aggregation names follow verl's ``loss_agg_mode``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from verirl.algos.logprobs import entropy_from_logits, token_logprobs

# ρ = exp(log π_θ − log π_old) with |log ρ| ≤ 20 (as verl): a stale or corrupted old log-prob must
# not give inf·0 = NaN. e^20 ≈ 5e8 is far outside any clip range, so clipped tokens stay clipped.
MAX_LOG_RATIO = 20.0

__all__ = [  # token_logprobs and entropy_from_logits live in logprobs.py; re-exported here.
    "LOSS_AGGREGATIONS",
    "MAX_LOG_RATIO",
    "aggregate_loss",
    "clipped_policy_loss",
    "entropy_from_logits",
    "masked_mean",
    "sft_loss",
    "token_logprobs",
    "truncated_is_weights",
    "value_loss",
]


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Σ x·m / Σ m over ``dim`` (all entries when None); 0 where the mask is empty, never NaN.

    >>> masked_mean(torch.tensor([[1.0, 2.0, 9.0]]), torch.tensor([[1, 1, 0]])).item()
    1.5
    """
    m = mask > 0
    x = torch.where(m, x, 0.0)
    if dim is None:
        return x.sum() / m.sum().clamp(min=1)
    return x.sum(dim) / m.sum(dim).clamp(min=1)


def clipped_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float,
    clip_high: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO clipped surrogate per token, with DAPO's asymmetric range (clip-higher).

    L_t = −min(ρ_t A_t, clip(ρ_t, 1 − ε_low, 1 + ε_high) A_t),  ρ_t = π_θ(o_t) / π_old(o_t)

    logp, old_logp, mask: [B, T]; advantages: [B] (GRPO, one per sequence) or [B, T] (PPO).
    Returns (loss_tokens [B, T], 0 outside the mask; clipped [B, T] bool): a token is clipped
    when the clipped branch wins strictly (A > 0 and ρ > 1 + ε_high, or A < 0 and ρ < 1 − ε_low);
    its gradient is zero. Aggregate with ``aggregate_loss``.
    """
    adv = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages  # [B, 1] | [B, T]
    log_ratio = (logp - old_logp.detach()).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)  # [B, T]
    return clipped_surrogate(torch.exp(log_ratio), adv, mask, clip_low, clip_high)


def clipped_surrogate(
    ratio: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float,
    clip_high: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The clip both PPO (a token's ratio) and GSPO (its sequence's ratio) apply:
    −min(ρ A, clip(ρ, 1 − ε_low, 1 + ε_high) A) per token [B, T], 0 outside the mask, and
    where the clipped branch wins strictly [B, T] bool. ratio, mask: [B, T]; adv: [B, 1] | [B, T].
    """
    surrogate = ratio * adv  # [B, T]
    surrogate_clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * adv  # [B, T]
    loss = -torch.min(surrogate, surrogate_clipped)
    m = mask > 0
    return torch.where(m, loss, 0.0), (surrogate_clipped < surrogate) & m


# --- aggregation: per-token losses [B, T] -> one scalar, by name -------------------------------
# Each takes (loss [B,T], mask [B,T], max_len, num_tokens, num_seqs). The num_* normalisers are
# the WHOLE batch's counts when (loss, mask) is one micro-batch of an accumulated batch; then the
# micro-batch losses sum exactly to the full-batch loss. Sequences with no masked tokens (filtered
# groups, infra errors) do not count as sequences.


def _masked(loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # where, not loss·mask: a NaN/inf at a padding position must not turn the sum into NaN.
    return torch.where(mask > 0, loss, 0.0)


def _count(n: float | torch.Tensor) -> float | torch.Tensor:
    # A batch with nothing left to train on (every group filtered) gives 0, not 0/0 = NaN.
    return n.clamp(min=1) if isinstance(n, torch.Tensor) else max(n, 1)


def _num_seqs(mask: torch.Tensor, num_seqs: float | None) -> torch.Tensor | float:
    if num_seqs is not None:
        return _count(num_seqs)
    return ((mask > 0).sum(-1) > 0).sum().clamp(min=1)


def agg_token_mean(
    loss: torch.Tensor,
    mask: torch.Tensor,
    max_len: float | None = None,
    num_tokens: float | None = None,
    num_seqs: float | None = None,
) -> torch.Tensor:
    """DAPO: Σ_{i,t} L_{i,t} / Σ_i |o_i| — every token weighs the same, long or short answer."""
    n = _count(num_tokens) if num_tokens is not None else (mask > 0).sum().clamp(min=1)
    return _masked(loss, mask).sum() / n


def agg_seq_mean_token_mean(
    loss: torch.Tensor,
    mask: torch.Tensor,
    max_len: float | None = None,
    num_tokens: float | None = None,
    num_seqs: float | None = None,
) -> torch.Tensor:
    """GRPO paper: 1/G Σ_i 1/|o_i| Σ_t L_{i,t} — each sequence weighs the same."""
    per_seq = _masked(loss, mask).sum(-1) / (mask > 0).sum(-1).clamp(min=1)  # [B]
    return per_seq.sum() / _num_seqs(mask, num_seqs)


def agg_seq_mean_token_sum_norm(
    loss: torch.Tensor,
    mask: torch.Tensor,
    max_len: float | None = None,
    num_tokens: float | None = None,
    num_seqs: float | None = None,
) -> torch.Tensor:
    """Dr. GRPO: 1/G Σ_i (Σ_t L_{i,t}) / L_max with a constant L_max (the generation budget),
    so no length bias; TRL's ``dr_grpo`` loss is the same (verl's omits the 1/G, a constant
    factor). ``max_len`` defaults to T (verl's default); pass the budget (max_new_tokens) when
    micro-batches are trimmed to different widths, or they are normalised differently."""
    length = max_len if max_len is not None else loss.shape[-1]
    if length <= 0:
        raise ValueError(f"max_len must be > 0, got {max_len}")
    return _masked(loss, mask).sum() / length / _num_seqs(mask, num_seqs)


LOSS_AGGREGATIONS: dict[str, Callable[..., torch.Tensor]] = {
    "token-mean": agg_token_mean,
    "seq-mean-token-mean": agg_seq_mean_token_mean,
    "seq-mean-token-sum-norm": agg_seq_mean_token_sum_norm,
}


def aggregate_loss(
    loss_tokens: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    *,
    max_len: float | None = None,
    num_tokens: float | None = None,
    num_seqs: float | None = None,
) -> torch.Tensor:
    """Per-token losses [B, T] to a scalar by the ``LOSS_AGGREGATIONS`` entry ``mode``.

    >>> loss = torch.tensor([[1.0, 1.0, 1.0], [4.0, 0.0, 0.0]])
    >>> mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    >>> [round(aggregate_loss(loss, mask, m).item(), 4) for m in LOSS_AGGREGATIONS]
    [1.75, 2.5, 1.1667]
    """
    try:
        fn = LOSS_AGGREGATIONS[mode]
    except KeyError:
        names = ", ".join(LOSS_AGGREGATIONS)
        raise ValueError(f"unknown loss aggregation {mode!r}; expected one of: {names}") from None
    return fn(loss_tokens, mask, max_len=max_len, num_tokens=num_tokens, num_seqs=num_seqs)


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float | None,
    *,
    num_tokens: float | None = None,
) -> torch.Tensor:
    """Clipped critic loss (PPO2), token mean over the mask:

    ½ max((V − R)², (V_clip − R)²),  V_clip = V_old + clamp(V − V_old, −c, c).

    values, old_values, returns, mask: [B, T]. ``clip_range=None`` turns clipping off.
    ``num_tokens`` is the whole batch's token count for gradient accumulation.

    >>> value_loss(torch.tensor([[2.0]]), torch.tensor([[0.0]]), torch.tensor([[3.0]]),
    ...            torch.tensor([[1]]), clip_range=0.5).item()  # max(1, 2.5²) / 2
    3.125
    """
    err = (values - returns) ** 2  # [B, T]
    if clip_range is not None:
        v_clip = old_values + (values - old_values).clamp(-clip_range, clip_range)
        err = torch.max(err, (v_clip - returns) ** 2)
    return agg_token_mean(0.5 * err, mask, num_tokens=num_tokens)


def sft_loss(
    logits: torch.Tensor, labels: torch.Tensor, *, num_tokens: float | None = None
) -> torch.Tensor:
    """Supervised fine-tuning: −1/N Σ_{t ∈ response} log π_θ(o_t | q, o_<t).

    logits [B, T, V] already aligned with labels [B, T] (no shift here); label −100 marks prompt
    and padding positions, which do not count. N = number of response tokens (or ``num_tokens``
    for gradient accumulation). A batch without response tokens gives 0, not NaN. Uses
    ``token_logprobs``, so no [B, T, V] float32 copy is kept for the backward pass.

    >>> sft_loss(torch.zeros(1, 2, 4), torch.tensor([[-100, 3]])).item()  # log 4
    1.386...
    """
    keep = labels != -100  # [B, T]
    logp = token_logprobs(logits, labels.masked_fill(~keep, 0))  # [B, T]
    n = num_tokens if num_tokens is not None else keep.sum().clamp(min=1)
    return -(logp * keep).sum() / n


def truncated_is_weights(
    trainer_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor, cap: float = 2.0
) -> torch.Tensor:
    """Truncated importance-sampling weights for the sampler/trainer mismatch, per token.

    w_t = min(π_trainer(o_t) / π_vllm(o_t), C) = min(exp(log π_trainer − log π_vllm), C),
    computed without gradient. Multiplying each token's policy-gradient loss by w_t corrects for
    sampling from vLLM's slightly different numerics (Yao et al. 2025, "Your efficient RL
    framework secretly brings you off-policy RL training"; TRL's vllm_importance_sampling_*,
    verl's rollout_is). Both inputs are ``[B, T]``; padded positions are the caller's to mask.

    >>> w = truncated_is_weights(torch.tensor([[-1.0, -0.5, 0.0]]), torch.tensor([[-1.0, -1.0, -3.0]]))
    >>> [round(x, 4) for x in w[0].tolist()]
    [1.0, 1.6487, 2.0]
    """
    if cap <= 0:
        raise ValueError(f"cap must be positive, got {cap}")
    with torch.no_grad():
        return torch.exp(trainer_logprobs - rollout_logprobs).clamp(max=cap)
