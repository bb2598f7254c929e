"""Per-token estimators of KL(π_θ ‖ π_ref) from the two log-probabilities of the sampled token.

With x = log π_ref(o_t) − log π_θ(o_t) and o_t ~ π_θ (Schulman 2020, "Approximating KL
Divergence", http://joschu.net/blog/kl-approx.html):

- k1 = −x                 unbiased, high variance, can be negative (PPO's KL-in-reward penalty);
- k2 = x²/2               biased, low variance, ≥ 0; its gradient is that of the true KL to first
                          order;
- k3 = eˣ − x − 1         unbiased, low variance, ≥ 0 (the GRPO paper's choice, DeepSeekMath
                          eq. 4).

The estimators are chosen by name from ``KL_ESTIMATORS``; ``kl_penalty`` is the entry point.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# |log π_ref − log π_θ| beyond this saturates k3 (e^20 ≈ 4.9e8 is finite in fp16/bf16/fp32).
K3_MAX_LOG_RATIO = 20.0


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k1 = log π_θ − log π_ref = −x. [B, T] -> [B, T]."""
    return logp - ref_logp


def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k2 = ½ (log π_ref − log π_θ)² = x²/2. [B, T] -> [B, T]."""
    return 0.5 * (ref_logp - logp) ** 2


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 = eˣ − x − 1 with x = log π_ref − log π_θ; ≥ 0 since eˣ ≥ 1 + x. [B, T] -> [B, T].

    ``expm1`` keeps it exact near x = 0, where eˣ − 1 would cancel to 0 in float32 and the
    result could come out slightly negative. x is clamped to ±``K3_MAX_LOG_RATIO`` (verl's
    ``low_var_kl`` does the same): a token the policy has pushed to e⁻⁹⁰ of the reference's
    probability would otherwise give eˣ = inf and a NaN update; there the penalty saturates.
    """
    x = (ref_logp - logp).clamp(-K3_MAX_LOG_RATIO, K3_MAX_LOG_RATIO)
    return torch.expm1(x) - x


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
}


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token KL estimate by name (``"k1" | "k2" | "k3"``), same shape as ``logp`` [B, T].

    The gradient flows through ``logp`` (the policy); pass ``ref_logp`` computed without grad.

    >>> kl_penalty(torch.tensor([0.0, -1.0]), torch.tensor([0.0, 0.0]), "k1").tolist()
    [0.0, -1.0]
    >>> kl_penalty(torch.tensor([-1.0]), torch.tensor([0.0]), "k3").tolist()  # e - 2
    [0.7182...]
    >>> kl_penalty(torch.tensor([0.0]), torch.tensor([0.0]), "k4")
    Traceback (most recent call last):
    ...
    ValueError: unknown KL estimator 'k4'; expected one of: k1, k2, k3
    """
    try:
        fn = KL_ESTIMATORS[estimator]
    except KeyError:
        names = ", ".join(KL_ESTIMATORS)
        raise ValueError(f"unknown KL estimator {estimator!r}; expected one of: {names}") from None
    return fn(logp, ref_logp)
