"""Reward shaping by completion length, applied to each sequence's score before advantages.

Both functions take ``lengths`` [B] (completion tokens, the end token included) and return a
[B] float32 term to *add* to the environment's reward; neither reads the completion's text.
Masking truncated completions out of the loss (DAPO's overlong filtering) is the mask's job:
see ``verirl.train.update.with_advantages``.

Sources: soft overlong punishment — Yu et al. 2025, "DAPO" (arXiv:2503.14476), eq. 13 (TRL's
``get_soft_overlong_punishment`` is the same); length cost — a linear per-token price, the
simplest form of the length penalties surveyed by Kimi k1.5 (arXiv:2501.12599, §2.3.3).
"""

from __future__ import annotations

import torch


def soft_overlong_penalty(lengths: torch.Tensor, max_len: int, cache: int) -> torch.Tensor:
    """DAPO soft overlong punishment: a ramp from 0 to −1 over the last ``cache`` tokens.

    R(|y|) = 0                              |y| ≤ L_max − L_cache
    R(|y|) = ((L_max − L_cache) − |y|) / L_cache      L_max − L_cache < |y| ≤ L_max
    R(|y|) = −1                             |y| > L_max

    L_max = ``max_len`` (the generation budget), L_cache = ``cache``; a completion that runs into
    the budget is pushed to finish earlier without being zeroed like a hard cut. ``cache`` = 0
    turns the ramp into a step at L_max.

    >>> soft_overlong_penalty(torch.tensor([70, 90, 100, 101]), 100, 20).tolist()
    [0.0, -0.5, -1.0, -1.0]
    """
    if cache < 0 or cache > max_len:
        raise ValueError(f"overlong cache must be in [0, max_len={max_len}], got {cache}")
    n = lengths.float()  # [B]
    start = float(max_len - cache)
    ramp = (start - n) / max(cache, 1)  # [B] ≤ 0 past the ramp's start
    out = torch.where(n <= start, 0.0, ramp)
    return torch.where(n > max_len, -1.0, out)


def length_penalty(lengths: torch.Tensor, max_len: int, coef: float) -> torch.Tensor:
    """A linear length cost: R(|y|) = −coef · |y| / L_max, so coef is the price of a full-length
    completion in reward units; small values (0.01–0.1 for 0/1 rewards) break ties between
    correct answers in favour of the shorter one without outweighing correctness.

    >>> length_penalty(torch.tensor([0, 50, 100]), 100, 0.5).tolist()
    [-0.0, -0.25, -0.5]
    """
    if max_len <= 0:
        raise ValueError(f"max_len must be > 0, got {max_len}")
    return -coef * lengths.float() / max_len
