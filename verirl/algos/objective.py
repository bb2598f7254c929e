"""The RL objective of one micro-batch as one pure function: per-token log-probs in, loss out.

The trainer's micro-step reads forward → ``policy_objective`` → backward; everything between
the model's log-probs and the scalar it differentiates is here, in this order:

    L_t   = policy_loss(log π_θ, log π_old, A, mask)_t · w_t      (``POLICY_LOSSES``; w: TIS)
          + β · KL_t(π_θ ‖ π_ref)                                  (when the KL is in the loss)
    loss  = aggregate(L, mask)  [+ vf_coef · value_loss]           (``LOSS_AGGREGATIONS``)

Shapes: B rows of the micro-batch, T its columns; every [B, T] input is aligned with ``logp``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from verirl.algos.kl import kl_penalty
from verirl.algos.losses import aggregate_loss, truncated_is_weights, value_loss
from verirl.algos.policy_losses import PolicyLossParams, policy_loss


@dataclass(frozen=True)
class ObjectiveConfig:
    """What the objective is; built once per run from the config (``algo.*``)."""

    policy_loss: str = "ppo_clip"  # a ``POLICY_LOSSES`` name
    params: PolicyLossParams = field(default_factory=PolicyLossParams)
    loss_agg: str = "token-mean"  # a ``LOSS_AGGREGATIONS`` name
    max_len: float | None = None  # the generation budget (seq-mean-token-sum-norm's L_max)
    kl_coef: float = 0.0  # β of the KL term in the loss; 0: the KL (if any) is only measured
    kl_estimator: str = "k3"  # a ``KL_ESTIMATORS`` name
    tis_cap: float | None = None  # truncated IS weight cap for the rollout engine; None: off
    vf_coef: float = 0.5  # weight of the critic's loss (PPO)
    value_clip: float | None = 0.2  # the critic's clip range; None: no clipping


def policy_objective(
    logp: torch.Tensor,
    old_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cfg: ObjectiveConfig,
    *,
    num_tokens: float,
    num_seqs: float,
    ref_logp: torch.Tensor | None = None,
    rollout_logp: torch.Tensor | None = None,
    values: torch.Tensor | None = None,
    old_values: torch.Tensor | None = None,
    returns: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss to backpropagate for one micro-batch, and its metrics.

    logp [B, T]: log π_θ (with gradient); old_logp [B, T] log π_old, or None when the batch is
    trained once right after sampling (π_old = π_θ: ratio 1, no second forward); advantages
    [B, T]; mask [B, T]. ``num_tokens``/``num_seqs`` are the *whole* batch's counts, so the
    micro-batch losses (and the metrics) sum to the full batch's. ``ref_logp`` [B, T] gives
    the KL (added to the loss when ``cfg.kl_coef`` > 0, else only reported); ``rollout_logp``
    [B, T] the engine's log-probs for TIS; values/old_values/returns [B, T] the critic's terms.

    Metrics: ``pg_loss``, ``clip_frac``, ``kl``, ``value_loss`` are this micro-batch's share of
    the batch value; ``tis_weight_sum`` is Σ w over its masked tokens (the caller divides).
    """
    old = logp.detach() if old_logp is None else old_logp.detach()
    m = mask > 0
    pg, clipped = policy_loss(cfg.policy_loss, logp, old, advantages, mask, cfg.params)  # [B, T]
    metrics: dict[str, float] = {}
    if cfg.tis_cap is not None and rollout_logp is not None:
        tis = truncated_is_weights(old, rollout_logp, cfg.tis_cap)  # [B, T] no gradient
        pg = pg * tis
        metrics["tis_weight_sum"] = float(torch.where(m, tis, 0.0).sum())
    per_tok = pg
    if ref_logp is not None:
        kl = kl_penalty(logp, ref_logp, cfg.kl_estimator)  # [B, T]
        metrics["kl"] = float(torch.where(m, kl.detach(), 0.0).sum()) / num_tokens
        if cfg.kl_coef > 0:
            per_tok = per_tok + cfg.kl_coef * kl
    loss = aggregate_loss(per_tok, mask, cfg.loss_agg, max_len=cfg.max_len,
                          num_tokens=num_tokens, num_seqs=num_seqs)  # fmt: skip
    if values is not None:
        if old_values is None or returns is None:
            raise ValueError("a value loss needs old_values and returns beside values")
        vloss = value_loss(values, old_values, returns, mask, cfg.value_clip,
                           num_tokens=num_tokens)  # fmt: skip
        loss = loss + cfg.vf_coef * vloss
        metrics["value_loss"] = float(vloss.detach())
    metrics["pg_loss"] = float(torch.where(m, pg.detach(), 0.0).sum()) / num_tokens
    metrics["clip_frac"] = float(clipped.sum()) / num_tokens
    metrics["loss"] = float(loss.detach())
    return loss, metrics
