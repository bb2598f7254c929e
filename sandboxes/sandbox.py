"""The one entry point for running untrusted code: ``make_sandbox(kind)`` and ``Sandbox.run``.

What it protects against (Docker backend, the default where an engine runs)
--------------------------------------------------------------------------
Every program runs in a container from the offline-built image with: no network
(``network_mode=none``), a memory cap with swap equal to it, a pids cgroup cap (per container:
the limit on processes is never a per-uid budget shared with other containers), a CPU quota, a
read-only root fs plus a size-capped tmpfs ``/tmp``, a private IPC namespace, all
capabilities dropped but the six the runner needs (CHOWN, DAC_OVERRIDE, FOWNER, KILL, SETUID,
SETGID), ``no-new-privileges``, the engine's seccomp profile. pid 1 (``sleep``) and the
persistent trusted runner (`verirl.sandboxes.runner`) run as the container's root, so the
sample uid can neither signal nor ptrace them. For each sample the runner:

- runs the program as the sample uid in a child of the zygote, an interpreter the runner
  exec'd once that never receives a test, a nonce or another sample: the sample's memory
  holds only its program, stdin and call arguments (frame walks, ``gc`` and ``ctypes`` scans
  find nothing else); its stdin/stdout/stderr are memfds, so root never opens a path the
  sample could plant; it has no capability and ``no_new_privs``;
- for function problems (HumanEval ``check(candidate)``), runs the trusted prelude and test in
  a harness forked from the runner and dropped to a second, judge uid: non-dumpable, no
  capabilities, unreachable by the sample's uid. The candidate is called over pipes; arguments
  and return values cross as plain data of exact builtin types (``type(v) is int``...,
  decoded without eval or recursion limits), so everything the test compares is an honest
  builtin and ``==``, ``type(x) == int`` or ``is None`` mean what they mean in Python. A lying
  ``__eq__``, ``int`` subclasses, patched builtins, ``sys.exit``/``os._exit``, frame walking,
  ``gc`` or ``ctypes`` scans, threads, ptrace, ``/proc`` and signals only change the
  solution's own replies. Each assertion counts itself; a report (one line with a per-run
  nonce, on a pipe only the harness holds) passes only if the test returned and assertions
  held. A StopIteration from the candidate is a RuntimeError in the test (PEP 479);
- enforces the wall time with SIGKILL, then kills every process of both uids, removes their
  SysV shm/msg/sem objects and POSIX queues, and wipes ``/tmp`` and ``/dev/shm`` as root (a
  chmod 0500 directory stops nothing); it then proves that nothing is left, and otherwise
  stops (``dirty``) so that the remaining jobs run in a fresh container.

The host watches each batch with its own deadline. A runner that dies or hangs while its
container still runs costs the job it was on a solo re-run (dying again alone is that job's
``error``); a container or engine that dies is ``infra_error`` for the jobs it held after one
retry, never the program's fault; the pool replaces dead containers under fresh names and
gives up (infra_error, bounded time) when the engine cannot start one. Containers carry the
label ``verirl.sandbox`` and their owner's pid; a new pool removes the ones whose owner died,
``close()``/atexit/Ctrl-C removes its own.

What it does NOT protect against
--------------------------------
- Kernel or container-runtime escapes: the engine's seccomp profile is used when the engine
  has one (``verirl sandbox doctor`` says), but a kernel bug is out of scope.
- Timing side channels, and CPU contention between concurrent containers.
- A dataset's own test or prompt: they run as trusted code in the harness.
- Samples forked from one zygote share its address-space layout (ASLR) and the initial state
  of its preloaded modules (``random`` is reseeded per sample); they share nothing else.

Process backend (no Docker; chosen automatically with a warning)
----------------------------------------------------------------
The same runner as a local subprocess, one per batch. Started as root (the tested case) it runs
inside fresh network, pid, IPC, mount and UTS namespaces (``unshare``) and chroots into a
tmpfs holding only read-only, nosuid binds of the system directories and the interpreter, its
own /proc, /tmp, /dev/shm and mqueue: the scorer's input file, the repository, host /tmp and
other runners are not there, and host processes are invisible. Each concurrent runner gets its
own pair of uids (sample, judge) from 61000-61999, reserved with a lock file, so RLIMIT_NPROC
and the kill-every-process-of-the-uid cleanup are per runner. Root never follows a path a
sample can write (outputs are memfds; work dirs come from mkdtemp in root's directory).
What it cannot stop: the bound system directories are readable (as in any container image);
there is no memory cgroup (RLIMIT_AS per process instead) and no CPU quota. As root without
``unshare``: no jail, so world-readable host files are readable by the sample uid and it has
the host network; its own uids still apply, and what they leave in /tmp, /var/tmp, /dev/shm
and SysV IPC is removed by owner after each sample. Run by a non-root user: a user namespace
(capabilities dropped, one uid for everything), so the sample can signal the runner and the
harness (scored ``error``) and IPC it leaves on a shared namespace is not cleaned. Use it where
Docker cannot run.
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

_HERE = Path(__file__).parent
RUNNER_SOURCE = (_HERE / "runner.py").read_text()
# Shipped in every batch: the runner execs the zygote/solution source, forks the harness, and
# (process backend) builds the jail with the third.
SOURCES = {
    "solution_src": (_HERE / "solution.py").read_text(),
    "harness_src": (_HERE / "harness.py").read_text(),
    "jail_src": (_HERE / "jail.py").read_text(),
}
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
    def _exec(self, jobs: Sequence[Job]) -> tuple[dict[int, RunResult], str]:
        """Run one batch through one runner: results by index and how it ended: ``ok``;
        ``died`` (the runner died or hung on the first missing job while its sandbox stood);
        ``lost`` (the sandbox itself died: a killed container, a dead engine); ``dirty`` (the
        runner could not prove a clean state and stopped). Raise SandboxInfraError when no
        sandbox can be had at all."""

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
            pool = ThreadPoolExecutor(self.workers)
            try:
                list(pool.map(one, batches))
            except BaseException:
                # Ctrl-C: tear the sandboxes down now (their sockets close, blocked reads
                # return), and do not wait for the worker threads' batches.
                self.close()
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            pool.shutdown()
        return [r if r is not None else RunResult(infra="no result") for r in out]

    def _run_resilient(self, jobs: list[Job]) -> list[RunResult]:
        """A job that kills (or wedges) the runner must not cost the others their verdicts:
        the job it died on is re-run alone; if the runner dies again on it alone while the
        sandbox stands, that is its fault. A sandbox that is lost (container or engine death)
        or dirty blames nobody: the remaining jobs are retried once in a fresh one, then they
        are ``infra``."""
        results: list[RunResult | None] = [None] * len(jobs)
        pending = list(range(len(jobs)))
        lost_in_a_row = 0
        while pending:
            try:
                got, how = self._exec([jobs[i] for i in pending])
            except SandboxInfraError as e:
                for i in pending:
                    results[i] = RunResult(infra=str(e))
                break
            for k, r in got.items():
                results[pending[k]] = r
            missing = [pending[k] for k in range(len(pending)) if k not in got]
            if not missing:
                break
            if how in ("lost", "dirty"):
                lost_in_a_row = 0 if got else lost_in_a_row + 1
                if lost_in_a_row >= 2:
                    why = "the sandbox died twice on these jobs (container or engine failure)"
                    for i in missing:
                        results[i] = RunResult(infra=why)
                    break
                pending = missing
                continue
            lost_in_a_row = 0
            culprit = missing[0]
            if len(pending) == 1:
                results[culprit] = RunResult(harness_killed=True)
                break
            # Alone first: its verdict, then the rest in one batch.
            results[culprit] = self._run_resilient([jobs[culprit]])[0]
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
