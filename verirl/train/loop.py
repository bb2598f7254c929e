"""``verirl train``: the RL loop. collect → π_old/π_ref → score → advantages → update → sync →
log → checkpoint, in one function that reads top to bottom (``_train``); each phase is a named
function (``collect.py``, ``phases.py``, ``scoring.py``, ``update.py``), the pieces are built
in ``prepare``. Multi-turn environments collect whole trajectories (``run_episodes``) and train
on the model's tokens only; the rest of the step is the same.

Everything that can be wrong with the input (config, model path, environment, dataset columns)
is checked in ``prepare`` before the run directory is created, so bad input leaves nothing.

Under ``torchrun`` the same function runs on every rank (``distributed.py``): each rank
generates and scores whole groups of its share of the step's prompts, the policy is wrapped in
DDP (gradients averaged, all-reduced only on the last micro-batch), loss normalisers and PPO
whitening use global counts, metrics are reduced over ranks, and rank 0 alone writes.
"""

from __future__ import annotations

import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import torch

from verirl.config import write_resolved_config
from verirl.errors import ConfigError, Interrupted, UserError
from verirl.progress import Progress
from verirl.rollout import make_engine
from verirl.rundir import clear_run_dir
from verirl.train import checkpoint as ckpt
from verirl.train import distributed as dist
from verirl.train.batch import to_batch
from verirl.train.collect import collect, samples, turns_of
from verirl.train.config import TrainConfig, check_device
from verirl.train.metrics import TRAIN_CURVES, MetricsLogger, plot_curves
from verirl.train.model import Reference, ValueHead, load_policy, resolve_forward
from verirl.train.phases import (
    Run,
    behaviour_logprobs,
    optimize,
    rollout_of,
    signal_rows,
    step_metrics,
    step_settings,
)
from verirl.train.run import (
    claim_on_rank0,
    fits_context,
    last_checkpoint,
    load_env,
    lr_lambda,
    model_context,
)
from verirl.train.scoring import with_advantages

# Steps in a row with no trainable row (every group's rewards equal) before the loop warns.
NO_SIGNAL_STEPS = 5


def init_distributed(cfg: TrainConfig) -> tuple[dist.DistContext, str]:
    """This process's place in a torchrun job (rank 0 of 1 otherwise) and its torch device."""
    backend = cfg.distributed.backend
    if backend == "auto":
        backend = "nccl" if cfg.train.device.startswith("cuda") else "gloo"
    ctx = dist.init_distributed(backend, cfg.distributed.timeout_s)
    if ctx.world_size > 1:
        prompts = cfg.algo.batch_size // cfg.algo.group_size
        dist.shard_groups(prompts, ctx)  # raises unless the prompts split evenly over ranks
    return ctx, (ctx.device if ctx.backend == "nccl" else cfg.train.device)


def prepare(
    cfg: TrainConfig,
    resume_dir: Path | None = None,
    ctx: dist.DistContext | None = None,
    device: str | None = None,
    overwrite: bool = False,
    unique: bool = False,
) -> Run:
    ctx = ctx or dist.DistContext()
    device = device or cfg.train.device
    if cfg.algo.name == "online_dpo" and ctx.world_size > 1:  # a rank without pairs would hang
        raise ConfigError("algo.name 'online_dpo' runs on one process; not under torchrun")
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if resume_dir is not None:
        last_checkpoint(resume_dir)  # before anything is loaded
    run_dir = resume_dir or claim_on_rank0(cfg, ctx, overwrite, unique)
    env, rows = load_env(cfg)
    turns_of(cfg, env)  # rollout.max_turns against the env's, before anything is written
    ckpt.seed_everything(cfg.train.seed)
    model, tok = load_policy(cfg.model, device)
    rows = fits_context(env, rows, tok, cfg, model_context(model, cfg))
    prompts_per_step = cfg.algo.batch_size // cfg.algo.group_size
    if len(rows) < prompts_per_step and ctx.is_main:
        print(
            f"warning: env {cfg.env.name!r} split {cfg.env.split!r} has {len(rows)} rows but a "
            f"step takes {prompts_per_step} prompts (algo.batch_size / algo.group_size): every "
            "step repeats rows; lower algo.batch_size or use more data",
            flush=True,
        )
    forward = resolve_forward(cfg.model.forward, model, distributed=ctx.world_size > 1)
    value_head = None
    if cfg.algo.name == "ppo":
        value_head = ValueHead(model.config.hidden_size).to(device)
    fsdp = cfg.distributed.strategy == "fsdp2"
    ref = None
    if cfg.algo.beta > 0 and fsdp:  # copy the whole model now, then shard it like the policy
        ref = Reference(cfg.algo.reference, model, cfg.algo.ema_decay)
        if ref.model is not None:
            dist.wrap_model(ref.model, ctx, "fsdp2")
    # DDP starts every rank from rank 0's weights (it broadcasts them), before the optimizer
    # and the reference copy are made from them; FSDP2 shards `model` in place.
    policy = dist.wrap_model(model, ctx, cfg.distributed.strategy)
    critic = dist.wrap_model(value_head, ctx, "ddp") if value_head is not None else None
    if cfg.algo.beta > 0 and not fsdp:
        ref = Reference(cfg.algo.reference, model, cfg.algo.ema_decay)
    params: list[dict[str, Any]] = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    if value_head is not None:
        params.append({"params": list(value_head.parameters()), "lr": cfg.algo.value_lr})
    # fused: one kernel for every parameter (3.3 -> ~0.8 ms a step on the tiny model); FSDP2's
    # sharded DTensor parameters take the per-tensor path.
    opt = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                            fused=not fsdp)  # fmt: skip
    total = cfg.train.steps * cfg.algo.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, [lr_lambda(cfg.train.schedule, cfg.train.warmup_steps, total)] * len(params)
    )
    engine = make_engine(
        cfg.rollout.backend,
        model=model,
        tokenizer=tok,
        model_path=cfg.model.path,
        # The vllm engine loads `model.path` itself; under LoRA that is the base model.
        **(
            {
                "batch_size": cfg.rollout.batch_size,
                "synced": fsdp and ctx.distributed,
                "lean": forward == "lean",
            }
            if cfg.rollout.backend == "hf"
            else _vllm_settings(cfg, ctx, device)
        ),
    )
    run = Run(cfg, run_dir, model, tok, env, rows, engine, opt, sched, ref, value_head, ctx,
              device, policy, critic, forward=forward)  # fmt: skip
    if ctx.world_size > 1:  # ranks must not draw the same completions
        torch.manual_seed(dist.rank_seed(cfg.train.seed, ctx))
    if resume_dir is not None:
        restore(run)
    return run


def _vllm_settings(cfg: TrainConfig, ctx: dist.DistContext, device: str) -> dict[str, Any]:
    """``rollout.vllm`` plus, under torchrun, one colocated engine per rank: on GPUs vLLM's
    external launcher joins torchrun's world (each rank's engine on its own device); on CPU
    each rank runs a plain in-process engine. Ranks seed their engines differently."""
    settings = dict(cfg.rollout.vllm)
    if ctx.world_size == 1:
        return settings
    tp = int(settings.get("tensor_parallel_size", 1))
    if device.startswith("cuda"):
        settings["launch"] = dist.vllm_engine_options(ctx, tp)
    settings["seed"] = dist.rank_seed(int(settings.get("seed", 0)), ctx)
    return settings


def restore(run: Run) -> None:
    last = last_checkpoint(run.run_dir)
    state = ckpt.load_trainer_state(last)
    # Every rank reads the same checkpoint (the run dir must be on a shared filesystem).
    dist.check_world_size((state.get("dist") or {}).get("world_size"), run.ctx.world_size)
    saved, now = state.get("strategy", "ddp"), run.cfg.distributed.strategy
    if saved != now:  # the optimizer state's layout follows the strategy
        raise UserError(
            f"{last}: written with distributed.strategy={saved}; resume with the same"
            f" (distributed.strategy={saved}), or start a new run from its weights"
        )
    if "policy_full" in state:  # FSDP2: full tensors of the trained parameters, resharded
        dist.load_full_state(run.policy, run.opt, state["policy_full"], state["optimizer"],
                             strict=False)  # fmt: skip
    else:
        ckpt.load_weights_into(run.model, last)
        run.opt.load_state_dict(state["optimizer"])
    run.sched.load_state_dict(state["scheduler"])
    if run.value_head is not None:
        run.value_head.load_state_dict(state["value_head"])
    if run.ref is not None and "policy_full" in state:
        if state.get("ref") is not None:
            dist.load_full_state(run.ref.model, None, state["ref"])
    elif run.ref is not None:
        run.ref.load_state_dict(state.get("ref"))
    run.engine.update_weights(run.model)
    if run.ctx.world_size > 1:
        dist.restore_dist_state(state["dist"], run.ctx)  # this rank's own RNG streams
    else:
        ckpt.set_rng_state(state["rng"])
    run.start_step = int(state["step"])
    if run.ctx.is_main:
        print(f"resuming {run.run_dir} from step {run.start_step} ({last})", flush=True)


def save(run: Run, step: int) -> None:
    """Checkpoint `step`: every rank calls it (the RNG states are gathered), rank 0 writes."""
    ctx = run.ctx
    per_rank = dist.dist_state(ctx)
    extra: dict[str, Any] = {"strategy": run.cfg.distributed.strategy}
    full = None
    if run.cfg.distributed.strategy == "fsdp2":  # gather the shards (collectives: all ranks)
        full = dist.full_state_dict(run.policy, ctx)
        trained = {n for n, p in run.policy.named_parameters() if p.requires_grad}
        extra["policy_full"] = {k: v for k, v in (full or {}).items() if k in trained}
        ema = run.ref is not None and run.ref.kind == "ema"
        extra["ref"] = dist.full_state_dict(run.ref.model, ctx) if ema else None  # type: ignore[union-attr]
    opt_state = dist.optimizer_state_dict(run.policy, run.opt, ctx)
    if ctx.is_main:
        state = {
            "optimizer": opt_state,
            "scheduler": run.sched.state_dict(),
            "value_head": run.value_head.state_dict() if run.value_head is not None else None,
            "ref": run.ref.state_dict() if run.ref is not None else None,
            "dist": per_rank,
            **extra,
        }
        ckpt.save_checkpoint(run.run_dir, step, run.model, run.tok, state, full)
    dist.barrier(ctx)


def train(
    cfg: TrainConfig,
    resume_dir: Path | None = None,
    overwrite: bool = False,
    unique: bool = False,
) -> Path:
    """Run the RL loop; returns the run directory. Under torchrun, on every rank.

    A new run's directory follows ``verirl.rundir``: `overwrite` replaces an existing one,
    `unique` moves aside to a timestamped name. SIGINT/SIGTERM stop the run at the next step
    boundary with a checkpoint there, then raise ``Interrupted`` (exit code 130)."""
    check_device(cfg.train.device)
    ctx, device = init_distributed(cfg)
    try:
        return _train(cfg, resume_dir, ctx, device, overwrite, unique)
    finally:
        dist.shutdown(ctx)


class _StopRequest:
    """SIGINT/SIGTERM set a flag the loop reads at each step boundary; a second SIGINT aborts
    at once. Handlers are installed only in the main thread (where Python allows them)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: stopping after this step with a checkpoint "
              "(Ctrl-C again to abort without one)", flush=True)  # fmt: skip

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _train(
    cfg: TrainConfig,
    resume_dir: Path | None,
    ctx: dist.DistContext,
    device: str,
    overwrite: bool = False,
    unique: bool = False,
) -> Path:
    run = prepare(cfg, resume_dir, ctx, device, overwrite, unique)  # raises on bad input
    cfg = open_run_dir(run, resume_dir)
    t = cfg.train
    log = None
    if ctx.is_main:
        log = MetricsLogger(run.run_dir, cfg.log.tensorboard, keep_upto=run.start_step)
    s = step_settings(run)
    pool = ThreadPoolExecutor(max_workers=1)  # scores completions while logprobs are computed
    progress = Progress("train", t.steps, run.start_step, enabled=cfg.log.progress and ctx.is_main)
    stop = _StopRequest()
    stopped_at: int | None = None
    no_signal = 0  # consecutive steps with no trainable row
    try:
        for step in range(run.start_step, t.steps):
            t0 = time.perf_counter()
            # 1. collect: G completions (or trajectories) of each of this rank's prompts;
            # single-turn scoring starts in the background
            got = collect(run.engine, run.env, run.tok, cfg, run.rows, step, s.mine, s.sampling,
                          s.turns, pool)  # fmt: skip
            batch = to_batch(got.groups, run.tok.pad_token_id, run.device)
            # 2. π_old, π_ref (and V) of the sampled tokens, no grad
            behaviour = behaviour_logprobs(run, batch, s)
            # 3. score: rewards [P, G] and which samples count (infra errors do not)
            ro = rollout_of(run, batch, got, behaviour, s)
            # 4. advantages by algo.advantage (a group lives on one rank; batch whitening is
            # over all ranks' tokens) and the loss mask they apply to
            ro = with_advantages(ro, cfg.algo, s.turns.budget,
                                 partial(dist.global_masked_whiten, ctx=ctx))  # fmt: skip
            # 5. loss and optimizer step, `epochs` times over the batch
            upd = optimize(run, ro, s)
            # 6. sync the rollout engine with the new weights
            sync_s = run.engine.update_weights(run.model)
            # 7. log (metrics reduced over ranks; rank 0 writes)
            row = step_metrics(run, ro, got, upd, time.perf_counter() - t0, sync_s, s)
            row = {"step": step + 1, **row}
            if log is not None:
                log.log(row)
                if cfg.log.samples_every and (step + 1) % cfg.log.samples_every == 0:
                    log.samples(step + 1, samples(got, got.results.result(), cfg.log.num_samples))
            progress.update(1, row)
            no_signal = 0 if signal_rows(ro, ctx) else no_signal + 1
            if no_signal == NO_SIGNAL_STEPS and ctx.is_main:
                _warn_no_signal(row)
            # 8. checkpoint (and stop here when SIGINT/SIGTERM asked to)
            halt = stop.signum is not None
            if ctx.world_size > 1:  # every rank stops at the same step
                halt = bool(dist.all_reduce_max(float(halt), ctx))
            if (t.save_every and (step + 1) % t.save_every == 0) or step + 1 == t.steps or halt:
                save(run, step + 1)
            if halt:
                stopped_at = step + 1
                break
    finally:
        stop.restore()
        progress.close()
        pool.shutdown()
        if log is not None:
            log.close()
        run.engine.close()
    if stopped_at is not None:
        raise Interrupted(
            f"stopped at step {stopped_at} of {t.steps}; checkpoint "
            f"{run.run_dir / 'checkpoints' / f'step-{stopped_at}'}; continue with: "
            f"verirl train --resume {run.run_dir}"
        )
    save_final(run)
    return run.run_dir


# ---- the run's setup and teardown around the loop ---------------------------------------------


def open_run_dir(run: Run, resume_dir: Path | None) -> TrainConfig:
    """Create the run directory (rank 0) and write the resolved config; returns the config
    naming the directory the run really has (a timestamped one, maybe)."""
    cfg = run.cfg
    dist.barrier(run.ctx)  # every rank has checked the run dir before rank 0 creates it
    if run.ctx.is_main:
        if resume_dir is None:
            clear_run_dir(run.run_dir)  # claimed with --overwrite (else it is new or empty)
            cfg = cfg.model_copy(update={"run_dir": str(run.run_dir.parent),
                                         "name": run.run_dir.name})  # fmt: skip
        run.run_dir.mkdir(parents=True, exist_ok=True)
        write_resolved_config(cfg, run.run_dir)
        print(f"run dir: {run.run_dir}", flush=True)
    return cfg


def _warn_no_signal(row: dict[str, Any]) -> None:
    print(
        f"warning: {NO_SIGNAL_STEPS} steps in a row with no trainable row: every group's "
        f"rewards were equal (reward_mean {row.get('reward_mean', 0):.3f}), so the policy is not "
        "learning; check the rewards with `verirl score`, warm-start with `verirl sft`, or "
        "raise algo.group_size / rollout.temperature",
        flush=True,
    )


def save_final(run: Run) -> None:
    """The trained model and tokenizer in final/, and the curves (every rank calls: FSDP2
    gathers the shards)."""
    final = run.run_dir / "final"
    if run.ctx.is_main:
        shutil.rmtree(final, ignore_errors=True)
    dist.save_pretrained(run.policy, final, run.ctx)
    if run.ctx.is_main:
        run.tok.save_pretrained(str(final))
        plot_curves(run.run_dir, TRAIN_CURVES, f"{run.run_dir.name}_curves", run.run_dir.name)
    dist.barrier(run.ctx)
