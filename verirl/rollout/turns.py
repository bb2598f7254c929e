"""Environment messages as tokens appended to a trajectory, never re-rendering earlier turns.

A multi-turn trajectory is the prompt's tokens, then the exact tokens the engine sampled for each
model turn, with the environment's messages (tool results, feedback) appended as tokens between
turns. The conversation is never re-rendered or re-tokenised: a chat template that rewrites
earlier turns (Qwen3 drops past ``<think>`` blocks; verl #3720, #6719; TRL #6250) would make the
trainer score tokens the policy never produced. Only the *new* messages are rendered:

- **With the chat template** (the prompt went through it: chat messages and ``chat_template``
  ``auto``/``always`` with a tokenizer that has one) the tokens are the template's *delta*: a
  fixed dummy conversation ``[user, assistant MARKER]`` is rendered with the new messages after
  it and ``add_generation_prompt=True``; the text after ``MARKER`` is the end of an assistant
  turn, the new messages and the header of the next assistant turn (Qwen2:
  ``<|im_end|>\\n<|im_start|>user\\n…<|im_end|>\\n<|im_start|>assistant\\n``). If the model's
  turn ended with an end token whose text opens the delta (``<|im_end|>``), that text is
  stripped (the model already sampled it); if the turn stopped otherwise (a stop string such as
  ``</python>``, or an end token the template does not use) the delta is kept whole, so the
  model always sees a well-formed conversation.
- **Without a template** (``chat_template: never``, a tokenizer without one, or a plain-text
  prompt) messages are written in ``PLAIN_FORMAT``: a tool result as
  ``"\\n<output>\\n{content}\\n</output>\\n"``, anything else (user feedback) as
  ``"\\n{content}\\n"``, concatenated in order. An end token the model sampled stays in the
  trajectory (it is the model's token); the text simply follows it.

The delta text is tokenised on its own (``add_special_tokens=False``): those are the tokens the
model is shown, so whatever boundary effects that has, the trajectory is self-consistent.
Environments document their prompts against these formats.

**Message contents never become special tokens.** Tool output is the model's code's output: a
program that prints ``<|im_end|>\n<|im_start|>assistant`` must not plant real turn markers in
the context. The template's own text (its headers and end tokens) is tokenised with special
tokens recognised; each message's content is tokenised with ``split_special_tokens=True``, so
``<|im_end|>`` in a content is the plain characters. The contents are located in the delta by
rendering each one as a placeholder first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from verirl.errors import ConfigError
from verirl.prompts import uses_chat_template

Message = dict[str, str]

#: The plain-text rendering (no chat template) of an environment message, by role; roles not
#: listed use the ``"default"`` entry. ``{content}`` is the message's content, verbatim.
PLAIN_FORMAT: dict[str, str] = {
    "tool": "\n<output>\n{content}\n</output>\n",
    "default": "\n{content}\n",
}

#: The dummy assistant turn the template delta is cut after: text no template rewrites.
MARKER = "VERIRL-TURN-MARKER-7f3a"
_DUMMY: list[Message] = [
    {"role": "user", "content": "VERIRL-USER-MARKER"},
    {"role": "assistant", "content": MARKER},
]


def uses_template(prompt: str | Sequence[Message], tokenizer: Any, chat_template: str) -> bool:
    """Whether the prompt was rendered through the chat template (``verirl.prompts``' rule:
    chat messages under mode ``auto``, every prompt under ``always``), so environment messages
    must be rendered by the template's delta as well.

    >>> class Tok: chat_template = "{{ x }}"
    >>> uses_template([{"role": "user", "content": "hi"}], Tok(), "auto")
    True
    >>> uses_template("hi", Tok(), "auto"), uses_template("hi", Tok(), "always")
    (False, True)
    >>> uses_template([{"role": "user", "content": "hi"}], Tok(), "never")
    False
    """
    if not uses_chat_template(tokenizer, chat_template):
        return False
    return chat_template == "always" or not isinstance(prompt, str)


def plain_text(messages: Sequence[Message]) -> str:
    """Messages in ``PLAIN_FORMAT``, concatenated.

    >>> plain_text([{"role": "tool", "content": "42"}, {"role": "user", "content": "Go on."}])
    '\\n<output>\\n42\\n</output>\\n\\nGo on.\\n'
    """
    return "".join(
        PLAIN_FORMAT.get(m["role"], PLAIN_FORMAT["default"]).format(content=m["content"])
        for m in messages
    )


def template_delta(messages: Sequence[Message], tokenizer: Any) -> str:
    """The chat template's text for `messages` following an assistant turn, through the next
    assistant header: the end of the assistant turn included (see the module docstring)."""
    return "".join(text for text, _ in _delta_segments(messages, tokenizer))


def _placeholder(i: int) -> str:
    return f"VERIRL-CONTENT-{i}-7f3a"


def _delta_segments(messages: Sequence[Message], tokenizer: Any) -> list[tuple[str, bool]]:
    """The template delta as (text, is_content) pieces: the template's own text, and each
    message's content verbatim where the template placed it."""
    masked = [{**m, "content": _placeholder(i)} for i, m in enumerate(messages)]
    try:
        full = str(
            tokenizer.apply_chat_template(
                [*_DUMMY, *masked], tokenize=False, add_generation_prompt=True
            )
        )
    except Exception as e:  # jinja raises for roles a template does not know (e.g. "tool")
        roles = sorted({m["role"] for m in messages})
        raise ConfigError(
            f"the chat template cannot render environment messages with roles {roles}: "
            f"{type(e).__name__}: {e}. Use roles the template supports or chat_template: never."
        ) from e
    at = full.rfind(MARKER)
    if at < 0:
        raise ConfigError("the chat template dropped the assistant turn's content; cannot "
                          "render environment messages after it (use chat_template: never)")  # fmt: skip
    rest = full[at + len(MARKER) :]
    pieces: list[tuple[str, bool]] = []
    for i, m in enumerate(messages):
        ph = _placeholder(i)
        if ph not in rest:  # the template leaves this content out
            continue
        before, rest = rest.split(ph, 1)
        pieces += [(before, False), (m["content"], True)]
    pieces.append((rest, False))
    return [(t, c) for t, c in pieces if t]


def _encode(tokenizer: Any, text: str, content: bool) -> list[int]:
    """Token ids of `text`; a content's special-token strings stay plain characters."""
    if not content:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])


def render_messages(
    messages: Sequence[Message],
    tokenizer: Any,
    templated: bool,
    ended_with: int | None = None,
) -> tuple[list[int], str]:
    """(token ids to append, readable text) for environment `messages` after a model turn.

    `templated`: the trajectory follows the chat template (``uses_template``). `ended_with`:
    the end token the model's turn ended with, None when it stopped otherwise (a stop string,
    the length limit). The readable text is what decoding the whole trajectory would show: with
    a template it keeps the end-of-turn text even where the model sampled it, since engines
    leave the end token out of a turn's text. Contents never yield special tokens (module
    docstring).
    """
    if not messages:
        return [], ""
    if not templated:
        text = plain_text(messages)
        return _encode(tokenizer, text, content=True), text
    pieces = _delta_segments(messages, tokenizer)
    text = "".join(t for t, _ in pieces)
    if ended_with is not None and pieces and not pieces[0][1]:
        end_text = tokenizer.decode([ended_with], skip_special_tokens=False)
        if end_text and pieces[0][0].startswith(end_text):
            pieces[0] = (pieces[0][0][len(end_text) :], False)
    ids: list[int] = []
    for t, content in pieces:
        if t:
            ids += _encode(tokenizer, t, content)
    return ids, text
