"""Run helpers every trainer shares (RL, SFT, DPO, RM, curation): the environment and its
checked rows, the run directory, the lr schedule, the context a prompt must fit.

Nothing here runs a model; ``verirl.train.loop`` (RL) and ``verirl.train.sft``/``dpo``/``rm``
import it, so none imports another trainer's loop.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from verirl.envs.base import Environment
from verirl.envs.registry import make_env
from verirl.errors import ConfigError, DataError, UserError
from verirl.prompts import render_prompt
from verirl.rundir import claim_run_dir
from verirl.train import checkpoint as ckpt
from verirl.train import distributed as dist


def lr_lambda(schedule: str, warmup: int, total: int) -> Any:
    """Multiplier of the peak lr at optimizer step s: linear warm-up, then constant/linear/cos."""

    def f(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        frac = (s - warmup) / max(1, total - warmup)
        if schedule == "linear":
            return max(0.0, 1.0 - frac)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(frac, 1.0)))
        return 1.0

    return f


def load_env(cfg: Any) -> tuple[Environment, Any]:
    """The environment and its split's rows, with every row checked for the env's fields.
    A missing data file names the ``env.options`` key that points at it."""
    try:
        env = make_env(cfg.env.name, **cfg.env.options)
        rows = env.rows(cfg.env.split)
    except (ValueError, KeyError) as e:
        raise ConfigError(f"env.split: {e}") from None
    except (DataError, FileNotFoundError) as e:
        raise ConfigError(f"{_option_key(cfg.env.options, str(e))}: {e}") from None
    if not rows:
        raise ConfigError(f"env {cfg.env.name!r} split {cfg.env.split!r} has no rows")
    env.validate_rows(rows, f"env {cfg.env.name!r} split {cfg.env.split!r}")
    return env, rows


def _option_key(options: dict[str, Any], message: str) -> str:
    """The ``env.options.<key>`` whose value a message mentions (else ``env.options``)."""
    for key, value in options.items():
        if isinstance(value, str) and value and value in message:
            return f"env.options.{key}"
    return "env.options"


def make_run_dir(cfg: Any, overwrite: bool = False, unique: bool = False) -> Path:
    """The new run's directory ``<run_dir>/<name>`` (see ``verirl.rundir``); not created yet."""
    run_dir = Path(cfg.run_dir) / cfg.name
    resumable = ckpt.latest_checkpoint(run_dir) is not None
    return claim_run_dir(run_dir, overwrite=overwrite, unique=unique, resumable=resumable)


def claim_on_rank0(cfg: Any, ctx: dist.DistContext, overwrite: bool, unique: bool) -> Path:
    """`make_run_dir` decided once, on rank 0, and shared: a timestamped name must be the same
    on every rank, and a refusal must stop every rank."""
    claimed: tuple[str | None, str | None] = (None, None)
    if ctx.is_main:
        try:
            claimed = (str(make_run_dir(cfg, overwrite, unique)), None)
        except UserError as e:
            claimed = (None, str(e))
    if ctx.world_size > 1:
        claimed = dist.broadcast_object(claimed, ctx)
    if claimed[0] is None:
        raise UserError(claimed[1] or "no run directory")
    return Path(claimed[0])


def fits_context(env: Environment, rows: Any, tok: Any, cfg: Any, context: int | None) -> Any:
    """The rows whose prompt plus the tokens a sample may add fit the model's context:
    ``rollout.max_new_tokens``, or for a multi-turn env the trajectory's budget
    (``rollout.max_tokens``, model and environment tokens). The rest are dropped with a count
    (a longer prompt would fail inside either engine). No rows left is a ConfigError naming the
    keys to change."""
    if not context:
        return rows
    from verirl.train.collect import turns_of

    turns = turns_of(cfg, env)
    key = "rollout.max_tokens" if turns.multi_turn else "rollout.max_new_tokens"
    budget = context - turns.budget
    keep = [r for r in rows
            if len(tok(render_prompt(env.prompt(r), tok, cfg.model.chat_template),
                       add_special_tokens=False)["input_ids"]) <= budget]  # fmt: skip
    if not keep:
        raise ConfigError(
            f"every prompt of env {cfg.env.name!r} split {cfg.env.split!r} is longer than the "
            f"model's context ({context} tokens) minus {key}={turns.budget}; lower {key} or "
            "use a model with a longer context"
        )
    if len(keep) < len(rows):
        print(
            f"warning: skipped {len(rows) - len(keep)} of {len(rows)} rows whose prompt + "
            f"{key}={turns.budget} exceeds the model's context ({context} tokens)",
            flush=True,
        )
    return keep


def model_context(model: Any, cfg: Any) -> int | None:
    """Tokens the rollout engine can hold: ``rollout.vllm.max_model_len`` when set, else the
    model's ``max_position_embeddings``."""
    vllm_len = cfg.rollout.vllm.get("max_model_len") if cfg.rollout.backend == "vllm" else None
    return vllm_len or getattr(getattr(model, "config", None), "max_position_embeddings", None)


def last_checkpoint(run_dir: Path) -> Path:
    """The checkpoint a resume starts from; none names the one flag that starts the run over."""
    last = ckpt.latest_checkpoint(run_dir)
    if last is None:
        raise UserError(
            f"{run_dir} has no checkpoint to resume from (it stopped before its first save); "
            f"start it over with: verirl train {run_dir / 'config.yaml'} --overwrite"
        )
    return last
