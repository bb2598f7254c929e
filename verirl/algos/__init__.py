"""RL algorithms as pure functions of tensors: advantages, KL estimators, losses, reference.

Variants are chosen by name from tables (``ADVANTAGE_ESTIMATORS``, ``POLICY_LOSSES``,
``KL_ESTIMATORS``, ``LOSS_AGGREGATIONS``); each function's docstring gives its formula and
source. ``policy_objective`` puts a micro-batch's loss together from them.
"""

from verirl.algos.advantages import (
    ADVANTAGE_ESTIMATORS,
    AdvantageInputs,
    Advantages,
    compute_advantages,
    gae_advantages,
    group_has_signal,
    grpo_advantages,
    kl_shaped_rewards,
    last_token_rewards,
    masked_whiten,
    register_advantage,
    rloo_advantages,
)
from verirl.algos.kl import KL_ESTIMATORS, kl_k1, kl_k2, kl_k3, kl_penalty
from verirl.algos.logprobs import entropy_from_logits, token_logprobs
from verirl.algos.losses import (
    LOSS_AGGREGATIONS,
    aggregate_loss,
    clipped_policy_loss,
    masked_mean,
    sft_loss,
    truncated_is_weights,
    value_loss,
)
from verirl.algos.objective import ObjectiveConfig, policy_objective
from verirl.algos.policy_losses import (
    POLICY_LOSSES,
    PolicyLossParams,
    cispo_loss,
    dual_clip_loss,
    gspo_loss,
    policy_loss,
    ppo_clip_loss,
    register_policy_loss,
)
from verirl.algos.reference import adapters_disabled, ema_update, frozen_copy
from verirl.algos.shaping import length_penalty, soft_overlong_penalty

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "KL_ESTIMATORS",
    "LOSS_AGGREGATIONS",
    "POLICY_LOSSES",
    "AdvantageInputs",
    "Advantages",
    "ObjectiveConfig",
    "PolicyLossParams",
    "adapters_disabled",
    "aggregate_loss",
    "cispo_loss",
    "clipped_policy_loss",
    "compute_advantages",
    "dual_clip_loss",
    "ema_update",
    "entropy_from_logits",
    "frozen_copy",
    "gae_advantages",
    "group_has_signal",
    "grpo_advantages",
    "gspo_loss",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "kl_penalty",
    "kl_shaped_rewards",
    "last_token_rewards",
    "length_penalty",
    "masked_mean",
    "masked_whiten",
    "policy_loss",
    "policy_objective",
    "ppo_clip_loss",
    "register_advantage",
    "register_policy_loss",
    "rloo_advantages",
    "sft_loss",
    "soft_overlong_penalty",
    "token_logprobs",
    "truncated_is_weights",
    "value_loss",
]
