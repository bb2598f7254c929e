"""Red-team round 2, class 7: faults end in a verdict or infra_error, in bounded time.

Killed containers (mid-batch, during the solo re-run, the pool's container -0), a killed
process-backend runner, and a stopped and restarted Docker engine. Never a hang, never a
death the program did not cause scored as its ``error``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

import pytest
from verirl.rewards.code import function_verdict
from verirl.sandboxes.sandbox import Job, RunResult, Sandbox

ADD_TEST = "def check(candidate):\n    assert candidate(1, 2) == 3\n"
OK = "def add(a, b):\n    return a + b\n"
SLOW_OK = "import time\ndef add(a, b):\n    time.sleep(0.4)\n    return a + b\n"


class Scripted(Sandbox):
    """A sandbox whose runner ends each batch as scripted: (number of results, how)."""

    kind = "scripted"

    def __init__(self, script: list[tuple[int, str]]) -> None:
        super().__init__(workers=1, batch_size=64)
        self.script, self.calls = list(script), []

    def _exec(self, jobs: Sequence[Job]) -> tuple[dict[int, RunResult], str]:
        self.calls.append(len(jobs))
        n, how = self.script.pop(0) if self.script else (len(jobs), "ok")
        return {k: RunResult(exit=0) for k in range(min(n, len(jobs)))}, how


def _jobs(n: int) -> list[Job]:
    return [Job("function", OK, ADD_TEST, "add") for _ in range(n)]


def test_a_lost_sandbox_blames_nobody_and_is_retried_once():
    sb = Scripted([(1, "lost"), (0, "lost"), (0, "lost")])
    got = sb.run(_jobs(4))
    assert got[0].exit == 0
    assert all(r.infra and not r.harness_killed for r in got[1:]), got
    assert sb.calls == [4, 3, 3]  # one retry without progress, then infra


def test_a_dirty_runner_hands_the_rest_to_a_fresh_one():
    sb = Scripted([(2, "dirty")])
    got = sb.run(_jobs(4))
    assert all(r.exit == 0 for r in got) and sb.calls == [4, 2]


def test_a_runner_death_reruns_the_culprit_alone_and_blames_it_only_alone():
    sb = Scripted([(1, "died"), (0, "died")])
    got = sb.run(_jobs(3))
    assert got[0].exit == 0 and got[1].harness_killed and got[2].exit == 0
    assert sb.calls == [3, 1, 1]


def test_a_lost_sandbox_during_the_solo_rerun_is_infra_not_error():
    sb = Scripted([(0, "died"), (0, "lost"), (0, "lost")])
    got = sb.run(_jobs(2))
    assert got[0].infra and not got[0].harness_killed, got[0]
    assert got[1].exit == 0


def _in_thread(fn, timeout: float):
    box: dict[str, object] = {}
    t = threading.Thread(target=lambda: box.update(value=fn()), daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"no result within {timeout}s: a hang"
    return box["value"]


def _statuses(runs, jobs) -> list[str]:
    return [function_verdict(r, j.nonce).status for r, j in zip(runs, jobs, strict=True)]


@pytest.mark.docker
def test_killing_container_0_mid_batch_costs_no_verdict_and_no_pool_slot():
    from verirl.sandboxes.docker_pool import DockerPool

    with DockerPool(workers=2, batch_size=4) as pool:
        first = pool._all[0]
        assert first.name.endswith("-0")
        jobs = [Job("function", SLOW_OK, ADD_TEST, "add", timeout=5.0) for _ in range(8)]
        threading.Timer(1.0, lambda: first.kill()).start()
        runs = _in_thread(lambda: pool.run(jobs), 120)
        assert _statuses(runs, jobs) == ["correct"] * 8
        names = [c.name for c in pool._all]
        assert len(names) == 2 and len(set(names)) == 2 and first.name not in names
        again = _jobs(4)
        assert _statuses(pool.run(again), again) == ["correct"] * 4


@pytest.mark.docker
def test_containers_dying_under_every_try_are_infra_error_never_error():
    from verirl.sandboxes.docker_pool import DockerPool

    stop = threading.Event()
    with DockerPool(workers=1, batch_size=4) as pool:

        def killer() -> None:
            while not stop.is_set():
                for c in list(pool._all):
                    if pool._sessions.get(c.id) is not None:  # a runner is on it
                        time.sleep(0.5)
                        try:
                            c.kill()
                        except Exception:
                            pass
                time.sleep(0.05)

        threading.Thread(target=killer, daemon=True).start()
        jobs = [Job("function", SLOW_OK, ADD_TEST, "add", timeout=5.0) for _ in range(3)]
        try:
            runs = _in_thread(lambda: pool.run(jobs), 150)
        finally:
            stop.set()
        got = _statuses(runs, jobs)
        assert "error" not in got and set(got) <= {"infra_error", "correct"}, got
        assert "infra_error" in got
        time.sleep(0.6)
        again = _jobs(2)
        assert _statuses(pool.run(again), again) == ["correct"] * 2  # the pool recovered


def test_a_killed_process_runner_costs_no_verdict():
    from verirl.sandboxes.process import ProcessSandbox

    me = os.getpid()

    def kill_runner() -> None:
        for p in os.listdir("/proc"):
            try:
                stat = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
                if int(stat[1]) == me:  # our child: the runner (or its unshare)
                    os.killpg(int(p), signal.SIGKILL)
            except (OSError, ValueError, IndexError):
                pass

    with ProcessSandbox(workers=1, batch_size=8) as sb:
        jobs = [Job("function", SLOW_OK, ADD_TEST, "add", timeout=5.0) for _ in range(5)]
        threading.Timer(1.0, kill_runner).start()
        runs = _in_thread(lambda: sb.run(jobs), 120)
    assert _statuses(runs, jobs) == ["correct"] * 5


def _cli_rows(tmp_path) -> str:
    row = {
        "prompt": "def add(a, b):\n",
        "test": ADD_TEST,
        "entry_point": "add",
        "completion": "    return a + b\n",
    }
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(row) + "\n")
    return str(path)


@pytest.mark.docker
@pytest.mark.slow
def test_engine_stopped_mid_run_then_restarted(tmp_path):
    """dockerd dies under a running batch: every row ends (infra_error or its verdict) in
    bounded time, the CLI says so and exits non-zero, and after a restart the same pool
    serves again. dockerd is running again when this test ends, whatever happens."""
    from verirl.sandboxes import engine
    from verirl.sandboxes.docker_pool import DockerPool

    if os.geteuid() != 0 or engine.dockerd_pid() is None:
        pytest.skip("needs root and a local dockerd this test may restart")
    pool = DockerPool(workers=2, batch_size=2)
    try:
        jobs = [Job("function", SLOW_OK, ADD_TEST, "add", timeout=5.0) for _ in range(8)]
        pid = engine.dockerd_pid()
        assert pid is not None
        threading.Timer(1.0, lambda: os.kill(pid, signal.SIGTERM)).start()
        runs = _in_thread(lambda: pool.run(jobs), 180)
        got = _statuses(runs, jobs)
        assert set(got) <= {"infra_error", "correct"} and "infra_error" in got, got
        for _ in range(300):  # its shutdown ends when the containers are gone
            if engine.dockerd_pid() is None:
                break
            time.sleep(0.1)
        assert engine.dockerd_pid() is None
        out = tmp_path / "scored.jsonl"
        r = subprocess.run(
            [sys.executable, "-m", "verirl", "score", "code", "--input", _cli_rows(tmp_path),
             "--output", str(out), "--sandbox", "docker", "--quiet"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert r.returncode != 0, r.stdout + r.stderr
        assert "docker" in (r.stdout + r.stderr).lower(), r.stdout + r.stderr
    finally:
        if not engine.engine_running():
            engine.start_engine(wait_s=120)
    again = _jobs(2)
    try:
        assert _statuses(_in_thread(lambda: pool.run(again), 120), again) == ["correct"] * 2
    finally:
        pool.close()
