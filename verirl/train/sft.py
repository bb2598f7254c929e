"""``verirl sft``: supervised fine-tuning with the prompt masked out of the loss.

L = −Σ_{t ∈ response} log π_θ(o_t | q, o_<t) / |response tokens| (prompt tokens carry no loss).
Targets come from an environment's rows (``data.target_field``, e.g. arithmetic's ``answer``)
or from a JSONL file with prompt/completion columns. Used for warm starts and the demo's base.

Multi-turn demonstrations: a JSONL row with a ``messages`` list instead of a completion (the
turns after the prompt: ``assistant`` turns and the environment's ``tool``/``user`` messages)
is laid out token for token as the RL trajectory lays it out (``verirl.rollout.turns``): each
assistant turn tokenised on its own, ended by the end token unless its text ends with one of
the env's ``turn_stop`` strings (``</python>``: the turn stopped there), the environment's
messages rendered by ``render_messages`` after it. Only assistant tokens carry loss.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import torch

from verirl.algos import sft_loss
from verirl.config import write_resolved_config
from verirl.errors import ConfigError, DataError
from verirl.jsonl import read_jsonl
from verirl.progress import Progress
from verirl.prompts import render_prompt
from verirl.rollout.base import end_token_ids
from verirl.rollout.turns import render_messages, uses_template
from verirl.rundir import clear_run_dir
from verirl.train import checkpoint as ckpt
from verirl.train.config import SftConfig, check_device
from verirl.train.metrics import SFT_CURVES, MetricsLogger, plot_curves
from verirl.train.model import Batch, forward_logits, load_policy, pack
from verirl.train.run import lr_lambda, make_run_dir

# One training row: prompt ids, completion ids (turns and environment messages), and the
# completion's loss mask (1 at the model's own tokens, 0 at the environment's).
Example = tuple[list[int], list[int], list[int]]


def load_examples(cfg: SftConfig, tok: Any, end: int) -> list[Example]:
    """The training rows as token ids; a bad row raises DataError naming file/row/field."""
    if cfg.data.path is None:
        return [_single(tok, p, c, end) for p, c in load_pairs(cfg, tok)]
    if not Path(cfg.data.path).is_file():
        raise ConfigError(f"data.path: {cfg.data.path}: no such file")
    from verirl.envs.registry import get_env_class

    stops = tuple(get_env_class(cfg.env.name).turn_stop)
    pf, cf = cfg.data.prompt_field, cfg.data.completion_field
    out = []
    for i, row in enumerate(read_jsonl(cfg.data.path), 1):
        where = f"{cfg.data.path}:{i}"
        for f in (pf,) if "messages" in row else (pf, cf):
            if f not in row:
                raise DataError(f"{where}: missing field {f!r}")
        prompt = render_prompt(row[pf], tok, cfg.model.chat_template)
        if "messages" not in row:
            out.append(_single(tok, prompt, str(row[cf]), end))
            continue
        templated = uses_template(row[pf], tok, cfg.model.chat_template)
        ids, mask = encode_turns(_messages(row["messages"], where), tok, templated, end, stops)
        out.append((tok(prompt, add_special_tokens=False)["input_ids"], ids, mask))
    return out


def load_pairs(cfg: SftConfig, tok: object) -> list[tuple[str, str]]:
    """(prompt text, target text) pairs from the env's rows (``data.target_field``)."""
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


def _single(tok: Any, prompt: str, completion: str, end: int) -> Example:
    ids = tok(completion, add_special_tokens=False)["input_ids"] + [end]
    return tok(prompt, add_special_tokens=False)["input_ids"], ids, [1] * len(ids)


def _messages(value: Any, where: str) -> list[dict[str, str]]:
    """A demonstration's turns, checked: role/content strings, assistant first and last (the
    model opens after the prompt and the final submission is its own)."""
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: field 'messages' must be a non-empty list of messages")
    for k, m in enumerate(value):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), str)):  # fmt: skip
            raise DataError(f"{where}: messages[{k}] needs string 'role' and 'content'")
    if value[0]["role"] != "assistant" or value[-1]["role"] != "assistant":
        raise DataError(f"{where}: field 'messages' must start and end with an assistant turn")
    return value


def encode_turns(
    messages: list[dict[str, str]], tok: Any, templated: bool, end: int, stops: tuple[str, ...]
) -> tuple[list[int], list[int]]:
    """(token ids, loss mask) of the turns after the prompt, as the RL driver builds them: an
    assistant turn's own tokens (mask 1) plus the end token unless it stopped on a stop string
    (the final turn always ends with it); each run of environment messages rendered by
    ``render_messages`` (mask 0), told which end token the turn before it ended with.

    >>> from verirl.tiny import build_tokenizer
    >>> tok = build_tokenizer()
    >>> turns = [{"role": "assistant", "content": "<python>print(6*7)</python>"},
    ...          {"role": "tool", "content": "42"}, {"role": "assistant", "content": "42"}]
    >>> ids, mask = encode_turns(turns, tok, False, tok.eos_token_id, ("</python>",))
    >>> tok.decode([t for t, m in zip(ids, mask) if m == 0])
    '\\n<output>\\n42\\n</output>\\n'
    >>> tok.decode([t for t, m in zip(ids, mask) if m]).replace(tok.eos_token, "|")
    '<python>print(6*7)</python>42|'
    """
    ids: list[int] = []
    mask: list[int] = []
    ended: int | None = None
    env: list[dict[str, str]] = []
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            env.append(m)
            continue
        if env:
            got, _ = render_messages(env, tok, templated, ended_with=ended)
            ids, mask, env = ids + got, mask + [0] * len(got), []
        turn = tok(m["content"], add_special_tokens=False)["input_ids"]
        last = k == len(messages) - 1
        ended = end if last or not m["content"].endswith(stops) else None
        turn = turn + ([end] if ended is not None else [])
        ids, mask = ids + turn, mask + [1] * len(turn)
    return ids, mask


def loss_labels(batch: Batch, masks: list[list[int]]) -> torch.Tensor:
    """Targets with -100 wherever no loss is taken: prompt, padding and environment tokens.
    Completion token k of row r is target ``prompt_len[r] - 1 + k``."""
    keep = torch.zeros_like(batch.mask)
    starts = batch.prompt_lens.tolist() if batch.prompt_lens is not None else []
    for r, (start, m) in enumerate(zip(starts, masks, strict=True)):
        keep[r, start - 1 : start - 1 + len(m)] = torch.tensor(m, dtype=keep.dtype)
    return batch.targets.masked_fill((batch.mask * keep) == 0, -100)


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
    # Targets end with the first of the end tokens the rollout engines stop on.
    end = end_token_ids(tok, getattr(model, "generation_config", None))[0]
    enc = load_examples(cfg, tok, end)  # validated before the run dir exists
    if not enc:
        raise DataError("sft: no training rows")
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
            labels = loss_labels(batch, [enc[i][2] for i in idx])
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
