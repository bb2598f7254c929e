"""Models for evaluation: loading (HF or PEFT adapter), fingerprints, engines, prompt text.

The fingerprint is part of the cache key, so a retrained model never reuses the old model's
completions; the engine comes from ``verirl.rollout.make_engine`` (hf or vllm).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from verirl.envs.base import Prompt
from verirl.evals.suite import SuiteConfig

from verirl.errors import ConfigError, UserError


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
    """(model, tokenizer) from a HF directory or id; a PEFT adapter directory is merged in."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(path)
    try:
        if (p / "adapter_config.json").is_file():
            from peft import AutoPeftModelForCausalLM

            model = AutoPeftModelForCausalLM.from_pretrained(str(p)).merge_and_unload()
            base = json.loads((p / "adapter_config.json").read_text())["base_model_name_or_path"]
            tok_src = str(p) if (p / "tokenizer_config.json").is_file() else base
        else:
            model = AutoModelForCausalLM.from_pretrained(str(p))
            tok_src = str(p)
        tok = AutoTokenizer.from_pretrained(tok_src)
    except (OSError, ValueError) as e:
        raise UserError(f"model {str(path)!r} could not be loaded: {e}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model, tok


def open_engine(
    backend: str, model_path: str | Path, suite: SuiteConfig, out_dir: Path | None = None
) -> tuple[Any, Any]:
    """(engine, tokenizer) for one model, from the rollout factory (hf or vllm)."""
    from verirl.rollout import make_engine

    if backend == "vllm":
        from transformers import AutoTokenizer

        path = Path(model_path)
        if (path / "adapter_config.json").is_file():  # vLLM loads full checkpoints: merge once
            path = _merged_copy(path, (out_dir or path.parent) / "merged")
        try:
            tok = AutoTokenizer.from_pretrained(str(path))
        except (OSError, ValueError) as e:
            raise UserError(f"model {str(model_path)!r} could not be loaded: {e}") from None
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


def render_prompt(prompt: Prompt, tokenizer: Any, mode: str) -> str:
    """Prompt text for the engine: chat messages go through the tokenizer's chat template when
    it has one (mode ``auto``/``always``); without one their contents are joined by blank lines,
    which is what a base model without a template would see in a plain-text prompt."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if mode == "always" and not has_template:
        raise ConfigError("chat_template: always, but the tokenizer has no chat template")
    use_template = has_template and mode != "never"
    if isinstance(prompt, str):
        if mode == "always":
            prompt = [{"role": "user", "content": prompt}]
        else:
            return prompt
    if use_template:
        return str(
            tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        )
    return "\n\n".join(m["content"] for m in prompt)
