"""Docker backend: a warm pool of locked-down containers, one runner ``exec`` per batch.

Containers are created once (``sleep infinity`` as pid 1, run as the container's root, which
the sample uid cannot signal or trace) and reused; a batch of jobs goes to one container
through one persistent ``exec`` of the runner (root, six capabilities), whose stdin carries
the batch and whose stdout carries one JSON line per job. No container is created per run: that, and several
programs per round-trip, is what makes the isolated path as fast as an unisolated harness.
The limits are listed in `verirl.sandboxes.sandbox` (the entry point and threat model).
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import secrets
import socket
import struct
import time
from collections.abc import Sequence
from typing import Any

from verirl.sandboxes.engine import LABEL, client, image_present, image_tag, read_manifest
from verirl.sandboxes.sandbox import (
    RUNNER_SOURCE,
    SOURCES,
    Job,
    RunResult,
    Sandbox,
    SandboxInfraError,
)

OWNER_LABEL = "verirl.owner_pid"
STARTUP_S = 20.0  # runner start (python + preloads) on a loaded machine
# Beyond a job's own timeout (enforced by the runner itself): room for the cleanup after a
# fork bomb on a loaded machine; only a wedged runner waits this long.
WATCHDOG_MARGIN_S = 10.0
# Samples' niceness inside the container: its CPU quota goes to the runner first, so a busy
# sample cannot starve the cleanup. (Not on the process backend: there it would compete with
# the whole host.)
SAMPLE_NICE = 10
ACQUIRE_S = 120.0  # longest wait for a free container before the batch is infra_error
# What the root runner needs, and no more: work dirs for the sample uid (CHOWN), wiping what
# a sample protected (DAC_OVERRIDE, FOWNER), killing its processes (KILL), becoming it (SET*ID).
RUNNER_CAPS = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "KILL", "SETUID", "SETGID"]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def reap_stale(c: Any) -> int:
    """Remove sandbox containers whose owning process is gone (a crashed or killed caller)."""
    n = 0
    for ctr in c.containers.list(all=True, filters={"label": LABEL}):
        owner = ctr.labels.get(OWNER_LABEL, "")
        if not owner.isdigit() or not _pid_alive(int(owner)):
            try:
                ctr.remove(force=True)
                n += 1
            except Exception:
                pass
    return n


class DockerPool(Sandbox):
    """A warm pool of ``workers`` containers; each runs one batch at a time."""

    kind = "docker"

    def __init__(
        self,
        workers: int = 2,
        batch_size: int = 16,
        memory_mb: int = 768,
        pids: int = 128,
        cpus: float = 1.0,
        tmpfs_mb: int = 64,
        image: str | None = None,
    ) -> None:
        self.client = client()
        self.image = image or image_tag()
        if not image_present(self.client, self.image):
            from verirl.sandboxes.engine import EngineUnavailable

            raise EngineUnavailable(
                f"sandbox image {self.image} missing; run `verirl sandbox build`"
            )
        super().__init__(workers, batch_size)
        # The sample runs as the image's sandbox uid, the harness as the next one; the
        # runner and pid 1 as the container's root.
        self.uid = read_manifest().uid
        self.user = f"{self.uid}:{read_manifest().gid}"
        self.limits = dict(memory_mb=memory_mb, pids=pids, cpus=cpus, tmpfs_mb=tmpfs_mb)
        self.session = secrets.token_hex(4)
        self._names = itertools.count()  # never reused: a replacement's name cannot collide
        reap_stale(self.client)
        self._idle: queue.Queue[Any] = queue.Queue()
        self._sessions: dict[str, _Session] = {}
        self._all: list[Any] = []
        for _ in range(self.workers):
            self._idle.put(self._create())

    def _create(self) -> Any:
        lim = self.limits
        try:
            ctr = self.client.containers.run(
                self.image,
                ["sleep", "infinity"],
                detach=True,
                stop_signal="SIGKILL",  # pid 1 ignores SIGTERM: an engine stop need not wait
                name=f"verirl-sbx-{os.getpid()}-{self.session}-{next(self._names)}",
                labels={LABEL: self.session, OWNER_LABEL: str(os.getpid())},
                network_mode="none",
                mem_limit=f"{lim['memory_mb']}m",
                memswap_limit=f"{lim['memory_mb']}m",
                pids_limit=lim["pids"],
                nano_cpus=int(lim["cpus"] * 1e9),
                read_only=True,
                tmpfs={"/tmp": f"size={lim['tmpfs_mb']}m,mode=1777,exec,nosuid,nodev"},
                shm_size="8m",
                user="0:0",
                cap_drop=["ALL"],
                cap_add=RUNNER_CAPS,
                security_opt=["no-new-privileges"],
                working_dir="/tmp",
                environment={},
                hostname="sandbox",
                ipc_mode="private",
            )
        except Exception as e:
            raise SandboxInfraError(f"cannot start a sandbox container: {e}") from None
        with self._lock:
            self._all.append(ctr)
        return ctr

    def _discard(self, ctr: Any) -> None:
        try:
            ctr.remove(force=True)
        except Exception:
            pass
        with self._lock:
            if ctr in self._all:
                self._all.remove(ctr)

    def close(self) -> None:
        if getattr(self, "_closed", True):
            return
        self._closed = True
        for session in list(getattr(self, "_sessions", {}).values()):
            session.close()
        with self._lock:
            ctrs, self._all = list(getattr(self, "_all", [])), []
        for ctr in ctrs:
            try:
                ctr.remove(force=True)
            except Exception:
                pass

    def _acquire(self) -> Any:
        """A free container; a missing one (a replacement that failed) is created here, so a
        dead engine surfaces as SandboxInfraError within ACQUIRE_S, never as a hang."""
        deadline = time.monotonic() + ACQUIRE_S
        while True:
            if self._closed:
                raise SandboxInfraError("docker sandbox is closed")
            try:
                return self._idle.get(timeout=0.2)
            except queue.Empty:
                pass
            with self._lock:
                short = len(self._all) < self.workers
            if short:
                return self._create()
            if time.monotonic() > deadline:
                raise SandboxInfraError(f"no sandbox container became free in {ACQUIRE_S:.0f}s")

    def _exec(self, jobs: Sequence[Job]) -> tuple[dict[int, RunResult], str]:
        ctr = self._acquire()
        how = "broken"
        try:
            try:
                session = self._sessions.get(ctr.id) or _Session(self.client.api, ctr.id, self.uid)
                self._sessions[ctr.id] = session
                got, how = session.run(jobs)
            except SandboxInfraError:
                if self._running(ctr):
                    raise
                how = "lost"  # killed while idle or starting: retried on a replacement
                return {}, how
            if how in ("died", "timeout") and not self._running(ctr):
                how = "lost"  # the container (or the engine) died: nobody's fault
            return got, "died" if how == "timeout" else how
        finally:
            if how != "ok":
                old = self._sessions.pop(ctr.id, None)
                if old is not None:
                    old.close()
            if how == "ok" and not self._closed:
                self._idle.put(ctr)
            else:
                # A container whose runner died, hung, broke or could not prove a clean state
                # is replaced, never reused.
                self._discard(ctr)
                if not self._closed:
                    try:
                        self._idle.put(self._create())
                    except SandboxInfraError:
                        pass  # _acquire retries, and reports it if the engine stays down

    def _running(self, ctr: Any, settle_s: float = 1.0) -> bool:
        """Whether the container still runs. The exec stream can end before the engine has
        recorded a kill, so a "running" answer is only believed once it held for `settle_s`."""
        deadline = time.monotonic() + settle_s
        while True:
            try:
                ctr.reload()
                if ctr.status != "running":
                    return False
            except Exception:
                return False
            if time.monotonic() >= deadline:
                return True
            time.sleep(0.1)


class _Session:
    """A persistent runner (``serve`` mode) in one container: batches go in as JSON lines on
    its stdin, results come back as JSON lines in docker's multiplexed stdout frames."""

    def __init__(self, api: Any, container_id: str, uid: int) -> None:
        self.uid = uid
        try:
            eid = api.exec_create(
                container_id,
                ["python3", "-I", "-S", "-c", RUNNER_SOURCE, "serve"],
                stdin=True,
                stdout=True,
                stderr=True,
                user="0:0",
                workdir="/tmp",
            )["Id"]
            self.sock = api.exec_start(eid, socket=True)
        except Exception as e:
            raise SandboxInfraError(f"docker exec failed: {e}") from None
        self.raw: socket.socket = getattr(self.sock, "_sock", self.sock)
        self.buf, self.out, self.err = bytearray(), bytearray(), bytearray()
        self.started = False

    def close(self) -> None:
        try:
            self.sock.close()
        except Exception:
            pass

    def _lines(self) -> list[bytearray]:
        *lines, rest = self.out.split(b"\n")
        self.out = bytearray(rest)
        return lines

    def run(self, jobs: Sequence[Job]) -> tuple[dict[int, RunResult], str]:
        """Results by index and how it ended: ok | died (runner gone) | timeout | dirty."""
        batch = {
            "jobs": [j.wire() for j in jobs],
            "kill_all": True,
            "wipe": True,
            "uid": self.uid,
            "judge_uid": self.uid + 1,
            "nice": SAMPLE_NICE,
            **SOURCES,
        }
        got: dict[int, RunResult] = {}
        # The runner enforces each job's timeout; this outside deadline, re-armed at every line
        # the runner prints, catches a runner that a job stopped or wedged.
        deadline = time.monotonic() + (WATCHDOG_MARGIN_S if self.started else STARTUP_S)
        deadline += jobs[0].timeout
        try:
            self.raw.sendall(json.dumps(batch).encode() + b"\n")
        except OSError:
            return got, "died"
        any_line = False
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return got, "timeout"
            self.raw.settimeout(left)
            try:
                chunk = self.raw.recv(1 << 16)
            except TimeoutError:
                return got, "timeout"
            except OSError:
                chunk = b""
            if not chunk:
                if not any_line and not self.started:
                    msg = self.err.decode(errors="replace")[-500:]
                    raise SandboxInfraError(f"sandbox runner failed to start: {msg}")
                return got, "died"
            self.buf += chunk
            while len(self.buf) >= 8:  # multiplexed frames: type, 0, 0, 0, be32 length
                kind, size = self.buf[0], struct.unpack(">I", bytes(self.buf[4:8]))[0]
                if len(self.buf) < 8 + size:
                    break
                (self.out if kind == 1 else self.err).extend(self.buf[8 : 8 + size])
                del self.buf[: 8 + size]
            for line in self._lines():
                any_line = self.started = True
                try:
                    d = json.loads(line)
                except ValueError:
                    continue
                if d.get("done"):
                    return got, "ok"
                if d.get("dirty"):
                    return got, "dirty"
                i = d.get("i")
                if not isinstance(i, int) or not 0 <= i < len(jobs):
                    continue
                if "exit" in d:
                    got[i] = RunResult.from_wire(d)
                nxt = min(i + 1, len(jobs) - 1) if "exit" in d else i
                deadline = time.monotonic() + jobs[nxt].timeout + WATCHDOG_MARGIN_S
