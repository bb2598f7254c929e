"""Docker backend: a warm pool of locked-down containers, one runner ``exec`` per batch.

Containers are created once (``sleep infinity`` as pid 1) and reused; a batch of jobs goes to
one container through one ``exec`` of the runner, whose stdin carries the batch and whose
stdout carries one JSON line per job. No container is created per run: that, and several
programs per round-trip, is what makes the isolated path as fast as an unisolated harness.
The limits are listed in `verirl.sandboxes.sandbox` (the entry point and threat model).
"""

from __future__ import annotations

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
from verirl.sandboxes.sandbox import RUNNER_SOURCE, Job, RunResult, Sandbox, SandboxInfraError

OWNER_LABEL = "verirl.owner_pid"
STARTUP_S = 20.0  # runner start (python + preloads) on a loaded machine
WATCHDOG_MARGIN_S = 3.0  # beyond a job's own timeout, enforced by the runner itself


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
        self.user = f"{read_manifest().uid}:{read_manifest().gid}"
        self.limits = dict(memory_mb=memory_mb, pids=pids, cpus=cpus, tmpfs_mb=tmpfs_mb)
        self.session = secrets.token_hex(4)
        reap_stale(self.client)
        self._idle: queue.Queue[Any] = queue.Queue()
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
                name=f"verirl-sbx-{os.getpid()}-{self.session}-{len(self._all)}",
                labels={LABEL: self.session, OWNER_LABEL: str(os.getpid())},
                network_mode="none",
                mem_limit=f"{lim['memory_mb']}m",
                memswap_limit=f"{lim['memory_mb']}m",
                pids_limit=lim["pids"],
                nano_cpus=int(lim["cpus"] * 1e9),
                read_only=True,
                tmpfs={"/tmp": f"size={lim['tmpfs_mb']}m,mode=1777,exec,nosuid,nodev"},
                shm_size="8m",
                user=self.user,
                cap_drop=["ALL"],
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
        with self._lock:
            ctrs, self._all = list(self._all), []
        for ctr in ctrs:
            try:
                ctr.remove(force=True)
            except Exception:
                pass

    def _exec(self, jobs: Sequence[Job]) -> dict[int, RunResult]:
        if self._closed:
            raise SandboxInfraError("docker sandbox is closed")
        ctr = self._idle.get()
        healthy = True
        try:
            got, healthy = self._exec_in(ctr, jobs)
            return got
        finally:
            if healthy and not self._closed:
                self._idle.put(ctr)
            else:
                # A container that hung or lost its runner is replaced, never reused.
                self._discard(ctr)
                if not self._closed:
                    try:
                        self._idle.put(self._create())
                    except SandboxInfraError:
                        pass

    def _exec_in(self, ctr: Any, jobs: Sequence[Job]) -> tuple[dict[int, RunResult], bool]:
        api = self.client.api
        batch = {
            "jobs": [j.wire() for j in jobs],
            "kill_all": True,
            "wipe": True,
            "scratch": "/tmp",
        }
        try:
            eid = api.exec_create(
                ctr.id,
                ["python3", "-I", "-S", "-c", RUNNER_SOURCE],
                stdin=True,
                stdout=True,
                stderr=True,
                user=self.user,
                workdir="/tmp",
            )["Id"]
            sock = api.exec_start(eid, socket=True)
        except Exception as e:
            raise SandboxInfraError(f"docker exec failed: {e}") from None
        raw: socket.socket = getattr(sock, "_sock", sock)
        # The runner enforces each job's timeout; this outside deadline, re-armed at every line
        # the runner prints, catches a runner that a job stopped or wedged.
        deadline = time.monotonic() + STARTUP_S
        lines_seen = 0
        out, err = bytearray(), bytearray()
        timed_out = False
        try:
            raw.sendall(json.dumps(batch).encode())
            raw.shutdown(socket.SHUT_WR)
            buf = bytearray()
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    timed_out = True
                    break
                raw.settimeout(left)
                try:
                    chunk = raw.recv(1 << 16)
                except TimeoutError:
                    timed_out = True
                    break
                if not chunk:
                    break
                buf += chunk
                while len(buf) >= 8:  # docker's multiplexed frames: type, 0,0,0, be32 length
                    kind, size = buf[0], struct.unpack(">I", bytes(buf[4:8]))[0]
                    if len(buf) < 8 + size:
                        break
                    (out if kind == 1 else err).extend(buf[8 : 8 + size])
                    del buf[: 8 + size]
                lines = out.count(b"\n")
                if lines > lines_seen:
                    lines_seen = lines
                    nxt = min(lines // 2, len(jobs) - 1)  # a start line and a result per job
                    deadline = time.monotonic() + jobs[nxt].timeout + WATCHDOG_MARGIN_S
        except OSError as e:
            raise SandboxInfraError(f"docker exec stream broke: {e}") from None
        finally:
            try:
                sock.close()
            except Exception:
                pass
        got: dict[int, RunResult] = {}
        for line in out.decode("utf-8", "replace").splitlines():
            try:
                d = json.loads(line)
            except ValueError:
                continue
            if "exit" in d and isinstance(d.get("i"), int) and 0 <= d["i"] < len(jobs):
                got[d["i"]] = RunResult.from_wire(d)
        if not got and not timed_out and b'"start"' not in out:
            # The runner never started a job: the sandbox is broken, not the program.
            raise SandboxInfraError(f"sandbox runner failed: {err.decode(errors='replace')[-500:]}")
        return got, not timed_out and len(got) == len(jobs)
