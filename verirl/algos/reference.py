"""The reference policy π_ref of the KL term, three ways (seed 003, Q25):

- ``frozen_copy(policy)``: a frozen copy of the initial policy (standard, stable);
- ``adapters_disabled(policy)``: with LoRA, the base model *is* the initial policy, so running
  the policy with its adapters switched off gives π_ref for free (no second copy in memory);
- ``ema_update(ref, policy, decay)`` after each optimizer step: an exponential moving average
  of the policy, so the KL anchor drifts slowly instead of pinning the policy to its start.
"""

from __future__ import annotations

import copy
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn


def frozen_copy(policy: nn.Module) -> nn.Module:
    """A deep copy of ``policy`` in eval mode with ``requires_grad=False`` on every parameter."""
    ref = copy.deepcopy(policy).eval()
    ref.requires_grad_(False)
    return ref


def adapters_disabled(policy: Any) -> AbstractContextManager[Any]:
    """Context in which a PEFT (LoRA) ``policy`` computes the base model's outputs.

    Raises TypeError when the model has no adapters to disable (use ``frozen_copy`` then).
    """
    disable = getattr(policy, "disable_adapter", None)
    if disable is None:
        raise TypeError(
            f"{type(policy).__name__} has no LoRA adapters to disable; use a frozen copy "
            "or an EMA reference instead"
        )
    ctx: AbstractContextManager[Any] = disable()
    return ctx


@torch.no_grad()
def ema_update(
    ref_model: nn.Module, policy_model: nn.Module, decay: float, *, only_trainable: bool = False
) -> None:
    """In place, without grad: θ_ref ← d·θ_ref + (1 − d)·θ_policy for every parameter.

    Parameters are matched by name (a mismatch is a ValueError, never a silent zip); the policy's
    values are cast to the reference's dtype/device, so a bf16 reference may track an fp32
    policy. d = 1 keeps the reference frozen, d = 0 copies the policy. Buffers are not averaged.
    ``only_trainable=True`` skips parameters the policy does not train (a LoRA model's frozen
    base): when the reference started as a copy of the policy they are equal already, and
    averaging them would cost a pass over every base weight per step.

    >>> ref, pol = nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False)
    >>> _ = ref.weight.data.fill_(1.0), pol.weight.data.fill_(3.0)
    >>> ema_update(ref, pol, decay=0.75)
    >>> ref.weight.item()  # 0.75 * 1 + 0.25 * 3
    1.5
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
    ref_params = dict(ref_model.named_parameters())
    pol_params = dict(policy_model.named_parameters())
    if ref_params.keys() != pol_params.keys():
        missing = sorted(ref_params.keys() ^ pol_params.keys())[:5]
        raise ValueError(f"reference and policy parameters differ, e.g. {missing}")
    for name, ref in ref_params.items():
        if only_trainable and not pol_params[name].requires_grad:
            continue
        src = pol_params[name].detach().to(device=ref.device, dtype=ref.dtype)
        if src.shape != ref.shape:
            raise ValueError(
                f"parameter {name}: reference {tuple(ref.shape)} vs policy {tuple(src.shape)}"
            )
        # lerp: ref + (1 − d)(src − ref) = d·ref + (1 − d)·src, one fused in-place op.
        ref.lerp_(src, 1.0 - decay)
