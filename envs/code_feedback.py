"""``code_feedback``: the model submits a function, sees why the tests failed, and may retry.

Problems are HumanEval-format rows (``prompt``, ``test``, ``entry_point``): the 164 bundled
HumanEval problems by default, or ``data=`` rows as for the ``code`` env. Each submission runs
through the same sandboxed unit-test runner and trusted-side verdict as `verirl.envs.code_envs`
(`verirl.rewards.code.function_verdict`). A passing submission ends the episode; otherwise the
environment answers with a ``user`` message holding the verdict and, with ``feedback="detail"``,
the failing assertion or the program's error (``assert #0 failed: 1 == 2 is false``), and the
model tries again, up to ``max_turns`` submissions. The reward is the final submission's alone.
Each submission counts as a tool call; one that crashed, timed out or ran out of memory as a
tool error.

What a policy could game: with ``detail`` the feedback shows the failing case's values, so a
policy can special-case the cases it was shown; the final submission must still pass the whole
test, and ``feedback="status"`` shows only the verdict's kind. A sandbox that is down raises
`InfraError` (the episode is ``infra_error``, masked), never a wrong answer.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from functools import cache
from typing import Any, ClassVar

from verirl.envs.base import Prompt, Row
from verirl.envs.code_envs import HumanEvalEnv, _FunctionTestEnv, humaneval_problems
from verirl.envs.multiturn import Episode, InfraError, Turn
from verirl.envs.python_tool import clip
from verirl.envs.registry import register_env
from verirl.rewards.result import RewardResult

CODE_PROMPT = (
    "Complete this Python function. Reply with the complete function in one ```python code "
    "block.\n\n```python\n{prompt}```"
)
RETRY = "Fix the function and reply with the complete corrected function in one ```python block."
#: What ``feedback="status"`` says for each failing verdict (no test values).
STATUS_TEXT = {
    "incorrect": "a test assertion failed",
    "error": "the program raised an error or did not run",
    "timeout": "the program ran past the time limit",
    "memory": "the program ran out of memory",
    "format_error": "no code found in the reply",
}
FEEDBACK_CHARS = 800  # the verdict's detail shown to the model, at most


@register_env
class CodeFeedbackEnv(_FunctionTestEnv):
    name = "code_feedback"
    description = (
        "Python functions with unit tests (HumanEval bundled, or HumanEval-format rows); "
        "failing test output comes back and the model may resubmit (multi-turn)."
    )
    reward_kinds = ("unit-tests",)
    example_row: ClassVar[Row] = HumanEvalEnv.example_row
    max_turns = 3
    protocol = (
        "each model turn is a submission (a ```python block or the function body); the env runs "
        "the unit tests in the sandbox: a pass ends the episode, else a 'user' message gives the "
        "verdict (feedback=detail: the failing assertion or the error) and asks for a fix, up to "
        "max_turns submissions. Only the final submission is scored. A sandbox that is down is "
        "infra_error."
    )

    def __init__(
        self,
        data: str | None = None,
        max_turns: int = 3,
        feedback: str = "detail",
        prompt_style: str = "chat",
        sandbox: str = "auto",
        workers: int | None = None,
        batch_size: int = 16,
        timeout: float = 10.0,
        memory_mb: int = 512,
    ) -> None:
        super().__init__(data, sandbox, workers, batch_size, timeout, memory_mb)
        if feedback not in ("detail", "status"):
            raise ValueError(f"feedback must be 'detail' or 'status', got {feedback!r}")
        if prompt_style not in ("chat", "text"):
            raise ValueError(f"prompt_style must be 'chat' or 'text', got {prompt_style!r}")
        if max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}")
        # The class default is the option's default; an option sets this instance's limit.
        self.max_turns = max_turns
        self.feedback, self.prompt_style = feedback, prompt_style
        self._pool_lock = threading.Lock()

    @cache  # noqa: B019 - environments live for a whole run; the cache is the dataset
    def rows(self, split: str = "train") -> Sequence[Row]:
        """``data`` rows, else HumanEval's 164 problems (one split: "train" and "test" alike)."""
        if split not in ("train", "test"):
            raise ValueError(f"unknown split {split!r}; code_feedback has 'train' and 'test'")
        return self._file_rows() if self.data else humaneval_problems()

    def prompt(self, row: Row) -> Prompt:
        text = CODE_PROMPT.format(prompt=row["prompt"])
        return text if self.prompt_style == "text" else [{"role": "user", "content": text}]

    def _pool(self, workers: int | None) -> Any:
        with self._pool_lock:  # episodes respond from several threads: one pool, not several
            return super()._pool(workers)

    # ---- turns --------------------------------------------------------------------------------
    def respond(self, episode: Episode, text: str) -> Turn:
        """Run the tests on this submission: done when they pass, else feedback to retry."""
        verdict = self.score(text, episode.row)
        if verdict.status == "infra_error":
            raise InfraError(f"{self.name}: {verdict.detail}")
        episode.state["last"] = (text, verdict)  # score_episode reuses it: no second run
        crashed = verdict.status in ("error", "timeout", "memory")
        if verdict.ok:
            return Turn(done=True, tool_calls=1)
        return Turn(messages=[{"role": "user", "content": self.feedback_text(verdict)}],
                    tool_calls=1, tool_errors=int(crashed))  # fmt: skip

    def feedback_text(self, verdict: RewardResult) -> str:
        """The message after a failed submission.

        >>> env = CodeFeedbackEnv(feedback="status")
        >>> env.feedback_text(RewardResult(0.0, "incorrect", detail="assert #0 failed: 1 == 2"))
        'The tests failed: a test assertion failed.\\nFix the function and reply with the complete corrected function in one ```python block.'
        """
        why = STATUS_TEXT.get(verdict.status, verdict.status)
        if self.feedback == "detail" and verdict.detail.strip():
            return (
                f"The tests failed: {why}:\n{clip(verdict.detail.strip(), FEEDBACK_CHARS)}\n{RETRY}"
            )
        return f"The tests failed: {why}.\n{RETRY}"

    def score_episode(self, episode: Episode) -> RewardResult:
        """The final submission's verdict (the one `respond` already ran, when it did)."""
        last = episode.state.get("last")
        final = episode.final_text
        if last is not None and last[0] == final:
            return last[1]  # type: ignore[no-any-return]
        return self.score(final, episode.row)
