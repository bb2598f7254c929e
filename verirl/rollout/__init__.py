"""Rollout engines, picked by the config name ``rollout.backend``.

``make_engine`` is the one place that maps a name to a backend; each branch imports its backend
lazily so that choosing ``hf`` never imports vLLM (and the reverse).
"""

from __future__ import annotations

from typing import Any

from verirl.errors import ConfigError
from verirl.rollout.base import Completion, RolloutEngine, SamplingParams

BACKENDS = ("hf", "vllm")

__all__ = ["BACKENDS", "Completion", "RolloutEngine", "SamplingParams", "make_engine"]


def make_engine(
    name: str,
    model: Any = None,
    tokenizer: Any = None,
    model_path: str | None = None,
    **options: Any,
) -> RolloutEngine:
    """Build the rollout engine `name` ("hf" | "vllm").

    - ``hf``: samples with the policy module itself (`model`, `tokenizer` required); options:
      ``batch_size`` (max sequences per `generate` call).
    - ``vllm``: an in-process vLLM engine loaded from `model_path`; weights are pushed with
      ``update_weights(model)`` after each optimizer step. Options go to the backend.
    """
    if name == "hf":
        from verirl.rollout.hf import HFRolloutEngine

        if model is None or tokenizer is None:
            raise ValueError("the hf rollout engine needs the policy model and its tokenizer")
        return HFRolloutEngine(model, tokenizer, **options)
    if name == "vllm":
        try:
            from verirl.rollout import vllm as vllm_backend
        except ImportError as e:
            raise ConfigError(f"rollout.backend 'vllm' is not available here: {e}") from None
        engine_cls: Any = vllm_backend.VLLMRolloutEngine
        return engine_cls(model_path=model_path, tokenizer=tokenizer, **options)  # type: ignore[no-any-return]
    raise ConfigError(f"rollout.backend: unknown backend {name!r}; choose one of {BACKENDS}")
