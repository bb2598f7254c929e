"""Models for evaluation: loading (HF or PEFT adapter), fingerprints, engines. Loading and the
prompt text are training's own (``verirl.pretrained``, ``verirl.prompts``), so a model is
evaluated as it was trained.

The fingerprint is part of the cache key, so a retrained model never reuses the old model's
completions; the engine comes from ``verirl.rollout.make_engine`` (hf or vllm).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from verirl.evals.suite import SuiteConfig

from verirl.pretrained import is_adapter_dir, load_pretrained, load_tokenizer
from verirl.prompts import render_prompt as render_prompt  # the runner's import


def model_fingerprint(model: str | Path) -> str:
    """Hash of a model directory's weights, config and tokenizer files (or of a hub id).

    Files up to 256 MiB are hashed whole; larger ones by size, mtime and their first and last
    MiB, so fingerprinting a 14 GB checkpoint stays instant while a retrained tiny model is
    always told apart.

    >>> model_fingerprint("org/some-model") == model_fingerprint("org/some-model")
    True
    >>> model_fingerprint("org/some-model") == model_fingerprint("org/other-model")
    False
    """
    p = Path(model)
    h = hashlib.sha256()
    if not p.is_dir():
        h.update(f"id:{model}".encode())
        return h.hexdigest()
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        rel = f.relative_to(p).as_posix()
        if rel.startswith(".") or "/." in rel:
            continue
        st = f.stat()
        h.update(f"{rel}:{st.st_size}".encode())
        with f.open("rb") as fh:
            if st.st_size <= 256 << 20:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
            else:
                h.update(str(st.st_mtime_ns).encode())
                h.update(fh.read(1 << 20))
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read(1 << 20))
    return h.hexdigest()


def load_model(path: str | Path) -> tuple[Any, Any]:
    """(model, tokenizer) by the loader training uses too (``verirl.pretrained``): a HF
    directory or id in its own dtype, or a PEFT adapter directory merged into its base."""
    return load_pretrained(path)


def open_engine(
    backend: str, model_path: str | Path, suite: SuiteConfig, out_dir: Path | None = None
) -> tuple[Any, Any]:
    """(engine, tokenizer) for one model, from the rollout factory (hf or vllm)."""
    from verirl.rollout import make_engine

    if backend == "vllm":
        path = Path(model_path)
        if is_adapter_dir(path):  # vLLM loads full checkpoints: merge once
            path = _merged_copy(path, (out_dir or path.parent) / "merged")
        tok = load_tokenizer(path)
        engine = make_engine("vllm", tokenizer=tok, model_path=str(path), **suite.vllm)
        return engine, tok
    model, tok = load_model(model_path)
    return make_engine("hf", model=model, tokenizer=tok, batch_size=suite.batch_size), tok


def _merged_copy(adapter_dir: Path, root: Path) -> Path:
    """Merge a PEFT adapter into its base model and save it under ``root`` (reused by hash)."""
    dest = root / f"{adapter_dir.name}-{model_fingerprint(adapter_dir)[:12]}"
    if not (dest / "config.json").is_file():
        model, tok = load_model(adapter_dir)
        tmp = dest.with_name(dest.name + ".tmp")
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        tmp.replace(dest)
    return dest
