"""What ``verirl dpo`` and ``verirl rm`` share: preference pairs from JSONL or a 🤗 dataset
(checked row by row, tokenised, packed), and the run itself (run directory, optimizer and lr
schedule, the step loop over a seeded data order, metrics.jsonl, checkpoints, ``--resume``,
the final model), so the two commands differ only in the loss of a step.

The data order is a pure function of (seed, step) (``batch_rows``), so a resumed run sees the
pairs the unbroken one would have.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from verirl.config import (
    deep_merge,
    load_config,
    parse_overrides,
    read_yaml,
    validate_config,
    write_resolved_config,
)
from verirl.errors import ConfigError, DataError, UserError
from verirl.jsonl import read_jsonl
from verirl.progress import Progress
from verirl.prompts import join_messages, render_prompt, uses_chat_template
from verirl.rundir import clear_run_dir
from verirl.train import checkpoint as ckpt
from verirl.train.batch import batch_rows
from verirl.train.dpo_config import DpoData
from verirl.train.metrics import MetricsLogger, plot_curves
from verirl.train.model import Batch, pack
from verirl.train.run import lr_lambda


@dataclass(frozen=True)
class Pair:
    """One preference pair as token ids; both completions end with an end token."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]


def read_rows(data: DpoData) -> tuple[list[dict[str, Any]], str]:
    """The rows of ``data.path`` (JSONL) or ``data.dataset``, and the source's name for errors."""
    if data.path is not None:
        if not Path(data.path).is_file():
            raise ConfigError(f"data.path: {data.path}: no such file")
        return read_jsonl(data.path), data.path
    assert data.dataset is not None  # DpoData checks that one of the two is given
    return _dataset_rows(data.dataset, data.split), f"{data.dataset}[{data.split}]"


def _dataset_rows(name: str, split: str) -> list[dict[str, Any]]:
    import datasets

    p = Path(name).expanduser()
    try:
        if p.is_dir() and any((p / f).exists() for f in ("state.json", "dataset_dict.json")):
            ds: Any = datasets.load_from_disk(str(p))  # written by save_to_disk
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise ValueError(f"no split {split!r}; it has {', '.join(ds)}")
                ds = ds[split]
        elif p.is_file():
            kind = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
            if p.suffix not in kind:
                raise ValueError(f"unknown data file type {p.suffix!r} (json, parquet, csv)")
            ds = datasets.load_dataset(kind[p.suffix], data_files=str(p), split=split)
        else:
            ds = datasets.load_dataset(name, split=split)
    except (OSError, ValueError, KeyError) as e:  # DatasetNotFoundError is a FileNotFoundError
        raise ConfigError(f"data.dataset: cannot load {name!r} split {split!r}: {e}") from None
    rows: list[dict[str, Any]] = ds.to_list()
    return rows


def _messages(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in value)
    )


def completion_text(
    prompt: Any, completion: Any, prompt_text: str, tok: Any, chat_template: str
) -> str:
    """The text a completion adds after the rendered prompt. A string is itself; chat messages
    (TRL's conversational format, e.g. ``[{"role": "assistant", "content": "4"}]``) are the
    chat template's rendering of prompt + messages minus that of the prompt, or their
    contents joined as ``render_prompt`` joins a prompt's when no template applies."""
    if isinstance(completion, str):
        return completion
    if not _messages(completion):
        raise TypeError("expected a string or a list of chat messages with 'content'")
    if not (uses_chat_template(tok, chat_template) and _messages(prompt)):
        return join_messages(completion)
    full = str(tok.apply_chat_template([*prompt, *completion], tokenize=False))
    if not full.startswith(prompt_text):
        raise TypeError("the chat template renders prompt + completion without the prompt prefix")
    return full[len(prompt_text) :]


def load_pairs(
    data: DpoData, chat_template: str, tok: Any, end: list[int], context: int | None
) -> list[Pair]:
    """Every row checked and tokenised; the first problem raises DataError naming row/field.
    Each completion ends with an end token (one of `end`, the first appended if missing)."""
    rows, source = read_rows(data)
    d = data
    pairs: list[Pair] = []
    same = 0
    for i, row in enumerate(rows, 1):
        for f in (d.prompt_field, d.chosen_field, d.rejected_field):
            if f not in row:
                raise DataError(f"{source}:{i}: missing field {f!r}")
        prompt = row[d.prompt_field]
        if not (isinstance(prompt, str) or _messages(prompt)):
            raise DataError(
                f"{source}:{i}: field {d.prompt_field!r}: expected a string or a list of chat "
                f"messages, got {type(prompt).__name__}"
            )
        prompt_text = render_prompt(prompt, tok, chat_template)
        ids = tok(prompt_text, add_special_tokens=False)["input_ids"]
        out = []
        for f in (d.chosen_field, d.rejected_field):
            try:
                text = completion_text(prompt, row[f], prompt_text, tok, chat_template)
            except TypeError as e:
                raise DataError(f"{source}:{i}: field {f!r}: {e}") from None
            comp = tok(text, add_special_tokens=False)["input_ids"]
            if not comp or comp[-1] not in end:
                comp = [*comp, end[0]]  # completions end as the rollout engines stop them
            if context and len(ids) + len(comp) > context:
                raise DataError(
                    f"{source}:{i}: field {f!r}: prompt + completion is {len(ids) + len(comp)} "
                    f"tokens, more than the model's context ({context})"
                )
            out.append(comp)
        same += out[0] == out[1]
        pairs.append(Pair(ids, out[0], out[1]))
    if not pairs:
        raise DataError(f"{source}: no preference pairs")
    if same:
        print(f"warning: {same} of {len(pairs)} pairs have chosen == rejected (no signal)")
    return pairs


def pack_pairs(pairs: list[Pair], pad: int, device: str) -> Batch:
    """Rows [chosen_1..chosen_B, rejected_1..rejected_B] (TRL's layout), right-padded."""
    prompts = [p.prompt for p in pairs] * 2
    return pack(prompts, [p.chosen for p in pairs] + [p.rejected for p in pairs], pad, device)


def _restore(run_dir: Path, model: Any, opt: Any, sched: Any, command: str) -> int:
    last = ckpt.latest_checkpoint(run_dir)
    if last is None:
        raise UserError(
            f"{run_dir} has no checkpoint to resume from; start it over with: "
            f"verirl {command} {run_dir / 'config.yaml'} --overwrite"
        )
    state = ckpt.load_trainer_state(last)
    ckpt.load_weights_into(model, last)
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    ckpt.set_rng_state(state["rng"])
    print(f"resuming {run_dir} from step {state['step']} ({last})", flush=True)
    return int(state["step"])


StepFn = Callable[[list[Pair]], dict[str, float]]


def train_pairs(
    cfg: Any,
    command: str,
    run_dir: Path,
    resume: bool,
    model: Any,
    tok: Any,
    pairs: list[Pair],
    step_fn: StepFn,
    curves: tuple[str, ...],
) -> Path:
    """The run of `command` ("dpo" | "rm") once its input is checked: `run_dir` is claimed
    (new) or continued (`resume`). Each step draws ``cfg.train.batch_size`` pairs, `step_fn`
    backpropagates its loss and returns metrics, then clip, optimizer and lr steps, a
    metrics row, and a checkpoint every ``save_every`` steps and at the end. Saves
    ``<run>/final`` (model + tokenizer) and the curves; returns the run directory."""
    t = cfg.train
    if not resume:
        clear_run_dir(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg = cfg.model_copy(update={"run_dir": str(run_dir.parent), "name": run_dir.name})
    write_resolved_config(cfg, run_dir)
    print(f"run dir: {run_dir}", flush=True)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(t.schedule, t.warmup_steps, t.steps))
    start = _restore(run_dir, model, opt, sched, command) if resume else 0
    log = MetricsLogger(run_dir, cfg.log.tensorboard, keep_upto=start)
    model.train()
    progress = Progress(command, t.steps, start, enabled=cfg.log.progress)
    try:
        for step in range(start, t.steps):
            t0 = time.perf_counter()
            batch = batch_rows(pairs, step, t.batch_size, t.seed)
            opt.zero_grad(set_to_none=True)
            upd = step_fn(batch)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm))
            opt.step()
            sched.step()
            seconds = time.perf_counter() - t0
            tokens = sum(len(p.prompt) * 2 + len(p.chosen) + len(p.rejected) for p in batch)
            row: dict[str, Any] = {"step": step + 1, **upd, "grad_norm": grad_norm,
                   "lr": sched.get_last_lr()[0], "step_seconds": seconds,
                   "tokens_per_s": tokens / seconds}  # fmt: skip
            log.log(row)
            progress.update(1, row)
            if (t.save_every and (step + 1) % t.save_every == 0) or step + 1 == t.steps:
                state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}
                ckpt.save_checkpoint(run_dir, step + 1, model, tok, state)
    finally:
        progress.close()
        log.close()
    ckpt.save_final(run_dir, model, tok)
    plot_curves(run_dir, curves, f"{run_dir.name}_curves", run_dir.name)
    return run_dir


def pairs_command(
    config_cls: Any,
    run: Callable[..., Path],
    command: str,
    config: str | None,
    overrides: list[str],
    resume: str | None = None,
    overwrite: bool = False,
    what: str = "model",
) -> int:
    """``verirl COMMAND CONFIG [key=value]`` or ``verirl COMMAND --resume RUN_DIR [key=value]``
    (the run's own config.yaml with the overrides on top, e.g. ``train.steps=200`` to extend
    it). `run(cfg, overwrite=, unique=, resume_dir=)` does the work; the last line says where
    `what` (the final model) is. Returns the exit code."""
    from verirl.train.cli import split_config_arg

    config, overrides = split_config_arg(config, overrides)
    if resume is None:
        if config is None:
            raise ConfigError(f"verirl {command}: give a CONFIG file, or --resume RUN_DIR")
        cfg = load_config(config_cls, config, overrides)
        named = any(o.split("=", 1)[0] == "name" for o in overrides)
        out = run(cfg, overwrite=overwrite, unique=not named)
    else:
        if overwrite or config is not None:
            raise ConfigError("--resume continues a run with its own config: drop CONFIG and "
                              "--overwrite (key=value overrides still apply)")  # fmt: skip
        saved = Path(resume) / "config.yaml"
        if not saved.is_file():
            raise ConfigError(f"--resume {resume}: no config.yaml there; not a run directory")
        data = deep_merge(read_yaml(saved), parse_overrides(overrides))
        out = run(validate_config(config_cls, data, str(saved)), resume_dir=Path(resume))
    print(f"{command} done: wrote {out} ({what} in {out / 'final'})")
    return 0
