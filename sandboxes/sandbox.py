"""The one entry point for running untrusted code: ``make_sandbox(kind)`` and ``Sandbox.run``.

What it protects against (Docker backend, the default where an engine runs)
--------------------------------------------------------------------------
Every program runs in a container from the offline-built image with: no network
(``network_mode=none``), a memory cap with swap equal to it, a pids cap, a CPU quota, a
read-only root fs plus a size-capped tmpfs ``/tmp``, a dedicated non-root uid, all capabilities
dropped, ``no-new-privileges``, the engine's seccomp profile. Inside, a persistent trusted
runner (`verirl.sandboxes.runner`, non-dumpable: samples cannot read its memory or fds through
/proc or ptrace; it runs no untrusted code) takes batches of jobs and forks one fresh process
per sample into its own session and private temp dir, with rlimits (address
space, CPU, file size = output cap, processes); it enforces the wall time with SIGKILL (so
ignoring SIGALRM/SIGTERM does not help) and afterwards kills every process the sample left
(its group, orphans that come back to the runner as subreaper, then every process of the
sandbox uid) and wipes ``/tmp`` and ``/dev/shm``: no state reaches the next sample. The host
watches each batch with its own deadline and replaces a container that stops answering.
Containers carry the label ``verirl.sandbox`` and their owner's pid; a new pool removes the
ones whose owner died (caller crash, SIGKILL), ``close()``/atexit removes its own (Ctrl-C).

Verdicts are decided here, on the trusted side, never from the program's exit code:
- stdio problems: the program's stdout is compared with the expected output by the host;
- function problems (HumanEval ``check(candidate)``): the test and the solution run in two
  different processes. The harness process runs only trusted code (the prompt as prelude,
  whose helpers the test sees, and the test); it makes itself non-dumpable (a same-uid
  process can neither ptrace it nor open its ``/proc/<pid>/mem``, ``fd`` or ``environ``),
  drops every capability where it runs as root in a user namespace, and only then forks the
  solution process, which never inherits the report fd. The solution process runs the
  program and serves calls of the entry point over a pair of pipes: arguments and return
  values cross as plain data with exact builtin types (``type(v) is int``, recursively;
  anything else is ``notplain``), exceptions as their type name. Every ``assert`` of the test
  is rewritten so that its operands are reported as plain data and the comparison itself is
  made by the host; the report carries a per-run random nonce and is accepted only if it
  says the test function returned. Hence ``sys.exit(0)``, ``os._exit(0)``, atexit hooks,
  patched builtins, a lying ``__eq__``, ``int`` subclasses, exceptions, frame walking
  (``sys._getframe``), ``gc`` or ``ctypes`` memory scans, threads that keep patching, and
  ptrace or ``/proc`` access to the harness never produce a pass: whatever the solution
  does, it only controls the plain values it returns. Killing or stopping the harness is
  scored ``error`` or ``timeout``; killing the runner re-runs the sample alone (``error``)
  and the container is replaced.

What it does NOT protect against
--------------------------------
- The solution process is forked from the runner without ``exec``, so its memory still
  holds copies of the batch, nonces included; a nonce is useless without the report fd,
  which only the harness holds, but it is not secret from the solution.
- Kernel or container-runtime escapes: the engine's seccomp profile is used when the engine
  has one (``verirl sandbox doctor`` says), but a kernel bug is out of scope.
- Timing side channels, and CPU contention between concurrent containers.

Process backend (no Docker; chosen automatically with a warning)
----------------------------------------------------------------
The same runner as a local subprocess: rlimits, own session killed on timeout, empty
environment, private temp dir, a fresh network and pid namespace through ``unshare`` when
permitted (then every leftover process dies with the namespace), and uid 65534 when started as
root. It does NOT isolate the filesystem: a program can read any file its uid can read
(``/etc/passwd``, the repository) and write where that uid may write; without ``unshare`` it
has the host's network. Concurrent runners share one uid, hence one RLIMIT_NPROC budget: a
fork bomb can make a neighbouring sample's ``fork`` fail. Where the programs' uid can write
the Python installation (a user-owned interpreter run through a user namespace), a program
could plant a module that the test harness imports afterwards. Use it for trusted-ish code or
where Docker cannot run.
"""

from __future__ import annotations

import atexit
import os
import secrets
import threading
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

RUNNER_SOURCE = (Path(__file__).parent / "runner.py").read_text()
SandboxKind = Literal["docker", "process", "auto"]


class SandboxInfraError(RuntimeError):
    """The sandbox itself failed: the verdict says nothing about the program."""


@dataclass
class Job:
    """One program to run. ``mode="function"`` runs ``test`` (defining ``check(candidate)``)
    against ``entry_point`` of ``code``; ``mode="stdio"`` runs ``code`` on ``stdin``.
    ``output_bytes`` caps stdout, stderr and every file the program writes (RLIMIT_FSIZE);
    ``memory_mb`` is its address-space limit; ``timeout`` its wall time in seconds."""

    mode: Literal["function", "stdio"]
    code: str
    test: str = ""
    entry_point: str = ""
    # Trusted code whose names the test sees (HumanEval: the prompt). The test runs apart
    # from the solution: without a prelude it sees only the candidate, none of its helpers.
    prelude: str = ""
    stdin: str = ""
    timeout: float = 10.0
    memory_mb: int = 512
    output_bytes: int = 1 << 16
    nonce: str = field(default_factory=lambda: secrets.token_hex(16))

    def wire(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "code": self.code,
            "test": self.test,
            "entry_point": self.entry_point,
            "prelude": self.prelude,
            "stdin": self.stdin,
            "timeout": self.timeout,
            "memory_mb": self.memory_mb,
            "output_bytes": self.output_bytes,
            "nonce": self.nonce,
        }


@dataclass
class RunResult:
    """What happened to one Job. ``infra`` set: the sandbox failed (not the program's fault).
    ``harness_killed``: the program, run alone, killed or stopped the runner itself."""

    exit: int | None = None
    signal: int | None = None
    timed_out: bool = False
    wall: float = 0.0
    stdout: str = ""
    stderr: str = ""
    truncated: bool = False
    report: str = ""
    infra: str | None = None
    harness_killed: bool = False

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> RunResult:
        keys = ("exit", "signal", "timed_out", "wall", "stdout", "stderr", "truncated", "report")
        return cls(**{k: d[k] for k in keys})


class Sandbox(ABC):
    """Runs Jobs concurrently (``workers`` batches at a time, ``batch_size`` jobs per runner
    round-trip, each job still in its own fresh process); results keep the input order."""

    kind: str = ""

    def __init__(self, workers: int = 2, batch_size: int = 16) -> None:
        self.workers = max(1, workers)
        self.batch_size = max(1, batch_size)
        self._closed = False
        self._lock = threading.Lock()
        atexit.register(self.close)

    @abstractmethod
    def _exec(self, jobs: Sequence[Job]) -> dict[int, RunResult]:
        """Run one batch through one runner; results by index. Missing indices: the runner
        died or hung while on the first missing job. Raise SandboxInfraError if the sandbox
        itself is broken."""

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, jobs: Sequence[Job]) -> list[RunResult]:
        if self._closed:
            raise SandboxInfraError(f"{self.kind} sandbox is closed")
        # Even split so every worker is busy, at most batch_size jobs per runner round-trip.
        size = min(self.batch_size, max(1, -(-len(jobs) // self.workers)))
        batches = [list(range(i, min(i + size, len(jobs)))) for i in range(0, len(jobs), size)]
        out: list[RunResult | None] = [None] * len(jobs)

        def one(idx: list[int]) -> None:
            for i, r in zip(idx, self._run_resilient([jobs[i] for i in idx]), strict=True):
                out[i] = r

        if len(batches) <= 1 or self.workers == 1:
            for b in batches:
                one(b)
        else:
            with ThreadPoolExecutor(self.workers) as pool:
                try:
                    list(pool.map(one, batches))
                except BaseException:
                    # Ctrl-C: tear the sandboxes down now, so the worker threads return at
                    # once instead of waiting out their batches.
                    self.close()
                    raise
        return [r if r is not None else RunResult(infra="no result") for r in out]

    def _run_resilient(self, jobs: list[Job]) -> list[RunResult]:
        """A job that kills (or stops) the runner must not cost the others their verdicts:
        the job it died on is re-run alone; if it kills the runner again, that is its fault."""
        results: list[RunResult | None] = [None] * len(jobs)
        pending = list(range(len(jobs)))
        while pending:
            try:
                got = self._exec([jobs[i] for i in pending])
            except SandboxInfraError as e:
                for i in pending:
                    results[i] = RunResult(infra=str(e))
                break
            for k, r in got.items():
                results[pending[k]] = r
            missing = [pending[k] for k in range(len(pending)) if k not in got]
            if not missing:
                break
            culprit = missing[0]
            if len(pending) == 1:
                results[culprit] = RunResult(harness_killed=True)
                missing = missing[1:]
                pending = missing
            else:
                # Alone first: its verdict, then the rest in one batch.
                alone = self._run_resilient([jobs[culprit]])[0]
                results[culprit] = alone
                pending = missing[1:]
        return [r if r is not None else RunResult(infra="no result") for r in results]


def machine_share(
    total: int, local_rank: int | None = None, local_world_size: int | None = None
) -> int:
    """This process's share of a per-machine budget (sandbox workers): under ``torchrun`` the
    LOCAL_WORLD_SIZE ranks on one host split `total` (shares differ by at most 1, each >= 1),
    so together they run at most max(total, LOCAL_WORLD_SIZE). Read from torchrun's variables
    when not given; a plain process gets all of it.

    >>> [machine_share(5, r, 2) for r in (0, 1)], machine_share(3, 0, 1)
    ([3, 2], 3)
    """
    if total < 1:
        raise ValueError(f"workers per machine must be >= 1, got {total}")
    if local_rank is None:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if local_world_size is None:
        local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    base, extra = divmod(total, local_world_size)
    return max(1, base + (1 if local_rank < extra else 0))


def make_sandbox(kind: SandboxKind = "auto", workers: int = 2, **options: Any) -> Sandbox:
    """The sandbox of `kind`; ``auto`` is Docker when an engine and the image are available,
    else the process backend with a warning. `workers` is a per-machine budget: ranks of a
    torchrun job on one host split it (``machine_share``)."""
    if kind not in ("docker", "process", "auto"):
        raise ValueError(f"sandbox must be 'docker', 'process' or 'auto', got {kind!r}")
    workers = machine_share(workers)
    if kind in ("docker", "auto"):
        from verirl.sandboxes.docker_pool import DockerPool
        from verirl.sandboxes.engine import EngineUnavailable

        try:
            return DockerPool(workers=workers, **options)
        except EngineUnavailable as e:
            if kind == "docker":
                raise SandboxInfraError(f"docker sandbox unavailable: {e}") from None
            warnings.warn(
                f"no Docker sandbox ({e}); falling back to the process backend, which does NOT "
                "isolate the filesystem (see verirl.sandboxes.sandbox)",
                stacklevel=2,
            )
    from verirl.sandboxes.process import ProcessSandbox

    return ProcessSandbox(workers=workers, **options)
