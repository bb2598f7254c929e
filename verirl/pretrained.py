"""The one loader of a pretrained causal LM and its tokenizer, shared by training (``verirl
train``/``sft``/``dpo``, the policy) and evaluation (``verirl eval``, curation), so both read a
model directory the same way: a HF directory or hub id, or a PEFT adapter directory merged
into its base (the form ``verirl sft`` with LoRA writes).

Every failure is a ConfigError (exit code 2) naming the setting that pointed at the model.
transformers and peft are imported only when a model is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from verirl.errors import ConfigError

DTYPES = ("auto", "float32", "bfloat16")  # auto: the dtype the checkpoint's config names


def model_source(path: str | Path, what: str = "model") -> str:
    """`path` as transformers should read it: a local directory (``~`` expanded), or a hub id
    left as given. A path that looks local (exists, or starts with ``.``, ``/``, ``~``) but is
    not a directory is a ConfigError naming `what` (hub ids never start so).

    >>> model_source("org/some-model")
    'org/some-model'
    """
    text = str(path)
    if not (text.startswith((".", "/", "~")) or Path(text).exists()):
        return text
    local = Path(text).expanduser()
    if not local.is_dir():
        raise ConfigError(f"{what}: {text!r} could not be loaded: not a model directory")
    return str(local)


def is_adapter_dir(path: str | Path) -> bool:
    """A PEFT adapter checkpoint (``adapter_config.json``) rather than a whole model."""
    return (Path(path).expanduser() / "adapter_config.json").is_file()


def load_tokenizer(path: str | Path, what: str = "model") -> Any:
    """The tokenizer of a model directory or hub id (an adapter directory's own, or its base's
    when it has none), with the EOS token as padding when it defines no pad token."""
    from transformers import AutoTokenizer

    src = model_source(path, what)
    if is_adapter_dir(src) and not (Path(src) / "tokenizer_config.json").is_file():
        src = json.loads((Path(src) / "adapter_config.json").read_text())["base_model_name_or_path"]
    try:
        tok = AutoTokenizer.from_pretrained(src)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{what}: {str(path)!r} could not be loaded: {e}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_pretrained(
    path: str | Path, dtype: str = "auto", device: str = "cpu", what: str = "model"
) -> tuple[Any, Any]:
    """(model, tokenizer) on `device`, weights in `dtype` (one of ``DTYPES``). An adapter
    directory is loaded onto its base and merged, so the result is a plain model either way.
    HF's per-shard progress bars are off: a run shows one bar, ours."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    if dtype not in DTYPES:
        raise ConfigError(f"{what}: dtype {dtype!r} is not one of {DTYPES}")
    hf_logging.disable_progress_bar()
    src = model_source(path, what)
    torch_dtype: Any = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16}
    try:
        if is_adapter_dir(src):
            from peft import AutoPeftModelForCausalLM

            peft_model = AutoPeftModelForCausalLM.from_pretrained(src, dtype=torch_dtype[dtype])
            model = peft_model.merge_and_unload()
        else:
            model = AutoModelForCausalLM.from_pretrained(src, dtype=torch_dtype[dtype])
    except (OSError, ValueError) as e:
        raise ConfigError(f"{what}: {str(path)!r} could not be loaded: {e}") from None
    tok = load_tokenizer(src, what)
    return model.to(device), tok
