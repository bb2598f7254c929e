"""``verirl rm``: a Bradley–Terry reward model, trained on (prompt, chosen, rejected) pairs.

A causal LM with a scalar head (transformers' ``AutoModelForSequenceClassification`` with one
label: a linear map of the last non-pad token's hidden state) scores a whole prompt +
completion; the loss is L = −log σ(r_φ(x, y_w) − r_φ(x, y_l) − m) per pair (``bradley_terry_loss``;
Ouyang et al. 2022, eq. 1), as TRL's RewardTrainer. Pairs come from a file or from verifiable
rewards (``verirl curate --pairs-out``). ``data.eval_fraction`` of the pairs is held out (a
seeded split) and the pairwise accuracy on them is written to ``<run>/eval.json``.

A reward model is a *learned* judge, not a verifier: it can be wrong and it can be gamed.
The ``rm`` environment (``envs/reward_model_env.py``) scores with it beside an environment's
verifier, as a separate component.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import Field, model_validator

from verirl.algos.preference import bradley_terry_loss
from verirl.config import StrictModel
from verirl.errors import ConfigError, DataError
from verirl.pretrained import load_tokenizer, model_source
from verirl.rollout.base import end_token_ids
from verirl.train import checkpoint as ckpt
from verirl.train.config import LogSection, ModelSection, check_device
from verirl.train.dpo_config import DpoData, DpoTrain
from verirl.train.model import Batch
from verirl.train.pairwise import Pair, load_pairs, pack_pairs, pairs_command, train_pairs
from verirl.train.run import make_run_dir

RM_CURVES = ("loss", "accuracy", "margin")


class RmData(DpoData):
    eval_fraction: float = Field(
        default=0.1, ge=0.0, lt=1.0, description="share of the pairs held out for accuracy"
    )


class RmTrain(DpoTrain):
    lr: float = Field(default=1e-5, gt=0.0, description="peak learning rate (AdamW)")


class RmConfig(StrictModel):
    """``verirl rm``: a scalar-head reward model fitted to preference pairs (Bradley–Terry)."""

    path_keys: ClassVar[tuple[str, ...]] = ("model.path", "data.path")

    name: str = Field(default="rm", description="run name: the run dir is <run_dir>/<name>")
    run_dir: str = Field(
        default="runs/rm", description="parent folder of run directories (cwd-relative)"
    )
    model: ModelSection
    data: RmData
    margin: float = Field(default=0.0, description="m in −log σ(r_w − r_l − m) (0: plain BT)")
    train: RmTrain = Field(default_factory=RmTrain)
    log: LogSection = Field(default_factory=LogSection)

    @model_validator(mode="after")
    def _check(self) -> RmConfig:
        if self.model.lora.enabled:
            raise ValueError("model.lora.enabled: verirl rm trains all weights (no LoRA yet)")
        mb = self.train.micro_batch_size
        if mb is not None and self.train.batch_size % mb:
            raise ValueError(
                f"train.micro_batch_size={mb} must divide train.batch_size={self.train.batch_size}"
            )
        return self


def load_reward_model(path: str, dtype: str = "float32", device: str = "cpu") -> tuple[Any, Any]:
    """(scalar-head model, tokenizer) from a causal LM (a new, randomly initialised head) or from
    a ``verirl rm`` output. A load failure is a ConfigError naming ``model.path``; the path and
    the tokenizer are read as for the policy (``verirl.pretrained``)."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    src = model_source(path, "model.path")
    tok = load_tokenizer(src, "model.path")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "score.weight newly initialized" is the point here
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            src, num_labels=1, dtype=torch.bfloat16 if dtype == "bfloat16" else torch.float32
        )
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.path: cannot load {path!r} as a reward model: {e}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    model.config.pad_token_id = tok.pad_token_id  # the head reads the last non-pad token
    return model.to(device), tok


def scores(model: Any, batch: Batch) -> torch.Tensor:
    """r_φ of each right-padded row [R] (the head at its last non-pad token)."""
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    return out.logits[:, 0].float()


def rm_update(
    model: Any, pairs: list[Pair], margin: float, micro: int, pad: int, device: str
) -> dict[str, float]:
    """Backward of the mean Bradley–Terry loss over `pairs`; returns loss, accuracy (share of
    pairs with r_w > r_l), margin (mean r_w − r_l) and the mean scores."""
    n = len(pairs)
    loss_total = 0.0
    parts = []
    for s in range(0, n, micro):
        chunk = pairs[s : s + micro]
        chosen, rejected = scores(model, pack_pairs(chunk, pad, device)).chunk(2)  # [b] each
        loss = bradley_terry_loss(chosen, rejected, margin).mean()
        (loss * len(chunk) / n).backward()
        loss_total += float(loss.detach()) * len(chunk) / n
        parts.append((chosen.detach(), rejected.detach()))
    c, r = (torch.cat(x) for x in zip(*parts, strict=True))
    return {"loss": loss_total, "accuracy": float((c > r).float().mean()),
            "margin": float((c - r).mean()), "scores/chosen": float(c.mean()),
            "scores/rejected": float(r.mean())}  # fmt: skip


@torch.no_grad()
def pairwise_accuracy(model: Any, pairs: list[Pair], pad: int, device: str, micro: int) -> float:
    """Share of `pairs` the model ranks right (r_w > r_l strictly; a tie is wrong)."""
    was_training = model.training
    model.eval()
    right = 0
    for s in range(0, len(pairs), micro):
        c, r = scores(model, pack_pairs(pairs[s : s + micro], pad, device)).chunk(2)
        right += int((c > r).sum())
    model.train(was_training)
    return right / max(len(pairs), 1)


def split_pairs(pairs: list[Pair], fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """(train, held out): a seeded shuffle, the last ⌈fraction·n⌉ pairs held out.

    >>> train, held = split_pairs([Pair([i], [1], [2]) for i in range(10)], 0.2, seed=0)
    >>> len(train), len(held), sorted(p.prompt[0] for p in train + held) == list(range(10))
    (8, 2, True)
    """
    if fraction == 0:
        return pairs, []
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    k = max(1, -int(-fraction * len(pairs) // 1))  # ceil
    if k >= len(pairs):
        raise DataError(f"{len(pairs)} pairs: too few to hold out {fraction:.0%} and train")
    return [pairs[i] for i in order[:-k]], [pairs[i] for i in order[-k:]]


def rm(
    cfg: RmConfig, overwrite: bool = False, unique: bool = False, resume_dir: Path | None = None
) -> Path:
    """Train, save ``<run>/final`` (a scalar-head model + tokenizer) and ``<run>/eval.json``
    (held-out and train pairwise accuracy); returns the run directory."""
    t = cfg.train
    check_device(t.device)
    if t.threads:
        torch.set_num_threads(t.threads)
    run_dir = resume_dir or make_run_dir(cfg, overwrite, unique)
    ckpt.seed_everything(t.seed)
    model, tok = load_reward_model(cfg.model.path, cfg.model.dtype, t.device)
    end = end_token_ids(tok, None)
    context = getattr(model.config, "max_position_embeddings", None)
    pairs = load_pairs(cfg.data, cfg.model.chat_template, tok, end, context)
    train, held_out = split_pairs(pairs, cfg.data.eval_fraction, t.seed)
    micro = t.micro_batch_size or t.batch_size
    pad = tok.pad_token_id

    def step(batch: list[Pair]) -> dict[str, float]:
        return rm_update(model, batch, cfg.margin, micro, pad, t.device)

    out = train_pairs(cfg, "rm", run_dir, resume_dir is not None, model, tok, train, step,
                      RM_CURVES)  # fmt: skip
    result = {
        "heldout_pairs": len(held_out),
        "heldout_accuracy": pairwise_accuracy(model, held_out, pad, t.device, micro)
        if held_out
        else None,
        "train_pairs": len(train),
        "train_accuracy": pairwise_accuracy(model, train, pad, t.device, micro),
    }
    (out / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"held-out pairwise accuracy: {result['heldout_accuracy']} ({len(held_out)} pairs)")
    return out


def rm_command(
    config: str | None, overrides: list[str], resume: str | None = None, overwrite: bool = False
) -> int:
    """``verirl rm CONFIG [key=value]`` or ``verirl rm --resume RUN_DIR [key=value]``."""
    return pairs_command(RmConfig, rm, "rm", config, overrides, resume, overwrite, "reward model")
