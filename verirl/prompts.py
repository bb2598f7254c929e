"""The one rendering of an environment's prompt into the text a model continues, shared by
training (``verirl train``/``sft``/``dpo``/``rm``, curation) and evaluation (``verirl eval``), so a
model is evaluated on exactly the prompts it was trained on.

No torch and no transformers here: a tokenizer is anything with ``chat_template`` and
``apply_chat_template``.
"""

from __future__ import annotations

from typing import Any

from verirl.errors import ConfigError

Messages = list[dict[str, str]]
# auto: the tokenizer's chat template for chat messages when it has one; never: plain text
# always; always: every prompt (a plain string too, as one user message) through the template.
CHAT_TEMPLATE_MODES = ("auto", "always", "never")


def uses_chat_template(tokenizer: Any, chat_template: str = "auto") -> bool:
    """Whether chat messages go through the tokenizer's template under mode `chat_template`;
    ``always`` without a template is a ConfigError (the prompts would silently be plain)."""
    if chat_template not in CHAT_TEMPLATE_MODES:
        raise ConfigError(f"chat_template: {chat_template!r} is not one of {CHAT_TEMPLATE_MODES}")
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if chat_template == "always" and not has_template:
        raise ConfigError("chat_template: always, but the tokenizer has no chat template")
    return has_template and chat_template != "never"


def join_messages(messages: Messages) -> str:
    """Chat messages as plain text, for a tokenizer without a template: their contents, one
    per line (what a base model sees; the roles are the template's business).

    >>> join_messages([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+3?"}])
    'Be brief.\\n2+3?'
    """
    return "\n".join(m["content"] for m in messages)


def render_prompt(prompt: str | Messages, tokenizer: Any, chat_template: str = "auto") -> str:
    """Text the engine continues: chat messages through the tokenizer's chat template with the
    generation prompt (``uses_chat_template``), else ``join_messages``; a string is itself,
    except under ``always``, where it is one user message.

    >>> class Plain: chat_template = None
    >>> render_prompt([{"role": "user", "content": "2+3?"}], Plain())
    '2+3?'
    >>> render_prompt("2+3=", Plain(), "never")
    '2+3='
    """
    templated = uses_chat_template(tokenizer, chat_template)
    if isinstance(prompt, str):
        if chat_template != "always":
            return prompt
        prompt = [{"role": "user", "content": prompt}]
    if templated:
        return str(
            tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        )
    return join_messages(prompt)
