"""The phases of one RL step, each a named function the loop (``loop._train``) calls in
order: collect (``collect.py``) → π_old/π_ref (``behaviour_logprobs``) → score
(``rollout_of``) → advantages (``scoring.with_advantages``) → update (``optimize``) → sync →
log (``step_metrics``) → checkpoint. ``Run`` is everything ``loop.prepare`` built.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from verirl.envs.base import Environment
from verirl.rollout import RolloutEngine, SamplingParams
from verirl.rollout.base import logprob_temperature
from verirl.train import distributed as dist
from verirl.train.batch import (
    Rollout,
    completion_lengths,
    rollout_logprobs,
    truncated_rows,
)
from verirl.train.collect import Collected, Turns, turns_of
from verirl.train.config import TrainConfig
from verirl.train.model import Batch, Reference, ValueHead
from verirl.train.online_dpo import online_dpo_update
from verirl.train.scoring import EPISODE_METRICS, episode_stats, reward_stats
from verirl.train.update import (
    fill_missing_grads,
    pad_rows,
    policy_update,
    rows_to_train,
    sequence_logprobs,
)


@dataclass
class Run:
    """Everything ``loop.prepare`` built for a run: the phases read it, none replaces it."""

    cfg: TrainConfig
    run_dir: Path
    model: Any
    tok: Any
    env: Environment
    rows: Any
    engine: RolloutEngine
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    ref: Reference | None
    value_head: ValueHead | None
    ctx: dist.DistContext
    device: str
    policy: Any  # `model` as trained: wrapped in DDP when distributed, else `model` itself
    critic: Any  # `value_head`, likewise
    start_step: int = 0
    forward: str = "transformers"  # ``resolve_forward``: π_old, π_ref, π_θ and hf decoding


@dataclass(frozen=True)
class StepSettings:
    """What every step of a run shares, derived once from the config."""

    sampling: SamplingParams
    tau: float  # every logprob is log softmax(z / tau)
    batch_size: int  # this rank's sequences per step
    micro: int  # sequences per forward
    mine: range  # this rank's prompts of each step
    turns: Turns  # single- or multi-turn collection, the token budget


def step_settings(run: Run) -> StepSettings:
    """The run's ``StepSettings`` (a ConfigError from ``turns_of`` was raised in prepare)."""
    cfg, ctx = run.cfg, run.ctx
    r, a = cfg.rollout, cfg.algo
    batch_size = a.batch_size // ctx.world_size
    return StepSettings(
        sampling=SamplingParams(r.max_new_tokens, r.temperature, r.top_p, r.top_k, tuple(r.stop)),
        tau=logprob_temperature(r.temperature),
        batch_size=batch_size,
        micro=cfg.train.micro_batch_size or batch_size,
        mine=dist.shard_groups(a.batch_size // a.group_size, ctx),
        turns=turns_of(cfg, run.env),
    )


def _autocast(run: Run) -> Any:
    device = "cpu" if run.device == "cpu" else "cuda"
    return torch.autocast(device, torch.bfloat16, enabled=run.cfg.model.dtype == "bfloat16")


def behaviour_logprobs(
    run: Run, batch: Batch, s: StepSettings
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(log π_old, V_old, log π_ref) [B, T] of the sampled tokens. π_old only when the batch is
    trained more than once or a critic needs its values (else the objective reuses log π_θ
    detached); π_ref only with a KL term."""
    old_logp = old_values = ref_logp = None
    with _autocast(run):
        if run.cfg.algo.epochs > 1 or run.value_head is not None:
            old_logp, old_values = sequence_logprobs(run.model, batch, s.micro, run.value_head,
                                                     s.tau, run.forward)  # fmt: skip
        if run.ref is not None:
            ref_model, ref_ctx = run.ref.context(run.model)
            with ref_ctx:
                ref_logp, _ = sequence_logprobs(ref_model, batch, s.micro, None, s.tau,
                                                run.forward)  # fmt: skip
    return old_logp, old_values, ref_logp


def rollout_of(
    run: Run,
    batch: Batch,
    got: Collected,
    behaviour: tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None],
    s: StepSettings,
) -> Rollout:
    """The batch with its scores (waiting for background scoring), the behaviour logprobs
    (``behaviour_logprobs``) and the episode metrics of multi-turn batches."""
    a = run.cfg.algo
    old_logp, old_values, ref_logp = behaviour
    scores = reward_stats(got.results.result(), (len(got.rows), a.group_size))
    tis = rollout_logprobs(got.groups, batch) if a.tis_cap is not None else None
    return Rollout(batch, scores["rewards"], scores["valid"], old_logp, ref_logp, old_values,
                   stats={**scores["stats"], **episode_stats(got.groups)}, rollout_logp=tis,
                   temperature=s.tau, truncated=truncated_rows(got.groups, run.device),
                   lengths=completion_lengths(got.groups, run.device))  # fmt: skip


@dataclass
class UpdateResult:
    metrics: dict[str, float]  # the last epoch's losses, entropy, … (``policy_update``)
    grad_norm: float
    live: torch.Tensor | None  # rows with a non-zero gradient (``rows_to_train``)
    todo: torch.Tensor | None  # the rows run: `live`, topped up to the busiest rank's count


def optimize(run: Run, ro: Rollout, s: StepSettings) -> UpdateResult:
    """`epochs` optimizer steps over the batch. The loss normalisers are the global batch's
    (tokens, sequences) / W, so DDP's gradient mean is the global batch's gradient."""
    a, ctx = run.cfg.algo, run.ctx
    mask = ro.batch.mask
    norms = (dist.loss_normalizer(mask.sum(), ctx),
             dist.loss_normalizer((mask.sum(-1) > 0).sum(), ctx))  # fmt: skip
    # all groups filtered or failed everywhere: nothing to learn, no optimizer step
    learn = bool(dist.all_reduce_max(float(mask.sum() > 0), ctx))
    # rows with a non-zero gradient; every rank runs as many as the busiest one
    live = rows_to_train(ro, a, run.critic) if a.skip_zero_grad_rows else None
    todo = live
    if live is not None and ctx.world_size > 1:
        todo = pad_rows(live, int(dist.all_reduce_max(len(live), ctx)), s.batch_size)
    trained = [m for m in (run.policy, run.critic) if m is not None]

    def no_sync(accumulating: bool) -> Any:
        return dist.no_sync_if(accumulating, *trained)

    upd: dict[str, float] = {}
    grad_norm = 0.0
    for _ in range(a.epochs if learn else 0):
        run.opt.zero_grad(set_to_none=True)
        with _autocast(run):
            if a.name == "online_dpo":  # each group's best vs worst, vs π_ref
                upd = online_dpo_update(run.policy, ro.batch, ro.ref_logp, ro.rewards, ro.valid,
                                        a.beta, a.dpo_loss, s.micro, s.tau, run.forward)  # fmt: skip
                if not upd["dpo/pairs"]:  # no group had a reward difference
                    break
            else:
                upd = policy_update(run.policy, ro, a, s.micro, s.turns.budget, run.critic,
                                    norms, no_sync, todo, run.forward)  # fmt: skip
        params = [p for g in run.opt.param_groups for p in g["params"]]
        fill_missing_grads(params)
        grad_norm = dist.clip_grad_norm(params, run.cfg.train.max_grad_norm)
        run.opt.step()
        run.sched.step()
        if run.ref is not None:
            run.ref.after_step(run.model)
    return UpdateResult(upd, grad_norm, live, todo)


def step_metrics(
    run: Run,
    ro: Rollout,
    got: Collected,
    upd: UpdateResult,
    seconds: float,
    sync_s: float,
    s: StepSettings,
) -> dict[str, Any]:
    """The step's metrics row, the same on every rank (reduced over ranks)."""
    n_gen = sum(len(c.token_ids) for g in got.groups for c in g)
    stats = dict(ro.stats)
    if upd.live is not None:
        stats["rows_trained"] = float(len(upd.live))
    row: dict[str, Any] = {**stats, **upd.metrics, "grad_norm": upd.grad_norm,
                           "lr": run.sched.get_last_lr()[0], "response_length": n_gen / s.batch_size,
                           "step_seconds": seconds, "gen_seconds": got.seconds,
                           "sync_seconds": sync_s, "tokens_per_s": n_gen / seconds}  # fmt: skip
    if run.ctx.world_size > 1:
        row = dist.all_reduce_metrics(row, run.ctx, _metric_counts(ro, upd.todo))
    return row


def _metric_counts(ro: Rollout, rows: torch.Tensor | None) -> dict[str, float]:
    """Weights of the per-sample means in the cross-rank reduction: the reward metrics average
    over scored (valid) samples, which ranks may hold different numbers of; the episode
    metrics over episodes; entropy and the TIS weight over the tokens of the rows each rank
    trained on."""
    valid = float(ro.valid.sum())
    counts = {
        k: valid for k in ro.stats if k in ("reward_mean", "pass_rate") or k.startswith("reward/")
    }
    counts |= {k: float(ro.valid.numel()) for k in EPISODE_METRICS}
    tokens = float(ro.batch.mask.sum() if rows is None else ro.batch.mask[rows].sum())
    return counts | {"entropy": tokens, "tis_weight": tokens}


def signal_rows(ro: Rollout, ctx: dist.DistContext) -> int:
    """Rows of the global batch whose reward moves the policy (a non-zero advantage)."""
    adv = ro.adv if ro.adv is not None else torch.zeros_like(ro.batch.mask)
    n = int((adv * ro.batch.mask).ne(0).any(-1).sum())
    return int(dist.all_reduce_sum(float(n), ctx)) if ctx.world_size > 1 else n
