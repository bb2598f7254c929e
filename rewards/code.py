"""Code rewards: extract the program from a completion, and decide verdicts on the trusted side.

The sandbox (`verirl.sandboxes.sandbox`, which documents the threat model) only runs programs
and reports what happened; the verdict is made here from data the program cannot forge:

- function tests (HumanEval's ``check(candidate)``, Chen et al. 2021): the harness (trusted
  code under its own uid, comparing plain copies of the candidate's values) reports once,
  with this run's nonce; a pass needs the test to have returned with its assertions run;
- stdio tests (APPS/LiveCodeBench style): the program's stdout against the expected output,
  line by line, ignoring trailing whitespace and trailing blank lines.

Reward 1.0 only if every test ran and every comparison held (``correct``); a failed assertion
is ``incorrect``; a crash (exception, ``sys.exit``, a killed runner, a compile error) is
``error``; ``timeout`` and ``memory`` name the limit; ``infra_error`` means the sandbox failed.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Sequence
from typing import Any

from verirl.rewards.result import RewardResult
from verirl.sandboxes.sandbox import RunResult

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_code(completion: str) -> str:
    """The program in a completion: the first ```python (or untagged) fenced block; the raw
    text when there is no fence. An unclosed final fence (generation stopped) counts.

    >>> extract_code("Here:\\n```python\\ndef f():\\n    return 1\\n```\\nDone.")
    'def f():\\n    return 1\\n'
    >>> extract_code("    return a + b\\n")
    '    return a + b\\n'
    >>> extract_code("```py\\nprint(1)")
    'print(1)'
    """
    blocks = _FENCE.findall(completion)
    for lang, body in blocks:
        if lang.lower() in ("python", "py", "python3"):
            return body
    for lang, body in blocks:
        if not lang:
            return body
    return completion


def defines_function(code: str, name: str) -> bool:
    """Whether `code` parses and defines ``name`` at top level.

    >>> defines_function("def f(x):\\n    return x", "f"), defines_function("return x", "f")
    (True, False)
    """
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):  # ValueError: a lone surrogate, a NUL byte
        return False
    return any(
        isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == name for n in tree.body
    )


def function_program(prompt: str, completion: str, entry_point: str) -> str:
    """HumanEval program text: a completion that (re)defines ``entry_point`` follows the prompt
    (which keeps its imports and helpers); otherwise it continues the prompt's function body.

    >>> function_program("def f():\\n", "    return 1\\n", "f")
    'def f():\\n    return 1\\n'
    """
    code = extract_code(completion)
    if defines_function(code, entry_point):
        return prompt + "\n" + code
    return prompt + code


def outputs_match(got: str, want: str) -> bool:
    """Equal up to trailing whitespace on each line and trailing blank lines.

    >>> outputs_match("1 2 \\n3\\n\\n", "1 2\\n3"), outputs_match("1 2\\n", "1  2\\n")
    (True, False)
    """

    def norm(s: str) -> list[str]:
        lines = [ln.rstrip() for ln in s.replace("\r\n", "\n").split("\n")]
        while lines and not lines[-1]:
            lines.pop()
        return lines

    return norm(got) == norm(want)


def _short(v: Any, n: int = 120) -> str:
    """A bounded repr that never raises (an int past repr's 4300-digit limit, a cycle)."""
    try:
        s = repr(v)
    except Exception:
        return f"<{type(v).__name__} that has no repr>"
    return s if len(s) <= n else s[: n - 3] + "..."


def _parse_report(r: RunResult, nonce: str) -> tuple[str, str, int, int] | None:
    """The harness's report ``[kind, detail, asserts_held, asserts_in_source]``, or None if
    there is no single well-formed report line carrying the nonce."""
    lines = [ln for ln in r.report.split("\n") if ln.startswith(nonce + ":")]
    if len(lines) != 1:
        return None
    try:
        kind, detail, held, n_source = json.loads(lines[0][len(nonce) + 1 :])
    except (ValueError, TypeError, RecursionError):
        return None
    if not (isinstance(kind, str) and isinstance(detail, str)):
        return None
    if not (isinstance(held, int) and isinstance(n_source, int)):
        return None
    return kind, detail, held, n_source


def _limits_verdict(r: RunResult) -> RewardResult | None:
    """Verdicts that come from the sandbox itself (trusted), before any output is read."""
    if r.infra:
        return RewardResult.infra(f"sandbox: {r.infra}")
    if r.harness_killed:
        return RewardResult(0.0, "error", detail="the program killed or stopped the sandbox runner")
    if r.timed_out:
        return RewardResult(0.0, "timeout", detail=f"wall time exceeded ({r.wall:.1f}s)")
    return None


def _crashed_of_memory(stderr: str) -> bool:
    """A Python traceback that ends in MemoryError (only consulted for a failed run: a
    correct program may print the word to stderr)."""
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    return bool(lines) and lines[-1].startswith("MemoryError")


def function_verdict(r: RunResult, nonce: str) -> RewardResult:
    """Verdict of a function-test run (see the module docstring)."""
    limit = _limits_verdict(r)
    if limit is not None:
        return limit
    rep = _parse_report(r, nonce)
    if rep is None:
        if _crashed_of_memory(r.stderr):
            return RewardResult(0.0, "memory", detail="memory limit exceeded")
        how = f"exit code {r.exit}" if r.exit is not None else f"signal {r.signal}"
        why = "output limit exceeded; " if r.truncated else ""
        return RewardResult(0.0, "error", detail=f"{why}no test report ({how}): {r.stderr[-300:]}")
    kind, detail, held, n_source = rep
    if kind == "done":
        if n_source and not held:
            return RewardResult(0.0, "incorrect", detail="the test returned with no assertion run")
        return RewardResult(1.0, "correct", detail=detail)
    if kind == "memory":
        return RewardResult(0.0, "memory", detail=detail)
    if kind == "test_error":
        return RewardResult.infra(detail)
    if kind in ("failed", "notplain"):
        return RewardResult(0.0, "incorrect", detail=detail)
    return RewardResult(0.0, "error", detail=detail)


def stdio_verdict(runs: Sequence[RunResult], expected: Sequence[str]) -> RewardResult:
    """All cases must exit 0 and print the expected output (trailing whitespace tolerated)."""
    for k, (r, want) in enumerate(zip(runs, expected, strict=True)):
        limit = _limits_verdict(r)
        if limit is not None:
            return RewardResult(0.0, limit.status, detail=f"case {k}: {limit.detail}")
        if r.exit != 0 and _crashed_of_memory(r.stderr):
            return RewardResult(0.0, "memory", detail=f"case {k}: memory limit exceeded")
        if r.exit != 0:
            how = f"exit code {r.exit}" if r.exit is not None else f"signal {r.signal}"
            return RewardResult(0.0, "error", detail=f"case {k}: {how}: {r.stderr[-300:]}")
        if r.truncated:
            return RewardResult(0.0, "incorrect", detail=f"case {k}: output limit exceeded")
        if not outputs_match(r.stdout, want):
            detail = f"case {k}: got {_short(r.stdout)}, want {_short(want)}"
            return RewardResult(0.0, "incorrect", detail=detail)
    return RewardResult(1.0, "correct", detail=f"{len(runs)} cases passed")
