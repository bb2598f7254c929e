"""``verirl sft``: supervised fine-tuning with the prompt masked out of the loss.

L = −Σ_{t ∈ response} log π_θ(o_t | q, o_<t) / |response tokens| (prompt tokens carry no loss).
Targets come from an environment's rows (``data.target_field``, e.g. arithmetic's ``answer``)
or from a JSONL file with prompt/completion columns. Used for warm starts and the demo's base.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import torch

from verirl.algos import sft_loss
from verirl.config import write_resolved_config
from verirl.errors import ConfigError, DataError
from verirl.jsonl import read_jsonl
from verirl.progress import Progress
from verirl.rollout.base import end_token_ids
from verirl.rundir import clear_run_dir
from verirl.train import checkpoint as ckpt
from verirl.train.config import SftConfig, check_device
from verirl.train.metrics import SFT_CURVES, MetricsLogger, plot_curves
from verirl.train.model import forward_logits, load_policy, pack, render_prompt
from verirl.train.run import lr_lambda, make_run_dir


def load_pairs(cfg: SftConfig, tok: object) -> list[tuple[str, str]]:
    """(prompt text, target text) pairs; a missing column raises DataError naming file/row."""
    if cfg.data.path is not None:
        if not Path(cfg.data.path).is_file():
            raise ConfigError(f"data.path: {cfg.data.path}: no such file")
        rows = read_jsonl(cfg.data.path)
        need = (cfg.data.prompt_field, cfg.data.completion_field)
        for i, row in enumerate(rows, 1):
            for f in need:
                if f not in row:
                    raise DataError(f"{cfg.data.path}:{i}: missing field {f!r}")
        return [
            (render_prompt(r[need[0]], tok, cfg.model.chat_template), str(r[need[1]])) for r in rows
        ]
    from verirl.train.run import load_env

    env, rows = load_env(cfg)
    field = cfg.data.target_field
    for i, row in enumerate(rows, 1):
        if field not in row:
            raise DataError(
                f"env {cfg.env.name!r} split {cfg.env.split!r}: row {i}: missing field "
                f"{field!r} (data.target_field)"
            )
    return [
        (render_prompt(env.prompt(r), tok, cfg.model.chat_template), str(r[field])) for r in rows
    ]


def sft(cfg: SftConfig, overwrite: bool = False, unique: bool = False) -> Path:
    """Train and save ``<run>/final`` (model + tokenizer); returns the run directory, chosen
    as ``verirl train`` chooses its own (`overwrite`, `unique`: see ``verirl.rundir``)."""
    t = cfg.train
    check_device(t.device)
    if t.threads:
        torch.set_num_threads(t.threads)
    run_dir = make_run_dir(cfg, overwrite, unique)
    ckpt.seed_everything(t.seed)
    model, tok = load_policy(cfg.model, t.device)
    pairs = load_pairs(cfg, tok)  # validated before the run dir exists
    if not pairs:
        raise DataError("sft: no training rows")
    # Targets end with the first of the end tokens the rollout engines stop on.
    end = end_token_ids(tok, getattr(model, "generation_config", None))[0]
    enc = [
        (tok(p, add_special_tokens=False)["input_ids"],
         tok(c, add_special_tokens=False)["input_ids"] + [end])
        for p, c in pairs
    ]  # fmt: skip
    clear_run_dir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = cfg.model_copy(update={"run_dir": str(run_dir.parent), "name": run_dir.name})
    write_resolved_config(cfg, run_dir)
    print(f"run dir: {run_dir}", flush=True)
    log = MetricsLogger(run_dir, cfg.log.tensorboard)
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=t.lr, weight_decay=t.weight_decay
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(t.schedule, t.warmup_steps, t.steps))
    rng = random.Random(t.seed)
    order: list[int] = []
    model.train()
    progress = Progress("sft", t.steps, enabled=cfg.log.progress)
    try:
        for step in range(t.steps):
            t0 = time.perf_counter()
            while len(order) < t.batch_size:  # a fresh shuffle each epoch
                more = list(range(len(enc)))
                rng.shuffle(more)
                order += more
            idx, order = order[: t.batch_size], order[t.batch_size :]
            batch = pack([enc[i][0] for i in idx], [enc[i][1] for i in idx], tok.pad_token_id,
                         t.device)  # fmt: skip
            logits, _ = forward_logits(model, batch)
            labels = batch.targets.masked_fill(batch.mask == 0, -100)  # prompt and padding
            loss = sft_loss(logits, labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), t.max_grad_norm))
            opt.step()
            sched.step()
            seconds = time.perf_counter() - t0
            log.log({"step": step + 1, "loss": float(loss.detach()), "grad_norm": grad_norm,
                     "lr": sched.get_last_lr()[0], "step_seconds": seconds,
                     "tokens_per_s": float(batch.attention_mask.sum()) / seconds})  # fmt: skip
            progress.update(1, f"loss {float(loss.detach()):.3f}")
    finally:
        progress.close()
        log.close()
    ckpt.save_final(run_dir, model, tok)
    plot_curves(run_dir, SFT_CURVES, f"{run_dir.name}_curves", run_dir.name)
    return run_dir
