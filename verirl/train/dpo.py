"""``verirl dpo``: direct preference optimisation on (prompt, chosen, rejected) rows.

Each step takes ``train.batch_size`` pairs, runs the policy and the reference π_ref over both
completions of each pair (prompt tokens masked, as in SFT), and minimises the preference loss
of ``verirl.algos.preference`` on the sequence log-ratios log π_θ(y|x) − log π_ref(y|x).
π_ref is a frozen copy of the starting model, or the same model with its LoRA adapters off.

Bad input (a missing file, row or field, a completion of the wrong type, a pair longer than the
model's context) is a DataError naming file, row and field, raised before the run directory
exists. The run directory, metrics.jsonl, checkpoints and ``--resume`` are ``pairwise``'s,
shared with ``verirl rm``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from verirl.algos.preference import dpo_metrics, preference_loss
from verirl.rollout.base import end_token_ids
from verirl.train import checkpoint as ckpt
from verirl.train.config import check_device
from verirl.train.dpo_config import DpoAlgo, DpoConfig
from verirl.train.model import Reference, load_policy, resolve_forward, sequence_logps
from verirl.train.pairwise import Pair, load_pairs, pack_pairs, pairs_command, train_pairs
from verirl.train.run import make_run_dir

DPO_CURVES = ("loss", "rewards/margins", "rewards/accuracies", "rewards/chosen")


def dpo_update(
    model: Any,
    ref: Reference,
    pairs: list[Pair],
    algo: DpoAlgo,
    micro: int,
    pad: int,
    device: str,
    forward: str = "auto",
) -> dict[str, float]:
    """Backward of the mean preference loss over `pairs`, `micro` pairs per forward; returns
    the step's metrics (loss and TRL's rewards/*, logps/*). The caller steps the optimizer."""
    n = len(pairs)
    chosen_tokens = sum(len(p.chosen) for p in pairs)  # the SFT term's token-mean denominator
    loss_total = 0.0
    parts: list[tuple[torch.Tensor, ...]] = []
    for s in range(0, n, micro):
        chunk = pairs[s : s + micro]
        batch = pack_pairs(chunk, pad, device)
        logps, tokens = sequence_logps(model, batch, forward)  # [2b]
        ref_model, ref_ctx = ref.context(model)
        with torch.no_grad(), ref_ctx:
            ref_logps, _ = sequence_logps(ref_model, batch, forward)
        chosen, rejected = (logps - ref_logps).chunk(2)  # [b] each
        n_chosen, n_rejected = tokens.chunk(2)
        loss = preference_loss(algo.loss_type, chosen, rejected, algo.beta,
                               algo.label_smoothing, n_chosen, n_rejected)  # fmt: skip
        loss = loss * len(chunk) / n  # the mean over all n pairs
        if algo.sft_weight:  # α · token-mean NLL of every chosen token of the step
            loss = loss - algo.sft_weight * logps.chunk(2)[0].sum() / chosen_tokens
        loss.backward()
        loss_total += float(loss.detach())
        parts.append((chosen.detach(), rejected.detach(), *logps.detach().chunk(2)))
    chosen, rejected, logp_c, logp_r = (torch.cat(x) for x in zip(*parts, strict=True))
    return {"loss": loss_total, **dpo_metrics(chosen, rejected, algo.beta),
            "logps/chosen": float(logp_c.mean()), "logps/rejected": float(logp_r.mean())}  # fmt: skip


def disable_dropout(model: Any) -> None:
    """p = 0 in every dropout layer: π_θ and π_ref must score a pair with the same function,
    or the log-ratio is noise at step 0 (TRL's ``disable_dropout=True`` default)."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


def dpo(
    cfg: DpoConfig, overwrite: bool = False, unique: bool = False, resume_dir: Path | None = None
) -> Path:
    """Train and save ``<run>/final``; returns the run directory (chosen as ``verirl train``
    chooses its own), or continues `resume_dir` from its last checkpoint."""
    t = cfg.train
    check_device(t.device)
    if t.threads:
        torch.set_num_threads(t.threads)
    run_dir = resume_dir or make_run_dir(cfg, overwrite, unique)
    ckpt.seed_everything(t.seed)
    model, tok = load_policy(cfg.model, t.device)
    disable_dropout(model)
    end = end_token_ids(tok, getattr(model, "generation_config", None))
    context = getattr(model.config, "max_position_embeddings", None)
    # validated before the run dir exists
    pairs = load_pairs(cfg.data, cfg.model.chat_template, tok, end, context)
    ref = Reference(cfg.algo.reference, model)  # the starting model, before any checkpoint
    micro = t.micro_batch_size or t.batch_size
    forward = resolve_forward(cfg.model.forward, model)

    def step(batch: list[Pair]) -> dict[str, float]:
        return dpo_update(model, ref, batch, cfg.algo, micro, tok.pad_token_id, t.device, forward)

    return train_pairs(cfg, "dpo", run_dir, resume_dir is not None, model, tok, pairs, step,
                       DPO_CURVES)  # fmt: skip


def dpo_command(
    config: str | None, overrides: list[str], resume: str | None = None, overwrite: bool = False
) -> int:
    """``verirl dpo CONFIG [key=value]`` or ``verirl dpo --resume RUN_DIR [key=value]``."""
    return pairs_command(DpoConfig, dpo, "dpo", config, overrides, resume, overwrite)
