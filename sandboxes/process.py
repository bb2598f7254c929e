"""Process backend: the runner as a local subprocess, for machines without Docker.

Weaker than Docker (see the threat model in `verirl.sandboxes.sandbox`): rlimits, a session
killed on timeout, an empty environment, a private temp dir, and, when ``unshare`` is
permitted, fresh network and pid namespaces (the runner is then pid 1 of its namespace: every
process a sample leaves dies with it, and nothing can reach the network). Started as root, the
programs run as uid 65534. There is no filesystem isolation.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence

from verirl.sandboxes.sandbox import RUNNER_SOURCE, Job, RunResult, Sandbox, SandboxInfraError

NOBODY = 65534


@functools.cache
def unshare_prefix() -> tuple[str, ...]:
    """The ``unshare`` command line that works here (net+pid namespaces), or ()."""
    exe = shutil.which("unshare")
    if exe is None:
        return ()
    base = (exe, "--net", "--pid", "--fork", "--kill-child")
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


class ProcessSandbox(Sandbox):
    """Each batch: one runner subprocess, in fresh namespaces when permitted."""

    kind = "process"

    def __init__(self, workers: int = 2, batch_size: int = 16, use_unshare: bool = True) -> None:
        super().__init__(workers, batch_size)
        self.prefix = unshare_prefix() if use_unshare else ()
        # As root we drop the programs to nobody; a user namespace maps us to root inside it,
        # where dropping is not possible (and not needed: we are not root outside).
        self.drop_uid = NOBODY if os.geteuid() == 0 and "--user" not in self.prefix else None

    @property
    def python(self) -> str:
        """A system interpreter when there is one: uid 65534 must be able to read its stdlib
        (a pyenv under /root is not readable to it)."""
        system = shutil.which("python3", path="/usr/bin:/bin")
        return system if self.drop_uid is not None and system else sys.executable

    @property
    def isolated_network(self) -> bool:
        return bool(self.prefix)

    def _exec(self, jobs: Sequence[Job]) -> dict[int, RunResult]:
        scratch = tempfile.mkdtemp(prefix="verirl-proc-")
        os.chmod(scratch, 0o711)  # nobody must traverse it to reach its own work dir
        batch = {
            "jobs": [j.wire() for j in jobs],
            # kill(-1) is safe only where the runner is alone in its pid namespace.
            "kill_all": "--pid" in self.prefix,
            "scratch": scratch,
            "drop_to_uid": self.drop_uid,
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
                cwd=scratch,
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
            shutil.rmtree(scratch, ignore_errors=True)
        got: dict[int, RunResult] = {}
        for line in out.decode("utf-8", "replace").splitlines():
            try:
                d = json.loads(line)
            except ValueError:
                continue
            if "exit" in d and isinstance(d.get("i"), int) and 0 <= d["i"] < len(jobs):
                got[d["i"]] = RunResult.from_wire(d)
        if not got and b'"start"' not in out:
            raise SandboxInfraError(f"runner failed: {err.decode(errors='replace')[-500:]}")
        return got


def _kill_group(p: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(p.pid, 9)
    except OSError:
        pass
