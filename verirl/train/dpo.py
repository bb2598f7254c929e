"""``verirl dpo``: direct preference optimisation on (prompt, chosen, rejected) rows.

Each step takes ``train.batch_size`` pairs, runs the policy and the reference π_ref over both
completions of each pair (prompt tokens masked, as in SFT), and minimises the preference loss
of ``verirl.algos.preference`` on the sequence log-ratios log π_θ(y|x) − log π_ref(y|x).
π_ref is a frozen copy of the starting model, or the same model with its LoRA adapters off.

Bad input (a missing file, row or field, a completion of the wrong type, a pair longer than the
model's context) is a DataError naming file, row and field, raised before the run directory
exists. The run directory, metrics.jsonl, checkpoints and ``--resume`` follow ``verirl train``;
the data order is a pure function of (seed, step), so a resumed run is the unbroken one.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from verirl.algos import token_logprobs
from verirl.algos.preference import dpo_metrics, preference_loss
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
from verirl.rollout.base import end_token_ids
from verirl.rundir import clear_run_dir
from verirl.train import checkpoint as ckpt
from verirl.train.config import check_device
from verirl.train.dpo_config import DpoAlgo, DpoConfig, DpoData
from verirl.train.loop import lr_lambda, make_run_dir
from verirl.train.metrics import MetricsLogger, plot_curves
from verirl.train.model import (
    Batch,
    Reference,
    forward_logits,
    load_policy,
    pack,
    render_prompt,
    resolve_forward,
)
from verirl.train.update import batch_rows

DPO_CURVES = ("loss", "rewards/margins", "rewards/accuracies", "rewards/chosen")


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


def completion_text(prompt: Any, completion: Any, prompt_text: str, tok: Any, cfg: Any) -> str:
    """The text a completion adds after the rendered prompt. A string is itself; chat messages
    (TRL's conversational format, e.g. ``[{"role": "assistant", "content": "4"}]``) are the
    chat template's rendering of prompt + messages minus that of the prompt, or their
    contents joined by newlines when no template applies (as ``render_prompt`` joins)."""
    if isinstance(completion, str):
        return completion
    if not _messages(completion):
        raise TypeError("expected a string or a list of chat messages with 'content'")
    templated = cfg.model.chat_template == "auto" and getattr(tok, "chat_template", None)
    if not (templated and _messages(prompt)):
        return "\n".join(m["content"] for m in completion)
    full = str(tok.apply_chat_template([*prompt, *completion], tokenize=False))
    if not full.startswith(prompt_text):
        raise TypeError("the chat template renders prompt + completion without the prompt prefix")
    return full[len(prompt_text) :]


def load_pairs(cfg: DpoConfig, tok: Any, end: list[int], context: int | None) -> list[Pair]:
    """Every row checked and tokenised; the first problem raises DataError naming row/field."""
    rows, source = read_rows(cfg.data)
    d = cfg.data
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
        prompt_text = render_prompt(prompt, tok, cfg.model.chat_template)
        ids = tok(prompt_text, add_special_tokens=False)["input_ids"]
        out = []
        for f in (d.chosen_field, d.rejected_field):
            try:
                text = completion_text(prompt, row[f], prompt_text, tok, cfg)
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


def sequence_logps(
    model: Any, batch: Batch, forward: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ_t∈completion log π(o_t | q, o_<t) per row [R], completion tokens per row [R]).
    `forward`: ``forward_logits``' choice, the same for π_θ and π_ref."""
    first = batch.first_target()  # prompt columns no row has a completion token in
    logits, _ = forward_logits(model, batch, start=first, forward=forward)
    mask = batch.mask[:, first:]  # [R, T']
    logp = token_logprobs(logits, batch.targets[:, first:])  # [R, T']
    return (logp * mask).sum(-1), mask.sum(-1)


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
        (loss * len(chunk) / n).backward()  # the mean over all n pairs
        loss_total += float(loss.detach()) * len(chunk) / n
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


def _restore(run_dir: Path, model: Any, opt: Any, sched: Any) -> int:
    last = ckpt.latest_checkpoint(run_dir)
    if last is None:
        raise UserError(
            f"{run_dir} has no checkpoint to resume from; start it over with: "
            f"verirl dpo {run_dir / 'config.yaml'} --overwrite"
        )
    state = ckpt.load_trainer_state(last)
    ckpt.load_weights_into(model, last)
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    ckpt.set_rng_state(state["rng"])
    print(f"resuming {run_dir} from step {state['step']} ({last})", flush=True)
    return int(state["step"])


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
    pairs = load_pairs(cfg, tok, end, context)  # validated before the run dir exists
    ref = Reference(cfg.algo.reference, model)  # the starting model, before any checkpoint
    if resume_dir is None:
        clear_run_dir(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg = cfg.model_copy(update={"run_dir": str(run_dir.parent), "name": run_dir.name})
    write_resolved_config(cfg, run_dir)
    print(f"run dir: {run_dir}", flush=True)
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=t.lr, weight_decay=t.weight_decay
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(t.schedule, t.warmup_steps, t.steps))
    start = _restore(run_dir, model, opt, sched) if resume_dir is not None else 0
    log = MetricsLogger(run_dir, cfg.log.tensorboard, keep_upto=start)
    micro = t.micro_batch_size or t.batch_size
    forward = resolve_forward(cfg.model.forward, model)
    model.train()
    progress = Progress("dpo", t.steps, start, enabled=cfg.log.progress)
    try:
        for step in range(start, t.steps):
            t0 = time.perf_counter()
            batch = batch_rows(pairs, step, t.batch_size, t.seed)
            opt.zero_grad(set_to_none=True)
            upd = dpo_update(model, ref, batch, cfg.algo, micro, tok.pad_token_id, t.device,
                             forward)  # fmt: skip
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), t.max_grad_norm))
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
    final = run_dir / "final"
    shutil.rmtree(final, ignore_errors=True)
    model.save_pretrained(str(final))
    tok.save_pretrained(str(final))
    plot_curves(run_dir, DPO_CURVES, f"{run_dir.name}_curves", run_dir.name)
    return run_dir


def dpo_command(
    config: str | None, overrides: list[str], resume: str | None = None, overwrite: bool = False
) -> int:
    """``verirl dpo CONFIG [key=value]`` or ``verirl dpo --resume RUN_DIR [key=value]`` (the
    run's own config.yaml with the overrides on top, e.g. ``train.steps=200`` to extend it)."""
    from verirl.train.cli import split_config_arg

    config, overrides = split_config_arg(config, overrides)
    if resume is None:
        if config is None:
            raise ConfigError("verirl dpo: give a CONFIG file, or --resume RUN_DIR")
        cfg = load_config(DpoConfig, config, overrides)
        named = any(o.split("=", 1)[0] == "name" for o in overrides)
        out = dpo(cfg, overwrite=overwrite, unique=not named)
    else:
        if overwrite or config is not None:
            raise ConfigError("--resume continues a run with its own config: drop CONFIG and "
                              "--overwrite (key=value overrides still apply)")  # fmt: skip
        saved = Path(resume) / "config.yaml"
        if not saved.is_file():
            raise ConfigError(f"--resume {resume}: no config.yaml there; not a run directory")
        data = deep_merge(read_yaml(saved), parse_overrides(overrides))
        out = dpo(validate_config(DpoConfig, data, str(saved)), resume_dir=Path(resume))
    print(f"dpo done: wrote {out} (model in {out / 'final'})")
    return 0
