"""Checkpoints: model (or LoRA adapter), optimizer, scheduler, RNG states, step, extras.

Layout: ``<run>/checkpoints/step-<N>/`` with the HF model (``save_pretrained``) and
``trainer_state.pt``. A checkpoint directory is written under a temporary name and renamed
into place, so a run killed mid-save never leaves a checkpoint that looks complete.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: Any,
    tokenizer: Any,
    state: dict[str, Any],
    state_dict: dict[str, Any] | None = None,
) -> Path:
    """Write checkpoint `step`; `state` holds optimizer/scheduler/extra state dicts.
    `state_dict`: the model's full weights when its parameters are sharded (FSDP2)."""
    root = run_dir / "checkpoints"
    final = root / f"step-{step}"
    tmp = root / f".step-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if state_dict is not None:
        model.save_pretrained(str(tmp), state_dict=state_dict)
    else:
        model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    torch.save({**state, "step": step, "rng": rng_state()}, tmp / "trainer_state.pt")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def save_final(run_dir: Path, model: Any, tokenizer: Any) -> Path:
    """The trained model (or adapter) and tokenizer as ``<run>/final``, written under a temporary
    name and renamed into place like a checkpoint, so ``final`` is never half written."""
    final = run_dir / "final"
    tmp = run_dir / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return None
    steps = [
        (int(p.name.split("-")[1]), p)
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith("step-") and (p / "trainer_state.pt").exists()
    ]
    return max(steps)[1] if steps else None


def load_trainer_state(ckpt: Path) -> dict[str, Any]:
    # weights_only=False: the RNG states are numpy/python objects we wrote ourselves.
    state: dict[str, Any] = torch.load(ckpt / "trainer_state.pt", weights_only=False)
    return state


def load_weights_into(model: Any, ckpt: Path) -> None:
    """Load checkpoint weights into the already-built policy (full model or LoRA adapter)."""
    from safetensors.torch import load_file

    adapter = ckpt / "adapter_model.safetensors"
    if adapter.exists():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(str(adapter)))
        return
    files = sorted(ckpt.glob("model*.safetensors"))
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        sd.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    # Tied embeddings are saved once; anything else missing means a wrong checkpoint.
    real_missing = [k for k in missing if "lm_head" not in k]
    if real_missing or unexpected:
        raise RuntimeError(f"{ckpt}: checkpoint does not match the model ({real_missing[:3]})")
