"""The multi-turn contract: the model acts, the environment answers, the model continues.

An episode starts from a row (``start``). After every model turn the environment's ``respond``
returns a ``Turn``: zero or more messages to append (tool results, feedback) or ``done``. When
the episode ends (``done``, the turn limit, or the token budget) ``score_episode`` scores the
whole trajectory with a ``RewardResult`` as single-turn envs do.

Every ``Environment`` is the one-turn case: ``max_turns = 1``, ``respond`` ends the episode and
``score_episode`` calls ``score`` on the only turn, so single-turn envs need no change.

The trainer never re-tokenises a conversation: the trajectory is the exact token ids the
engine sampled, with the environment's messages rendered (``verirl.rollout.turns``) and
appended as tokens, and a mask that is 1 only at the model's own tokens. ``Episode.messages``
is the readable copy (for samples.jsonl and the scorer), never the source of training tokens.

Failures: a tool timeout or crash caused by the model's code is a tool *result* (a message,
counted in ``tool_errors``); a sandbox or checker that is down raises ``InfraError`` from
``respond`` and the episode ends as ``infra_error`` (masked from the loss, as today).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from verirl.envs.base import Row

Message = dict[str, str]  # {"role": "user" | "assistant" | "tool" | "system", "content": ...}


class InfraError(Exception):
    """Raised by ``respond`` when something outside the completion failed (sandbox down):
    the episode ends as ``infra_error`` and is masked from the loss."""


@dataclass
class Turn:
    """The environment's answer to one model turn: messages appended to the conversation
    (tool results, feedback; the model continues after them), or ``done`` (the episode ends;
    its messages, if any, are recorded but not shown to the model). ``tool_calls`` and
    ``tool_errors`` count this turn's tool use for the metrics."""

    messages: list[Message] = field(default_factory=list)
    done: bool = False
    tool_calls: int = 0
    tool_errors: int = 0


@dataclass
class Episode:
    """One trajectory in progress. ``messages``: the conversation with roles, the prompt's
    messages first; ``turns``: model turns taken; ``truncated``: ended by the turn limit or the
    token budget rather than by the environment; ``state``: the environment's own scratch
    (``start`` returns it)."""

    row: Row
    messages: list[Message] = field(default_factory=list)
    turns: int = 0
    tool_calls: int = 0
    tool_errors: int = 0
    truncated: bool = False
    done: bool = False
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def model_turns(self) -> list[str]:
        """The text of every model turn, in order."""
        return [m["content"] for m in self.messages if m["role"] == "assistant"]

    @property
    def final_text(self) -> str:
        """The last model turn (the final submission), "" before the first."""
        turns = self.model_turns
        return turns[-1] if turns else ""

    @property
    def completion_text(self) -> str:
        """Everything after the prompt as plain text, turns joined in order (model turns and
        environment messages), for scorers that read the whole transcript."""
        start = next((i for i, m in enumerate(self.messages) if m["role"] == "assistant"),
                     len(self.messages))  # fmt: skip
        return "".join(m["content"] for m in self.messages[start:])
