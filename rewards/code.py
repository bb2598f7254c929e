"""Code rewards: extract the program from a completion, and decide verdicts on the trusted side.

The sandbox (`verirl.sandboxes.sandbox`, which documents the threat model) only runs programs
and reports what happened; the verdict is made here from data the program cannot forge:

- function tests (HumanEval's ``check(candidate)``, Chen et al. 2021): the report must carry
  this run's nonce and say the test function returned; then every recorded assertion is
  re-decided here from the marshalled plain values of its operands;
- stdio tests (APPS/LiveCodeBench style): the program's stdout against the expected output,
  line by line, ignoring trailing whitespace and trailing blank lines.

Reward 1.0 only if every test ran and every comparison held (``correct``); a failed assertion
is ``incorrect``; a crash (exception, ``sys.exit``, a killed runner, a compile error) is
``error``; ``timeout`` and ``memory`` name the limit; ``infra_error`` means the sandbox failed.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from typing import Any

from verirl.rewards.result import RewardResult
from verirl.sandboxes.runner import decode
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
    except SyntaxError:
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


def _compare(op: str, a: Any, b: Any) -> bool:
    try:
        if op == "==":
            return bool(a == b)
        if op == "!=":
            return bool(a != b)
        if op == "<":
            return bool(a < b)
        if op == "<=":
            return bool(a <= b)
        if op == ">":
            return bool(a > b)
        if op == ">=":
            return bool(a >= b)
        if op == "in":
            return a in b
        if op == "not in":
            return a not in b
        # Identity survives marshalling only for the singletons; otherwise: same type and value.
        same = a is b if b is None or isinstance(b, bool) else type(a) is type(b) and a == b
        return same if op == "is" else not same
    except TypeError:
        return False


def _short(v: Any, n: int = 120) -> str:
    s = repr(v)
    return s if len(s) <= n else s[: n - 3] + "..."


def _parse_report(r: RunResult, nonce: str) -> tuple[str, Any] | None:
    """The run's report, or None if there is no well-formed report carrying the nonce."""
    lines = [ln for ln in r.report.split("\n") if ln.startswith(nonce + ":")]
    if len(lines) != 1:
        return None
    try:
        kind, data = ast.literal_eval(lines[0][len(nonce) + 1 :])
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    return (kind, data) if isinstance(kind, str) else None


def _limits_verdict(r: RunResult) -> RewardResult | None:
    if r.infra:
        return RewardResult.infra(f"sandbox: {r.infra}")
    if r.harness_killed:
        return RewardResult(0.0, "error", detail="the program killed or stopped the sandbox runner")
    if r.timed_out:
        return RewardResult(0.0, "timeout", detail=f"wall time exceeded ({r.wall:.1f}s)")
    if "MemoryError" in r.stderr:
        return RewardResult(0.0, "memory", detail="memory limit exceeded")
    return None


def function_verdict(r: RunResult, nonce: str) -> RewardResult:
    """Verdict of a function-test run (see the module docstring)."""
    limit = _limits_verdict(r)
    if limit is not None:
        return limit
    rep = _parse_report(r, nonce)
    if rep is None:
        how = f"exit code {r.exit}" if r.exit is not None else f"signal {r.signal}"
        why = "output limit exceeded; " if r.truncated else ""
        return RewardResult(0.0, "error", detail=f"{why}no test report ({how}): {r.stderr[-300:]}")
    kind, data = rep
    if kind == "done":
        return _records_verdict(data)
    if kind == "memory":
        return RewardResult(0.0, "memory", detail=str(data))
    if kind == "test_error":
        return RewardResult.infra(str(data))
    if kind == "notplain":
        return RewardResult(0.0, "incorrect", detail=str(data))
    if kind == "raised" and str(data).startswith("test: AssertionError"):
        return RewardResult(0.0, "incorrect", detail=str(data))
    return RewardResult(0.0, "error", detail=str(data))


def _records_verdict(records: Any) -> RewardResult:
    if not isinstance(records, list):
        return RewardResult(0.0, "error", detail="malformed test report")
    for rec in records:
        try:
            if rec[1] == "notplain":
                return RewardResult(0.0, "incorrect", detail=f"assert #{rec[0]}: {rec[2]}")
            if rec[1] == "truth":
                if not bool(decode(rec[2])):
                    return RewardResult(0.0, "incorrect", detail=f"assert #{rec[0]} failed")
                continue
            i, op, left, right = rec
            a, b = decode(left), decode(right)
        except (IndexError, KeyError, TypeError, ValueError):
            return RewardResult(0.0, "error", detail="malformed test report")
        if not _compare(op, a, b):
            detail = f"assert #{i} failed: {_short(a)} {op} {_short(b)} is false"
            return RewardResult(0.0, "incorrect", detail=detail)
    return RewardResult(1.0, "correct", detail=f"{len(records)} assertions held")


def stdio_verdict(runs: Sequence[RunResult], expected: Sequence[str]) -> RewardResult:
    """All cases must exit 0 and print the expected output (trailing whitespace tolerated)."""
    for k, (r, want) in enumerate(zip(runs, expected, strict=True)):
        limit = _limits_verdict(r)
        if limit is not None:
            return RewardResult(0.0, limit.status, detail=f"case {k}: {limit.detail}")
        if r.exit != 0:
            how = f"exit code {r.exit}" if r.exit is not None else f"signal {r.signal}"
            return RewardResult(0.0, "error", detail=f"case {k}: {how}: {r.stderr[-300:]}")
        if r.truncated:
            return RewardResult(0.0, "incorrect", detail=f"case {k}: output limit exceeded")
        if not outputs_match(r.stdout, want):
            detail = f"case {k}: got {_short(r.stdout)}, want {_short(want)}"
            return RewardResult(0.0, "incorrect", detail=detail)
    return RewardResult(1.0, "correct", detail=f"{len(runs)} cases passed")
