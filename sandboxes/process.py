"""Process backend: the runner as a local subprocess, for machines without Docker.

Weaker than Docker (see the threat model in `verirl.sandboxes.sandbox`). Started as root:
fresh network, pid, IPC, mount and UTS namespaces through ``unshare`` (the runner is pid 1 of
its namespace: every process a sample leaves dies with it), a chroot into a tmpfs with
read-only binds of the system directories only (`verirl.sandboxes.runner.enter_jail`), and a
pair of uids of its own (sample, judge) reserved by lock file, so RLIMIT_NPROC and the
kill-by-uid cleanup never reach another runner. Run by a non-root user: a user namespace,
one uid, capabilities dropped.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from verirl.sandboxes.sandbox import (
    RUNNER_SOURCE,
    SOURCES,
    Job,
    RunResult,
    Sandbox,
    SandboxInfraError,
)

UID_BASE, UID_SLOTS = 61000, 500  # slot k: sample uid 61000+2k, judge uid 61001+2k
LOCK_DIR = Path("/run/verirl-sandbox-uids")
# What a jailed program sees of the host: read-only, system directories only.
JAIL_DIRS = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"]
JAIL_FILES = [
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
]
_slot_lock = threading.Lock()


@functools.cache
def unshare_prefix() -> tuple[str, ...]:
    """The ``unshare`` command line that works here, or ()."""
    exe = shutil.which("unshare")
    if exe is None:
        return ()
    base = (exe, "--net", "--pid", "--ipc", "--mount", "--uts", "--fork", "--kill-child")
    candidates: list[tuple[str, ...]] = [base] if os.geteuid() == 0 else []
    candidates.append((*base, "--user", "--map-root-user"))
    for cmd in candidates:
        try:
            r = subprocess.run([*cmd, "true"], capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if r.returncode == 0:
            return cmd
    return ()


@contextlib.contextmanager
def uid_slot() -> Iterator[tuple[int, int]]:
    """Reserve a (sample, judge) uid pair no other runner on this host uses right now: an
    exclusive flock on its lock file (released when we exit, however we exit)."""
    LOCK_DIR.mkdir(mode=0o700, exist_ok=True)
    with _slot_lock:
        for k in range(UID_SLOTS):
            fd = os.open(LOCK_DIR / f"slot-{k}", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            break
        else:
            raise SandboxInfraError(f"all {UID_SLOTS} sandbox uid slots are in use")
    try:
        yield UID_BASE + 2 * k, UID_BASE + 2 * k + 1
    finally:
        os.close(fd)


class ProcessSandbox(Sandbox):
    """Each batch: one runner subprocess, in fresh namespaces when permitted."""

    kind = "process"

    def __init__(
        self,
        workers: int = 2,
        batch_size: int = 16,
        use_unshare: bool = True,
        nproc: int = 64,
        tmp_mb: int = 64,
    ) -> None:
        super().__init__(workers, batch_size)
        self.prefix = unshare_prefix() if use_unshare else ()
        self.nproc, self.tmp_mb = nproc, tmp_mb

    @property
    def drops_uid(self) -> bool:
        """Root outside a user namespace: programs run as uids of their own."""
        return os.geteuid() == 0 and "--user" not in self.prefix

    @property
    def jailed(self) -> bool:
        return self.drops_uid and "--mount" in self.prefix

    @property
    def python(self) -> str:
        """A system interpreter when there is one: the sandbox uids must be able to read its
        stdlib (a pyenv under /root is not readable to them), and the jail binds /usr."""
        system = shutil.which("python3", path="/usr/bin:/bin")
        return system if self.drops_uid and system else sys.executable

    @property
    def isolated_network(self) -> bool:
        return bool(self.prefix)

    def _exec(self, jobs: Sequence[Job]) -> tuple[dict[int, RunResult], str]:
        slot = uid_slot() if self.drops_uid else contextlib.nullcontext((None, None))
        with slot as (uid, judge):
            return self._exec_as(jobs, uid, judge)

    def _exec_as(
        self, jobs: Sequence[Job], uid: int | None, judge: int | None
    ) -> tuple[dict[int, RunResult], str]:
        scratch = tempfile.mkdtemp(prefix="verirl-proc-")
        if not self.jailed:  # the sample uid must pass through to its own (0700) work dir
            os.chmod(scratch, 0o711)
        batch = {
            "jobs": [j.wire() for j in jobs],
            # kill(-1) is safe only where the runner is alone in its pid namespace.
            "kill_all": "--pid" in self.prefix,
            "wipe": self.jailed,  # the jail's /tmp, /dev/shm and IPC are this runner's own
            "scratch": scratch,
            "uid": uid,
            "judge_uid": judge,
            "nproc": self.nproc,
            **SOURCES,
        }
        if self.jailed:
            prefix = os.path.realpath(sys.base_prefix) if self.python == sys.executable else None
            dirs = JAIL_DIRS + ([prefix] if prefix and not prefix.startswith("/usr") else [])
            batch["jail"] = {
                "root": scratch,
                "dirs": dirs,
                "files": JAIL_FILES,
                "tmp_mb": self.tmp_mb,
            }
        cmd = [*self.prefix, self.python, "-I", "-S", "-c", RUNNER_SOURCE]
        deadline = sum(j.timeout + 1.0 for j in jobs) + 15.0
        try:
            p = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                cwd="/",
                start_new_session=True,
            )
        except OSError as e:
            shutil.rmtree(scratch, ignore_errors=True)
            raise SandboxInfraError(f"cannot start the runner: {e}") from None
        try:
            out, err = p.communicate(json.dumps(batch).encode() + b"\n", timeout=deadline)
        except subprocess.TimeoutExpired:
            _kill_group(p)
            out, err = p.communicate()
        finally:
            _kill_group(p)
            _kill_uids({u for u in (uid, judge) if u is not None})
            shutil.rmtree(scratch, ignore_errors=True)
        got: dict[int, RunResult] = {}
        how = "died"
        for line in out.decode("utf-8", "replace").splitlines():
            try:
                d = json.loads(line)
            except ValueError:
                continue
            if d.get("done"):
                how = "ok"
            elif d.get("dirty"):
                how = "dirty"
                if not got and "jail" in str(d["dirty"]):
                    raise SandboxInfraError(f"process sandbox: {d['dirty']}")
            elif "exit" in d and isinstance(d.get("i"), int) and 0 <= d["i"] < len(jobs):
                got[d["i"]] = RunResult.from_wire(d)
        if not got and b'"start"' not in out and how != "ok":
            raise SandboxInfraError(f"runner failed: {err.decode(errors='replace')[-500:]}")
        return got, how


def _kill_uids(uids: set[int]) -> None:
    """Without a pid namespace, leftovers of this runner's own uids may outlive it."""
    if not uids:
        return
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            if os.stat(f"/proc/{p}").st_uid in uids:
                os.kill(int(p), 9)
        except OSError:
            pass


def _kill_group(p: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(p.pid, 9)
    except OSError:
        pass
