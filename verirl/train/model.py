"""Loading the policy: model and tokenizer, LoRA adapters, the reference model, the value head,
and turning prompts + completions into padded training tensors.

``render_prompt`` is ``verirl.prompts``' (the one evaluation uses), re-exported here for the
trainers."""

from __future__ import annotations

import ctypes
import sys
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from verirl.algos import adapters_disabled, ema_update, frozen_copy
from verirl.algos.logprobs import (
    head_token_logprobs_and_entropy,
    token_logprobs,
    token_logprobs_and_entropy,
)
from verirl.errors import ConfigError
from verirl.lean_model import (
    SUPPORTED,
    is_plain,
    lean_by_default,
    shared_prompt_rows,
    train_forward,
    train_forward_shared,
    train_hidden,
    train_hidden_shared,
)
from verirl.pretrained import load_pretrained
from verirl.prompts import render_prompt as render_prompt  # the trainers' import
from verirl.train.config import ModelSection
from verirl.train.distributed import unwrap


def load_policy(cfg: ModelSection, device: str = "cpu") -> tuple[Any, Any]:
    """(model, tokenizer) by the loader evaluation uses too (``verirl.pretrained``: a model
    directory, hub id or merged PEFT adapter; failures are ConfigErrors naming ``model.path``),
    in ``model.dtype``, LoRA-wrapped when configured."""
    model: Any
    model, tok = load_pretrained(cfg.path, cfg.dtype, device, what="model.path")
    if device == "cpu":
        retain_freed_memory()
    if cfg.lora.enabled:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=list(cfg.lora.target_modules),
            task_type="CAUSAL_LM",
        )
        try:
            model = get_peft_model(model, lora)
        except ValueError as e:
            raise ConfigError(f"model.lora.target_modules: {e}") from None
    return model, tok


def retain_freed_memory() -> None:
    """Have glibc keep freed memory for reuse rather than hand it back to the OS.

    Every training step allocates and frees the same activation-sized blocks. By default glibc
    serves blocks above its mmap threshold with fresh mappings and trims the heap's free top,
    so each step page-faults its activations back in: ~6k minor faults (24 MiB of page
    zeroing in the kernel) per step of the GRPO benchmark, ~0.3k with this. PyTorch's CPU
    tuning guide swaps in jemalloc/tcmalloc for the same reason; this is the in-process
    equivalent for glibc (blocks up to 256 MiB from the heap, trim above 1 GiB free). The
    cost is memory: RSS stays near the peak between steps, and on the real-vocabulary benchmark
    (Qwen2.5-0.5B shape, 4 layers) the peak RSS of a forward+backward rose by ~400-450 MiB
    (3342 -> 3721 MiB) while its CPU time fell ~17% (13.5 -> 11.2 s). No-op without glibc.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl or another libc
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    mallopt(m_mmap_threshold, 256 << 20)
    mallopt(m_trim_threshold, 1 << 30)


class Reference:
    """π_ref for the KL term: a frozen copy, the base with LoRA disabled, or an EMA of π_θ."""

    def __init__(self, kind: str, policy: Any, ema_decay: float = 0.99) -> None:
        self.kind, self.decay = kind, ema_decay
        self.model: Any = None
        if kind in ("frozen", "ema"):
            self.model = frozen_copy(policy)

    def context(self, policy: Any) -> tuple[Any, AbstractContextManager[Any]]:
        """(module to run, context to run it in)."""
        if self.kind == "lora_disabled":
            return policy, adapters_disabled(policy)
        return self.model, nullcontext()

    def after_step(self, policy: Any) -> None:
        if self.kind == "ema":
            ema_update(self.model, policy, self.decay)

    def state_dict(self) -> dict[str, Any] | None:
        return self.model.state_dict() if self.kind == "ema" else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.kind == "ema" and state is not None:
            self.model.load_state_dict(state)


class ValueHead(nn.Module):
    """PPO critic: a linear head on the policy's last hidden states, V(s_t) = w·h_t + b."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # [B, T, H] -> [B, T]
        return self.linear(hidden.float()).squeeze(-1)


@dataclass
class Batch:
    """Right-padded prompt+completion sequences. Index t of `targets`/`mask` is token t+1."""

    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    targets: torch.Tensor  # [B, L-1] = input_ids[:, 1:]
    mask: torch.Tensor  # [B, L-1], 1 where the target is a completion token
    prompt_lens: torch.Tensor | None = None  # [B] tokens of each row's prompt (None: unknown)

    def first_target(self) -> int:
        """The first column of `targets` any row has a completion token in (0 when the prompt
        lengths are unknown): columns left of it carry no loss."""
        if self.prompt_lens is None or not len(self.prompt_lens):
            return 0
        return max(int(self.prompt_lens.min()) - 1, 0)

    def slice(self, s: slice | torch.Tensor) -> Batch:
        """Rows `s` (a slice, or a tensor of row indices), trimmed of trailing all-pad columns
        so a micro-batch of short sequences computes no waste."""
        width = int(self.attention_mask[s].sum(-1).max().item())
        return Batch(
            self.input_ids[s, :width],
            self.attention_mask[s, :width],
            self.targets[s, : width - 1],
            self.mask[s, : width - 1],
            None if self.prompt_lens is None else self.prompt_lens[s],
        )


def pack(prompts: list[list[int]], completions: list[list[int]], pad: int, device: str) -> Batch:
    """Concatenate each prompt with its completion and right-pad to the longest."""
    seqs = [p + c for p, c in zip(prompts, completions, strict=True)]
    width = max(len(s) for s in seqs)
    # One tensor from padded lists and masks from lengths: no per-row tensor ops.
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], dtype=torch.long)
    ends = torch.tensor([len(s) for s in seqs])[:, None]  # [B, 1]
    starts = torch.tensor([len(p) for p in prompts])[:, None]
    col = torch.arange(width)[None]  # [1, L]
    att = (col < ends).long()
    resp = ((col >= starts) & (col < ends)).float()  # completion tokens
    ids, att = ids.to(device), att.to(device)
    return Batch(ids, att, ids[:, 1:], resp[:, 1:].to(device), starts[:, 0].to(device))


# ``forward="auto"`` takes the lean path where ``lean_by_default`` says so; tests turn this off
# to compare against transformers' own forward bit for bit.
AUTO_LEAN = True
# Run a prompt shared by several rows (a GRPO group) once (``train_forward_shared``).
SHARE_PROMPTS = True
FORWARDS = ("auto", "transformers", "lean")


def resolve_forward(choice: str, model: Any, distributed: bool = False) -> str:
    """``model.forward`` for this run: "lean" or "transformers", decided once so that π_old,
    π_ref and π_θ (and the hf engine's decoding) all come from the same computation.

    auto: lean only where measured faster and tested exact (``lean_by_default``: CPU,
    float32/bfloat16, a plain supported model) and never under torchrun, where DDP/FSDP2 must
    run the wrapped model's own forward for π_θ. lean: as auto, but an error where it cannot
    run."""
    if choice == "transformers":
        return "transformers"
    if choice == "lean":
        if distributed:
            raise ConfigError("model.forward: 'lean' cannot run under torchrun (DDP/FSDP2 "
                              "wrap the model's own forward); use 'auto' or 'transformers'")  # fmt: skip
        if not is_plain(model):
            raise ConfigError(f"model.forward: 'lean' supports plain {', '.join(SUPPORTED)} "
                              f"(no LoRA, full attention), not {type(model).__name__}; "
                              "use 'auto' or 'transformers'")  # fmt: skip
        return "lean"
    if choice != "auto":
        raise ConfigError(f"model.forward: {choice!r} is not one of {FORWARDS}")
    return "lean" if lean_by_default(model) and not distributed else "transformers"


def forward_logits(
    model: Any, batch: Batch, hidden: bool = False, start: int = 0, forward: str = "auto"
) -> tuple[torch.Tensor, Any]:
    """Logits at the positions that predict `batch.targets[:, start:]` [B, L−1−start, V] (and
    the last hidden state there). ``start = batch.first_target()`` leaves out the prompt
    columns no row has a completion token in: the LM head and log-softmax then skip them, as
    TRL's ``logits_to_keep`` does (most of the head's work when prompts are long and the
    vocabulary is large).

    `forward` "lean" (or "auto" where ``lean_by_default``) runs ``train_forward`` (the same
    computation without transformers' per-module overhead; ~15% less forward+backward time on
    CPU), or ``train_forward_shared`` when rows share prompts (each distinct prompt through
    the layers once); "transformers", wrapped (DDP, FSDP, peft), checkpointed or
    dropout-using models, and other architectures run the model's own forward."""
    if _use_lean(model, batch, forward):
        logits, last = _lean_forward(model, batch, start)
        return logits[:, :-1], (last[:, :-1] if hidden else None)
    keep = {"logits_to_keep": batch.input_ids.shape[1] - start} if start else {}
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        output_hidden_states=hidden,
        use_cache=False,
        **keep,
    )
    h = out.hidden_states[-1][:, start:-1] if hidden else None
    return out.logits[:, :-1], h


# On the lean path, the head function (``head_token_logprobs_and_entropy``: with a gradient it
# keeps one [B, T, V] buffer and overwrites it with its own gradient; under no_grad or above
# 2^28 elements it works in blocks, never holding the logits) scores tokens from the last
# hidden state for batches whose logits would exceed HEAD_BLOCK_MIN_ELEMENTS (1 GiB in float32)
# and for every model with a real vocabulary (>= HEAD_PATH_MIN_VOCAB): on the Qwen2.5-0.5B-shaped
# benchmark (151,936 tokens) it cut verirl's peak RSS from 5260 to 4666 MiB at the same speed
# (benchmarks/results/grpo_vs_trl_realvocab_verirl_head_block_min_0.*). Small-vocabulary models
# keep the plain head (no measured gain there).
HEAD_BLOCK_MIN_ELEMENTS = 2**28
HEAD_PATH_MIN_VOCAB = 32768


def forward_logprobs(
    model: Any,
    batch: Batch,
    *,
    start: int = 0,
    forward: str = "auto",
    temperature: float = 1.0,
    hidden: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """(log softmax(z / T)[targets[:, start:]] [B, T'], entropy [B, T'] (no grad), last hidden
    state there or None): ``forward_logits`` then ``token_logprobs_and_entropy``, or, on the lean
    path for real vocabularies and large batches, the head function from the hidden state."""
    tokens = batch.targets[:, start:]
    # DDP wraps the model: its config lives on .module.
    vocab = unwrap(model).config.vocab_size
    big = vocab >= HEAD_PATH_MIN_VOCAB or tokens.numel() * vocab > HEAD_BLOCK_MIN_ELEMENTS
    if big and _use_lean(model, batch, forward):
        h = _lean_hidden(model, batch, start)[:, :-1]
        head = model.lm_head
        lp, ent = head_token_logprobs_and_entropy(h, head.weight, head.bias, tokens,
                                                  temperature=temperature)  # fmt: skip
        return lp, ent, (h if hidden else None)
    logits, h = forward_logits(model, batch, hidden=hidden, start=start, forward=forward)
    lp, ent = token_logprobs_and_entropy(logits, tokens, temperature=temperature)
    return lp, ent, h


def sequence_logps(
    model: Any, batch: Batch, forward: str = "auto", temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ_t∈completion log π(o_t | q, o_<t) per row [R], completion tokens per row [R]), the
    sequence log-likelihood DPO (offline and online) compares with π_ref's. The prompt columns
    no row has a completion token in are left out of the forward (``Batch.first_target``);
    `forward` and `temperature` as for ``forward_logits`` and ``token_logprobs``."""
    first = batch.first_target()
    logits, _ = forward_logits(model, batch, start=first, forward=forward)
    mask = batch.mask[:, first:]  # [R, T']
    logp = token_logprobs(logits, batch.targets[:, first:], temperature=temperature)  # [R, T']
    return (logp * mask).sum(-1), mask.sum(-1)


def _use_lean(model: Any, batch: Batch, forward: str) -> bool:
    lean = forward == "lean" or (forward == "auto" and AUTO_LEAN and lean_by_default(model))
    return lean and _lean_ok(model, batch)


SharedPrompts = tuple[list[int], list[list[int]], list[int], list[list[int]]]


def _shared_prompts(batch: Batch) -> SharedPrompts | None:
    """(prompt lengths, *``shared_prompt_rows`` plan) when rows share prompts and sharing is on:
    the extra arguments of ``train_hidden_shared``/``train_forward_shared``; else None."""
    if not SHARE_PROMPTS or batch.prompt_lens is None:
        return None
    lengths = batch.attention_mask.sum(-1).tolist()
    prompt_lens = batch.prompt_lens.tolist()
    plan = shared_prompt_rows(batch.input_ids, lengths, prompt_lens)
    return None if plan is None else (prompt_lens, *plan)


def _lean_hidden(model: Any, batch: Batch, start: int) -> torch.Tensor:
    shared = _shared_prompts(batch)
    if shared is not None:
        return train_hidden_shared(model, batch.input_ids, *shared, start=start)
    return train_hidden(model, batch.input_ids, start)


def _lean_forward(model: Any, batch: Batch, start: int) -> tuple[torch.Tensor, torch.Tensor]:
    shared = _shared_prompts(batch)
    if shared is not None:
        return train_forward_shared(model, batch.input_ids, *shared, start=start)
    return train_forward(model, batch.input_ids, start)


def _lean_ok(model: Any, batch: Batch) -> bool:
    if not is_plain(model) or getattr(model, "is_gradient_checkpointing", False):
        return False
    if model.training and getattr(model.config, "attention_dropout", 0.0):
        return False
    att = batch.attention_mask  # right padding only: the causal mask then covers it
    return bool((att[:, 1:] <= att[:, :-1]).all())
