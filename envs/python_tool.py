"""``python_tool``: word problems where the model may run Python in the sandbox mid-reasoning.

The protocol (``PythonToolEnv.protocol``): the model writes ``<python>code</python>`` (or the
Hermes/Qwen2.5 tool call ``<tool_call>{"name": "python", "arguments": {"code": ...}}
</tool_call>``); the turn stops there, the code runs in the sandbox and its stdout comes back as
a ``tool`` message, rendered by `verirl.rollout.turns` (plain text: ``<output>…</output>``; with a
chat template: the template's tool message, ``<tool_response>`` for Qwen2.5). A turn without a
tool call is the final answer: the episode ends and only that turn is scored, by the math reward
(``\\boxed{}`` or "The answer is N"; hedges such as "3 or 5" and lists score 0).

Why these rules (a policy games whatever it can):
- the gold never reaches the sandbox: a job carries the model's code and nothing else, so no
  code can print the answer it was not given; the sandbox gives it no host file or variable;
- tool output is never scored: a program that prints 100 candidates earns nothing unless the
  final turn commits to one (no last-number fallback by default);
- the model's own failures (exceptions, timeouts, memory, output floods) are tool *results*
  counted in ``tool_errors``; only a sandbox that is down raises `InfraError` (masked);
- output is cut to ``output_chars`` so a program cannot blow the context.

Rows are generated offline from ``seed`` (``Random(f"{seed}:{split}:{i}")`` per row, as in
`verirl.envs.arithmetic`; train/test disjoint by a hash of the question): 3-digit
multiplications and short multi-step word problems. ``data=`` takes JSONL rows
``{question, answer}`` instead (one file, or ``{"train": path, "test": path}``).
"""

from __future__ import annotations

import json
import random
import re
import threading
import zlib
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import Any, ClassVar

from verirl.envs.base import Environment, Prompt, Row
from verirl.envs.multiturn import Episode, InfraError, Turn
from verirl.envs.registry import register_env
from verirl.rewards.code import extract_code
from verirl.rewards.math_pool import CheckerPool
from verirl.rewards.math_reward import math_reward
from verirl.rewards.result import RewardResult
from verirl.sandboxes.sandbox import Job, RunResult

from verirl.jsonl import read_jsonl

PYTHON_TAG_PROMPT = (
    "{question}\n\n"
    "You can run Python: write code between <python> and </python> and stop; what it prints "
    "is shown to you right after the call. Use print() to see results. When you know the "
    "answer, reply without code and put the final answer within \\boxed{{}}."
)
TOOL_CALL_PROMPT = (
    "{question}\n\n"
    "You can run Python with the tool `python`: write\n"
    '<tool_call>\n{{"name": "python", "arguments": {{"code": "print(2 + 2)"}}}}\n</tool_call>\n'
    "and stop; what the code prints comes back to you as the tool's response. Use print() to "
    "see results. When you know the answer, reply without a tool call and put the final answer "
    "within \\boxed{{}}."
)
PROMPTS = {"python_tag": PYTHON_TAG_PROMPT, "tool_call": TOOL_CALL_PROMPT}
_INTEGER = re.compile(r"-?\d+")
_CALL_OPEN = re.compile(r"<python>|<tool_call>")
_TOOL_CALL = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)
_PYTHON = re.compile(r"<python>(.*?)(?:</python>|\Z)", re.DOTALL)
# The runner's own frame in a traceback: not the model's code, noise in its context.
_RUNNER_FRAME = re.compile(r'^\s*File "<string>", line \d+, in run_stdio\s*$')


def find_tool_call(text: str) -> tuple[str, str | None] | None:
    """The first tool call in a model turn: ``(code, None)``, or ``("", why)`` for a call that
    cannot be run (bad JSON, another tool); None when the turn has no call (a final answer).
    The closing tag is optional: engines may leave the stop string out of the turn's text.

    >>> find_tool_call("Let me compute.<python>print(6*7)</python>")
    ('print(6*7)', None)
    >>> find_tool_call('<tool_call>{"name": "python", "arguments": {"code": "print(1)"}}')
    ('print(1)', None)
    >>> find_tool_call("So the answer is \\\\boxed{42}.") is None
    True
    """
    opened = _CALL_OPEN.search(text)
    if opened is None:
        return None
    if opened.group() == "<python>":
        m = _PYTHON.match(text, opened.start())
        return (extract_code(m.group(1)) if m else "", None)
    m = _TOOL_CALL.match(text, opened.start())
    body = m.group(1).strip() if m else ""
    try:
        call = json.loads(body)
    except (ValueError, RecursionError) as e:  # nesting too deep is the model's doing too
        return "", f"the tool call is not valid JSON ({type(e).__name__}: {str(e)[:100]})"
    if not isinstance(call, dict) or call.get("name") != "python":
        name = call.get("name") if isinstance(call, dict) else None
        return "", f"unknown tool {name!r}; the only tool is 'python'"
    args = call.get("arguments", {})
    if isinstance(args, str):  # some models send the arguments as a JSON string
        try:
            args = json.loads(args)
        except (ValueError, RecursionError):
            args = {"code": args}
    code = args.get("code") if isinstance(args, dict) else None
    if not isinstance(code, str):
        return "", 'the python tool needs {"arguments": {"code": "..."}}'
    return code, None


def clip(text: str, limit: int, keep: str = "head") -> str:
    """At most `limit` characters of `text` plus a note of how much was cut (the head of
    normal output, the tail of a traceback, where the error is).

    >>> clip("abcdef", 3), clip("abcdef", 3, keep="tail")
    ('abc\\n... [3 more characters cut]', '[3 characters cut] ...\\ndef')
    """
    if len(text) <= limit:
        return text
    cut = len(text) - limit
    if keep == "tail":
        return f"[{cut} characters cut] ...\n{text[-limit:]}"
    return f"{text[:limit]}\n... [{cut} more characters cut]"


def tool_result(run: RunResult, limit: int) -> tuple[str, bool]:
    """The tool message for one run and whether it is a tool error. A sandbox failure
    (``run.infra``) is not a result: it raises `InfraError`.

    >>> tool_result(RunResult(exit=0, stdout="42\\n"), 100)
    ('42', False)
    >>> tool_result(RunResult(timed_out=True, wall=5.0), 100)
    ('timeout: the code was stopped after 5.0 s', True)
    """
    if run.infra:
        raise InfraError(f"python_tool: sandbox: {run.infra}")
    out = run.stdout.rstrip("\n")
    if run.timed_out:
        err = f"timeout: the code was stopped after {run.wall:.1f} s"
    elif run.harness_killed:
        err = "error: the code killed the sandbox"
    elif run.exit == 0 and not run.truncated:
        return (clip(out, limit) if out else "(no output)"), False
    elif run.truncated or run.stderr.rstrip().endswith("File too large"):  # RLIMIT_FSIZE
        err = "error: output limit exceeded (the program printed too much)"
    else:
        lines = [ln for ln in run.stderr.rstrip().splitlines() if not _RUNNER_FRAME.match(ln)]
        how = f"exit code {run.exit}" if run.exit is not None else f"signal {run.signal}"
        err = "\n".join(lines[-12:]) or f"error: the code failed ({how})"
    err = clip(err, limit // 2 if out else limit, keep="tail")
    return (f"{clip(out, limit - len(err))}\n{err}" if out else err), True


class SandboxedTool:
    """The environment's sandbox for tool calls: created on the first call (``envs show`` and
    dataset users never start one), once even when episodes respond from several threads;
    ``attach`` shares a pool owned elsewhere. Any failure to get or use one is `InfraError`."""

    def __init__(self, kind: str, workers: int | None, name: str) -> None:
        if kind not in ("docker", "process", "auto"):
            raise ValueError(f"sandbox must be 'docker', 'process' or 'auto', got {kind!r}")
        self.kind, self.workers, self.name = kind, workers, name
        self.sandbox: Any = None
        self.owned = True
        self._lock = threading.Lock()

    def attach(self, sandbox: Any) -> None:
        self.close()
        self.sandbox, self.owned = sandbox, False

    def run(self, job: Job) -> RunResult:
        try:
            with self._lock:
                if self.sandbox is None:
                    from verirl.sandboxes.sandbox import make_sandbox

                    self.sandbox = make_sandbox(self.kind, workers=self.workers or 2)  # type: ignore[arg-type]
            return self.sandbox.run([job])[0]  # type: ignore[no-any-return]
        except Exception as e:  # no sandbox at all (engine down, image missing, closed)
            raise InfraError(f"{self.name}: sandbox unavailable: {type(e).__name__}: {e}") from e

    def close(self) -> None:
        if self.sandbox is not None and self.owned:
            self.sandbox.close()
        self.sandbox, self.owned = None, True


# ---- offline problems: (template, sampler) -> question text and integer answer ---------------
def _mul(r: random.Random) -> tuple[str, int]:
    a, b = r.randint(100, 999), r.randint(100, 999)
    return f"What is {a} * {b}?", a * b


_WORD: list[tuple[str, Callable[[dict[str, int]], int]]] = [
    ("A warehouse has {a} crates with {b} bottles in each. {c} bottles are broken. How many "
     "bottles are not broken?", lambda v: v["a"] * v["b"] - v["c"]),
    ("A train runs at {a} km per hour for {b} hours, then another {c} km. How many km does it "
     "travel in all?", lambda v: v["a"] * v["b"] + v["c"]),
    ("A farmer plants {a} rows of {b} trees and {c} rows of {d} trees. How many trees does she "
     "plant?", lambda v: v["a"] * v["b"] + v["c"] * v["d"]),
    ("{a} students each pay {b} dollars for a trip. The bus costs {c} dollars and the rest is "
     "shared equally by {d} teachers as a gift. How many dollars does each teacher get, "
     "rounded down?", lambda v: (v["a"] * v["b"] - v["c"]) // v["d"]),
]  # fmt: skip


def _word(r: random.Random) -> tuple[str, int]:
    template, answer = r.choice(_WORD)
    v = {"a": r.randint(12, 99), "b": r.randint(12, 99), "d": r.randint(2, 9)}
    v["c"] = r.randint(10, v["a"] * v["b"] // 2)
    return template.format(**v), answer(v)


TASKS: dict[str, Callable[[random.Random], tuple[str, int]]] = {"mul": _mul, "word": _word}


@register_env
class PythonToolEnv(Environment):
    name = "python_tool"
    description = (
        "Math word problems (seeded 3-digit multiplications and multi-step problems, or a "
        "JSONL); the model may run Python in the sandbox via <python></python> or a tool call."
    )
    reward_kinds = ("math-equivalence", "tool-use")
    fields = ("question", "answer")
    example_row: ClassVar[Row] = {"question": "What is 347 * 862?", "answer": "299114"}
    max_turns = 4
    turn_stop = ("</python>", "</tool_call>")
    protocol = (
        'the model may call Python: <python>code</python> or <tool_call>{"name": "python", '
        '"arguments": {"code": ...}}</tool_call> (the turn stops there); the env answers '
        "with a 'tool' message: the code's stdout, or its error's last lines, or 'timeout' "
        "(tool errors), cut to output_chars. A turn without a call ends the episode and only "
        "it is scored: the math reward on \\boxed{} or 'The answer is N', hedges score 0. "
        "A sandbox that is down is infra_error."
    )

    def __init__(
        self,
        data: str | Mapping[str, str] | None = None,
        seed: int = 0,
        train_size: int = 2000,
        test_size: int = 200,
        tasks: str = "mul,word",
        max_turns: int = 4,
        tool_format: str = "python_tag",
        prompt_template: str | None = None,
        prompt_style: str = "chat",
        tool_role: str = "tool",
        sandbox: str = "auto",
        workers: int | None = None,
        timeout: float = 5.0,
        memory_mb: int = 256,
        output_chars: int = 1000,
        last_number_fallback: bool = False,
        test_fraction: float = 0.2,
    ) -> None:
        names = [t.strip() for t in tasks.split(",") if t.strip()]
        if not names or set(names) - set(TASKS):
            raise ValueError(f"tasks must be a comma list of {', '.join(TASKS)}, got {tasks!r}")
        if tool_format not in PROMPTS:
            raise ValueError(f"tool_format must be one of {list(PROMPTS)}, got {tool_format!r}")
        if prompt_style not in ("chat", "text"):
            raise ValueError(f"prompt_style must be 'chat' or 'text', got {prompt_style!r}")
        if tool_role not in ("tool", "user"):
            raise ValueError(f"tool_role must be 'tool' or 'user', got {tool_role!r}")
        if max_turns < 1 or timeout <= 0 or memory_mb < 32 or output_chars < 64:
            raise ValueError(
                "need max_turns >= 1, timeout > 0, memory_mb >= 32, output_chars >= 64"
            )
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
        template = prompt_template or PROMPTS[tool_format]
        if "{question}" not in template:
            raise ValueError("prompt_template must contain '{question}'")
        self.data, self.seed, self.tasks = data, seed, names
        self.sizes = {"train": train_size, "test": test_size}
        # The class default is the option's default; an option sets this instance's limit.
        self.max_turns = max_turns
        self.prompt_template, self.prompt_style, self.tool_role = template, prompt_style, tool_role
        self.timeout, self.memory_mb, self.output_chars = timeout, memory_mb, output_chars
        self.last_number_fallback, self.test_fraction = last_number_fallback, test_fraction
        self.tool = SandboxedTool(sandbox, workers, self.name)
        self.pool = CheckerPool(timeout_s=0.75)  # symbolic checks of non-integer golds only

    # ---- data ---------------------------------------------------------------------------------
    def make_row(self, split: str, index: int) -> Row:
        """The `index`-th problem of `split`, a pure function of (seed, tasks, split, index)."""
        rng = random.Random(f"{self.seed}:{split}:{index}")
        while True:
            question, answer = TASKS[rng.choice(self.tasks)](rng)
            bucket = zlib.crc32(f"{self.seed}:{question}".encode()) % 10_000
            if (bucket < self.test_fraction * 10_000) == (split == "test"):
                return {"id": f"{split}-{index}", "question": question, "answer": str(answer)}

    @cache  # noqa: B019 - environments live for a whole run; the cache is the dataset
    def rows(self, split: str = "train") -> Sequence[Row]:
        if split not in self.sizes:
            raise ValueError(f"unknown split {split!r}; python_tool has 'train' and 'test'")
        if self.data is None:
            return tuple(self.make_row(split, i) for i in range(self.sizes[split]))
        path = self.split_file(self.data, split)
        rows = read_jsonl(path)
        self.validate_rows(rows, path)
        if any(not _INTEGER.fullmatch(str(r["answer"]).strip()) for r in rows):
            # Golds beyond integers need sympy: start its checker in the background now (its
            # import takes seconds), as `verirl.envs.math_envs` does. Integer golds rarely do.
            self.pool.start()
        return tuple({**r, "question": str(r["question"]), "answer": str(r["answer"])}
                     for r in rows)  # fmt: skip

    def prompt(self, row: Row) -> Prompt:
        text = self.prompt_template.format(question=row["question"])
        return text if self.prompt_style == "text" else [{"role": "user", "content": text}]

    # ---- turns --------------------------------------------------------------------------------
    def respond(self, episode: Episode, text: str) -> Turn:
        """Run the turn's tool call and answer with its result; no call: the episode is done."""
        call = find_tool_call(text)
        if call is None:
            return Turn(done=True)
        code, refused = call
        if refused is not None:
            content, failed = f"error: {refused}", True
        else:
            job = Job("stdio", code, timeout=self.timeout, memory_mb=self.memory_mb,
                      output_bytes=max(1 << 16, 4 * self.output_chars))  # fmt: skip
            content, failed = tool_result(self.tool.run(job), self.output_chars)
        message = {"role": self.tool_role, "content": content}
        return Turn(messages=[message], tool_calls=1, tool_errors=int(failed))

    def score(self, completion: str, row: Row) -> RewardResult:
        """The math reward on the final turn; a turn that is still a tool call has no answer."""
        if find_tool_call(completion) is not None:
            return RewardResult(0.0, "format_error", {"correct": 0.0},
                                "the last turn is a tool call, not a final answer")  # fmt: skip
        return math_reward(completion, str(row["answer"]), self.pool, self.last_number_fallback)

    def attach_sandbox(self, sandbox: Any) -> None:
        """Run tool calls in an existing (shared) sandbox; ``close()`` then leaves it open."""
        self.tool.attach(sandbox)

    def close(self) -> None:
        self.tool.close()
        self.pool.close()
