"""Engine bring-up helpers, the Docker pool's lifecycle (crash, Ctrl-C), doctor, and fallback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from verirl.sandboxes import engine
from verirl.sandboxes.sandbox import SandboxInfraError, make_sandbox

HOLDER = r"""
import sys
from verirl.sandboxes.docker_pool import DockerPool
from verirl.sandboxes.sandbox import Job
pool = DockerPool(workers=2, batch_size=1)
print("ready", flush=True)
slow = Job("function", "import time\ndef f():\n    time.sleep(120)\n", "def check(c):\n    c()\n",
           "f", timeout=120)
pool.run([slow, slow])
"""


def test_image_tag_follows_the_manifest(tmp_path):
    m = tmp_path / "manifest.txt"
    m.write_text(engine.MANIFEST.read_text())
    tag = engine.image_tag(m)
    assert tag.startswith("verirl-sandbox:") and tag == engine.image_tag(m)
    m.write_text(m.read_text() + "# changed\n")
    assert engine.image_tag(m) != tag
    man = engine.read_manifest()
    assert man.uid != 0 and "python3-minimal" in man.include


def test_engine_cli_usage_error():
    assert engine.main(["down"]) == 2


def test_no_engine_docker_is_infra_error_and_auto_falls_back(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(SandboxInfraError, match="docker sandbox unavailable"):
        make_sandbox("docker")
    with pytest.warns(UserWarning, match="process backend"):
        sb = make_sandbox("auto")
    assert sb.kind == "process"
    sb.close()
    from verirl.envs.registry import make_env

    with make_env("humaneval", sandbox="docker") as env:
        row = env.rows()[0]
        res = env.score_batch([row["canonical_solution"]], [row])
    assert res[0].status == "infra_error" and "unavailable" in res[0].detail


def _holder():
    p = subprocess.Popen([sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    time.sleep(1.5)  # both batches are inside their containers now
    return p


def _owned(pid: int) -> list:
    from verirl.sandboxes.docker_pool import OWNER_LABEL

    c = engine.client()
    return c.containers.list(all=True, filters={"label": f"{OWNER_LABEL}={pid}"})


@pytest.mark.docker
def test_ctrl_c_leaves_no_containers():
    p = _holder()
    assert len(_owned(p.pid)) == 2
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=60) != 0
    assert _owned(p.pid) == []


@pytest.mark.docker
def test_crashed_owner_containers_are_reaped():
    from verirl.sandboxes.docker_pool import reap_stale

    p = _holder()
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    assert len(_owned(p.pid)) == 2  # a SIGKILLed caller cannot clean up...
    assert reap_stale(engine.client()) >= 2  # ...the next pool does
    assert _owned(p.pid) == []


@pytest.mark.docker
def test_doctor_reports_every_limit():
    r = subprocess.run([sys.executable, "-m", "verirl", "sandbox", "doctor"], capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    for what in ("memory cap", "pids cap", "cpu quota", "read-only root fs", "network none",
                 "non-root user", "all capabilities dropped", "no-new-privileges", "tmpfs"):  # fmt: skip
        assert f"[ok] {what}" in r.stdout, r.stdout
