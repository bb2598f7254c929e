"""Building the training batch from sampled groups: which rows a step takes, the padded
tensors, the loss mask, and the engine's logprobs laid out like the targets.

The loss mask is 1 only at the model's own tokens: a single-turn completion is all the model's;
a multi-turn trajectory (``verirl.rollout.episodes``) carries ``Completion.mask``, 0 at the
environment's tokens (tool output, feedback), which stay in the sequence as context but get no
loss, no advantage, no KL and no entropy term.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch

from verirl.envs.base import Row
from verirl.rollout.base import Completion
from verirl.train.model import Batch, pack


def batch_rows(rows: Any, step: int, n: int, seed: int) -> list[Row]:
    """Rows of generation batch `step`: consecutive slices of a per-epoch shuffle, a pure
    function of (seed, step) so a resumed run sees exactly the data the killed one would."""
    out = []
    for k in range(step * n, step * n + n):
        epoch, pos = divmod(k, len(rows))
        out.append(rows[_epoch_order(len(rows), seed, epoch)[pos]])
    return out


@lru_cache(maxsize=4)
def _epoch_order(size: int, seed: int, epoch: int) -> tuple[int, ...]:
    order = list(range(size))
    random.Random(seed * 100_003 + epoch).shuffle(order)
    return tuple(order)


@dataclass
class Rollout:
    """One generation batch as tensors: B = prompts x group sequences."""

    batch: Batch
    rewards: torch.Tensor  # [P, G]
    valid: torch.Tensor  # [P, G] 0 for infra errors (masked out of the loss, counted)
    old_logp: torch.Tensor | None = None  # [B, T] log π_old; None: reuse logp.detach()
    ref_logp: torch.Tensor | None = None  # [B, T]
    old_values: torch.Tensor | None = None  # [B, T] PPO critic at sampling time
    adv: torch.Tensor | None = None  # [B, T]
    returns: torch.Tensor | None = None  # [B, T] PPO
    stats: dict[str, float] = field(default_factory=dict)
    rollout_logp: torch.Tensor | None = None  # [B, T] the engine's log π at sampling time
    # T of every logprob of this batch (π_old, π_ref, π_θ, the engine's): log softmax(z / T),
    # ``logprob_temperature`` of the sampling temperature; the entropy metric is softmax(z/T)'s.
    temperature: float = 1.0
    truncated: torch.Tensor | None = None  # [B] bool: cut by the budget (``truncated_rows``)
    # [B] tokens after the prompt (model + environment) for length shaping; None: the mask's
    lengths: torch.Tensor | None = None


def truncated_rows(groups: list[list[Completion]], device: str) -> torch.Tensor:
    """[B] True where a completion ran out of budget rather than ending: finish_reason
    "length" (not an end token or stop string), or, for a trajectory, an episode cut by the
    turn limit or the token budget. DAPO's overlong filtering drops these from the loss."""
    flat = [_truncated(c) for g in groups for c in g]
    return torch.tensor(flat, dtype=torch.bool, device=device)


def _truncated(c: Completion) -> bool:
    episode = c.extra.get("episode")
    return bool(episode.truncated) if episode is not None else c.finish_reason == "length"


def completion_lengths(groups: list[list[Completion]], device: str) -> torch.Tensor:
    """[B] tokens after each prompt, the environment's included (the budget counts them)."""
    return torch.tensor([len(c.token_ids) for g in groups for c in g], device=device)


def completion_positions(batch: Batch) -> torch.Tensor:
    """[B, T] bool: the target columns holding a token after the prompt (model's or env's).
    Target t is token t+1, so row b's completion covers columns prompt_len−1 … length−2."""
    if batch.prompt_lens is None:
        return batch.mask > 0
    col = torch.arange(batch.targets.shape[1], device=batch.targets.device)[None] + 1  # [1, T]
    ends = batch.attention_mask.sum(-1, keepdim=True)  # [B, 1]
    return (col >= batch.prompt_lens[:, None]) & (col < ends)


def to_batch(groups: list[list[Completion]], pad: int, device: str) -> Batch:
    """Prompt + completion rows, right-padded; ``mask`` is the loss mask: the completion's
    tokens × ``Completion.mask`` (1 at the model's tokens, 0 at the environment's)."""
    flat = [c for g in groups for c in g]
    batch = pack([c.prompt_token_ids for c in flat], [c.token_ids for c in flat], pad, device)
    if all(c.mask is None for c in flat):
        return batch  # every token is the model's
    for b, c in enumerate(flat):
        if c.mask is not None and len(c.mask) != len(c.token_ids):
            raise ValueError(f"completion {b}: a mask of {len(c.mask)} for {len(c.token_ids)} "
                             "tokens")  # fmt: skip
    own = [m for c in flat for m in (c.mask if c.mask is not None else [1] * len(c.token_ids))]
    mask = torch.zeros_like(batch.mask)
    mask[completion_positions(batch)] = torch.tensor(own, dtype=mask.dtype, device=mask.device)
    return Batch(batch.input_ids, batch.attention_mask, batch.targets, mask, batch.prompt_lens)


def rollout_logprobs(groups: list[list[Completion]], batch: Batch) -> torch.Tensor:
    """The rollout engine's per-token logprobs laid out like ``batch.targets`` [B, T] (0 off the
    completion): each row's completion columns hold its tokens' logprobs in order (0.0 at the
    environment's tokens of a trajectory, which the loss mask leaves out)."""
    flat = [c for g in groups for c in g]
    out = torch.zeros_like(batch.mask, dtype=torch.float32)
    for b, c in enumerate(flat):
        if len(c.logprobs) != len(c.token_ids):
            raise ValueError(f"completion {b}: {len(c.logprobs)} logprobs for "
                             f"{len(c.token_ids)} tokens")  # fmt: skip
    values = torch.tensor([lp for c in flat for lp in c.logprobs], dtype=torch.float32)
    out[completion_positions(batch)] = values.to(out.device)
    return out
