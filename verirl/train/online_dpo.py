"""Online DPO by verifiable reward, the update ``verirl train`` runs for ``algo.name: online_dpo``.

Each step the rollout engine samples G completions per prompt from the current policy (as for
GRPO); the verifier scores them; in each group the best-scored completion is chosen and the
worst rejected (``best_worst_pairs``; a group whose rewards are all equal has no pair and is
skipped and counted). The loss is DPO's on those pairs against π_ref (``algo.reference``), and
the engine gets the new weights after every step, so the pairs always come from the policy
being trained: on-policy DPO (Guo et al. 2024, "Direct Language Model Alignment from Online AI
Feedback", arXiv:2402.04792; TRL's OnlineDPOTrainer), with a verifier as the judge.

Log-probabilities are log softmax(z / T) at the sampling temperature, like every other log-prob
of the trainer (π_ref's come from the loop's reference pass over the same batch).
"""

from __future__ import annotations

from typing import Any

import torch

from verirl.algos.preference import best_worst_pairs, dpo_metrics, preference_loss
from verirl.train.model import Batch, sequence_logps


def pair_rows(
    rewards: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Rows of the group-major batch (row = p·G + g) that form pairs: (chosen [N], rejected
    [N], stats with ``dpo/pairs`` and ``dpo/groups_skipped``). rewards, valid: [P, G].

    >>> c, r, s = pair_rows(torch.tensor([[0.0, 1.0], [1.0, 1.0]]), torch.ones(2, 2))
    >>> c.tolist(), r.tolist(), s
    ([1], [0], {'dpo/pairs': 1.0, 'dpo/groups_skipped': 1.0})
    """
    p, g = rewards.shape
    best, worst, has_pair = best_worst_pairs(rewards, valid)
    base = torch.arange(p, device=rewards.device) * g
    chosen, rejected = (base + best)[has_pair], (base + worst)[has_pair]
    n = float(has_pair.sum())
    return chosen, rejected, {"dpo/pairs": n, "dpo/groups_skipped": float(p) - n}


def online_dpo_update(
    policy: Any,
    batch: Batch,
    ref_logp: torch.Tensor | None,
    rewards: torch.Tensor,
    valid: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    micro: int | None = None,
    temperature: float = 1.0,
    forward: str = "auto",
) -> dict[str, float]:
    """Backward of the mean DPO loss over this batch's best-vs-worst pairs; returns metrics
    (``loss``, TRL's ``rewards/*``, ``dpo/pairs``, ``dpo/groups_skipped``); the caller steps the
    optimizer, and skips the step when ``dpo/pairs`` is 0 (nothing was backpropagated).

    batch: the step's B = P·G sequences, group-major; ref_logp: [B, T] per-token log π_ref
    over ``batch.targets``; rewards, valid: [P, G]. A row with no token left in the loss mask
    (``algo.mask_truncated``) pairs with nothing. `micro`: sequences per forward (two per
    pair; ``train.micro_batch_size``), None: all pairs at once.
    """
    if ref_logp is None:
        raise ValueError("online DPO needs the reference's log-probs (algo.beta > 0)")
    in_loss = (batch.mask.sum(-1) > 0).view_as(valid)
    chosen, rejected, stats = pair_rows(rewards, valid * in_loss)
    n = len(chosen)
    if n == 0:
        return stats
    ref_seq = (ref_logp * batch.mask).sum(-1)  # [B]
    per = max(1, micro // 2) if micro else n  # pairs per forward
    loss_total = 0.0
    parts: list[tuple[torch.Tensor, torch.Tensor]] = []
    for s in range(0, n, per):
        rows = torch.cat([chosen[s : s + per], rejected[s : s + per]])  # [2b]
        logps, tokens = sequence_logps(policy, batch.slice(rows), forward, temperature)
        c, r = (logps - ref_seq[rows]).chunk(2)  # [b] sequence log-ratios
        nc, nr = tokens.chunk(2)
        loss = preference_loss(loss_type, c, r, beta, 0.0, nc, nr)
        (loss * len(c) / n).backward()  # the mean over all n pairs
        loss_total += float(loss.detach()) * len(c) / n
        parts.append((c.detach(), r.detach()))
    c_all, r_all = (torch.cat(x) for x in zip(*parts, strict=True))
    return {"loss": loss_total, **dpo_metrics(c_all, r_all, beta), **stats}
