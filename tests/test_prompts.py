"""verirl.prompts: one rendering of an environment's prompt for training and evaluation.

Before it, training joined chat messages by one newline and evaluation by a blank line, so a
model without a chat template was evaluated on prompts it had never been trained on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from verirl.errors import ConfigError
from verirl.prompts import join_messages, render_prompt, uses_chat_template

TEMPLATE = (
    "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


class Tok:
    """A tokenizer as render_prompt sees one: a template string (or None) and its renderer."""

    def __init__(self, chat_template: str | None) -> None:
        self.chat_template = chat_template

    def apply_chat_template(
        self, messages: Any, tokenize: bool, add_generation_prompt: bool
    ) -> str:
        assert not tokenize
        tail = "<assistant>" if add_generation_prompt else ""
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + tail


MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+3?"}]


@pytest.mark.parametrize(
    ("prompt", "template", "mode", "want"),
    [
        (MSGS, None, "auto", "Be brief.\n2+3?"),  # no template: contents, one per line
        (MSGS, TEMPLATE, "auto", "<system>Be brief.<user>2+3?<assistant>"),
        (MSGS, TEMPLATE, "never", "Be brief.\n2+3?"),
        (MSGS, TEMPLATE, "always", "<system>Be brief.<user>2+3?<assistant>"),
        ("2+3=", TEMPLATE, "auto", "2+3="),  # plain text is itself
        ("2+3=", None, "never", "2+3="),
        ("2+3=", TEMPLATE, "always", "<user>2+3=<assistant>"),  # one user message
    ],
)
def test_render_prompt_table(prompt: Any, template: str | None, mode: str, want: str) -> None:
    assert render_prompt(prompt, Tok(template), mode) == want


def test_bad_modes_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="always, but the tokenizer has no chat template"):
        render_prompt("2+3=", Tok(None), "always")
    with pytest.raises(ConfigError, match="'sometimes' is not one of"):
        uses_chat_template(Tok(TEMPLATE), "sometimes")
    assert join_messages([]) == ""


def system_arithmetic() -> Any:
    """Arithmetic with a system message before the question: a two-message chat prompt."""
    from verirl.envs.arithmetic import ArithmeticEnv

    class Env(ArithmeticEnv):
        def prompt(self, row: Any) -> Any:
            return [
                {"role": "system", "content": "Reply with the integer only."},
                {"role": "user", "content": f"What is {row['question']}?"},
            ]

    return Env(train_size=2, test_size=2)


@pytest.mark.parametrize("template", [None, TEMPLATE])
def test_training_and_evaluation_render_the_same_prompt(
    template: str | None, tiny_model_dir: Path
) -> None:
    """The text ``verirl train`` samples from for an env row (``render_prompt(env.prompt(row),
    tok, model.chat_template)``) is the text ``verirl eval`` samples from for the same row
    (``load_problems`` then ``render_prompt(problem.prompt, tok, suite.chat_template)``), each
    with its config's default, for the real tokenizer with and without a chat template."""
    import verirl.evals.models
    from transformers import AutoTokenizer
    from verirl.evals import runner
    from verirl.evals.suite import EnvSpec, SuiteConfig

    import verirl.train.model
    from verirl.train.config import ModelSection

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = template
    env = system_arithmetic()
    suite = SuiteConfig(envs=[EnvSpec(name="arithmetic", split="test")])
    problems = runner.load_problems(suite, {"arithmetic": env})
    mode = ModelSection(path="unused").chat_template
    for problem, row in zip(problems, env.rows("test"), strict=True):
        trained = verirl.train.model.render_prompt(env.prompt(row), tok, mode)
        evaluated = runner.render_prompt(problem.prompt, tok, suite.chat_template)
        assert trained == evaluated
        q = row["question"]
        assert trained == (
            f"Reply with the integer only.\nWhat is {q}?"
            if template is None
            else f"<system>Reply with the integer only.<user>What is {q}?<assistant>"
        )
    assert verirl.train.model.render_prompt is verirl.evals.models.render_prompt is render_prompt
