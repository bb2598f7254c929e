"""RL algorithms as pure functions of tensors: advantages, KL estimators, losses, reference.

Variants are chosen by name from tables (``ADVANTAGE_ESTIMATORS``, ``KL_ESTIMATORS``,
``LOSS_AGGREGATIONS``); each function's docstring gives its formula and source.
"""

from verirl.algos.advantages import (
    ADVANTAGE_ESTIMATORS,
    gae_advantages,
    group_has_signal,
    grpo_advantages,
    kl_shaped_rewards,
    last_token_rewards,
    masked_whiten,
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
from verirl.algos.reference import adapters_disabled, ema_update, frozen_copy

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "KL_ESTIMATORS",
    "LOSS_AGGREGATIONS",
    "adapters_disabled",
    "aggregate_loss",
    "clipped_policy_loss",
    "ema_update",
    "entropy_from_logits",
    "frozen_copy",
    "gae_advantages",
    "group_has_signal",
    "grpo_advantages",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "kl_penalty",
    "kl_shaped_rewards",
    "last_token_rewards",
    "masked_mean",
    "masked_whiten",
    "sft_loss",
    "token_logprobs",
    "truncated_is_weights",
    "value_loss",
]
