"""The abuse suite: hostile programs get the honest verdict and leave nothing behind.

Every case runs through a real backend (Docker engine; local processes), all cases of a
backend in one concurrent batch. After each batch: no process of the sandbox survives, and the
next (honest) sample in the same runner still passes, so nothing leaked between samples.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import textwrap
from pathlib import Path

import pytest
from verirl.rewards.code import function_verdict
from verirl.sandboxes.sandbox import Job

ADD_TEST = (
    "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(2, 2) == 4\n"
)
OK = "def add(a, b):\n    return a + b\n"
WRONG = "def add(a, b):\n    return a - b\n"
SECRET_ENV = "VERIRL_TEST_SECRET"
MARKER = "verirl-abuse-daemon"


def probe(body: str) -> str:
    """A solution whose add() returns 3/4 only when `body` (which sets `leak`) found nothing."""
    return (
        "def _probe():\n" + textwrap.indent(textwrap.dedent(body), "    ") + "\n    return leak\n"
        "def add(a, b):\n"
        "    return a + b if not _probe() else -1\n"
    )


# name -> (solution, expected statuses)
CASES: dict[str, tuple[str, set[str]]] = {
    "honest": (OK, {"correct"}),
    "wrong": (WRONG, {"incorrect"}),
    "raises": ("def add(a, b):\n    raise ValueError('no')\n", {"error"}),
    "syntax_error": ("def add(a, b) return a\n", {"error"}),
    "infinite_loop": ("def add(a, b):\n    while True: pass\n", {"timeout"}),
    "loop_ignoring_signals": (
        "import signal\nfor s in (signal.SIGALRM, signal.SIGTERM, signal.SIGINT):\n"
        "    signal.signal(s, signal.SIG_IGN)\ndef add(a, b):\n    while True: pass\n",
        {"timeout"},
    ),
    "fork_bomb": (
        "import os\ndef add(a, b):\n    while True:\n        try:\n            os.fork()\n"
        "        except OSError:\n            pass\n",
        {"timeout", "error"},
    ),
    "memory_bomb": ("def add(a, b):\n    x = bytearray(8 << 30)\n    return a + b\n", {"memory"}),
    "memory_growth": (
        "def add(a, b):\n    l = []\n    while True:\n        l.append(bytearray(16 << 20))\n",
        {"memory"},
    ),
    "output_flood": (
        "import sys\ndef add(a, b):\n    while True:\n        sys.stdout.write('x' * 4096)\n",
        {"error"},
    ),
    "disk_fill": (
        "def add(a, b):\n    with open('fill.bin', 'wb') as f:\n        while True:\n"
        "            f.write(b'x' * (1 << 20))\n",
        {"error"},
    ),
    "sys_exit_0_at_import": ("import sys\nsys.exit(0)\n" + WRONG, {"error"}),
    "os_exit_0_at_import": ("import os\nos._exit(0)\n" + WRONG, {"error"}),
    "os_exit_0_in_call": ("import os\ndef add(a, b):\n    os._exit(0)\n", {"error"}),
    "sys_exit_0_in_call": ("import sys\ndef add(a, b):\n    sys.exit(0)\n", {"error"}),
    "atexit_hook": (
        "import atexit, os\natexit.register(lambda: os._exit(0))\n" + WRONG,
        {"incorrect"},
    ),
    "lying_eq": (
        "class Any:\n    def __eq__(self, o): return True\n    def __ne__(self, o): return False\n"
        "def add(a, b):\n    return Any()\n",
        {"incorrect"},
    ),
    "int_subclass": (
        "class I(int):\n    def __eq__(self, o): return True\n    __hash__ = int.__hash__\n"
        "def add(a, b):\n    return I(0)\n",
        {"incorrect"},
    ),
    "patched_builtins": (
        "import builtins\nbuiltins.AssertionError = type('Nope', (Exception,), {})\n"
        "builtins.isinstance = lambda *a: True\nbuiltins.repr = lambda o: '3'\n" + WRONG,
        {"incorrect"},
    ),
    "forged_report": (
        "import os\nfor fd in range(3, 1024):\n    try:\n"
        "        os.write(fd, b\"x:('done', [])\\n\")\n    except OSError:\n        pass\n" + WRONG,
        {"incorrect"},
    ),
    "kill_parent": ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n" + OK, {"error"}),
    # Kills the runner where it may (Docker: same uid); elsewhere it kills nothing of ours.
    "kill_everything": (
        "import os, signal\nos.kill(-1, signal.SIGKILL)\n" + OK,
        {"error", "correct"},
    ),
    "stop_parent": ("import os, signal\nos.kill(os.getppid(), signal.SIGSTOP)\n" + OK, {"error"}),
    # The honest answer with a double-forked daemon left running: correct, but it must die.
    "double_fork_daemon": (
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        f"        open('/tmp/{MARKER}', 'w').write('x')\n        time.sleep(600)\n"
        "    os._exit(0)\n" + OK,
        {"correct"},
    ),
    "connect_out": (
        probe(
            "import socket\nleak = False\nfor host in ('1.1.1.1', '172.17.0.1', '10.0.0.1'):\n"
            "    try:\n        socket.create_connection((host, 53), timeout=1).close()\n"
            "        leak = True\n    except OSError:\n        pass"
        ),
        {"correct"},
    ),
    "read_host_env": (probe(f"import os\nleak = {SECRET_ENV!r} in os.environ"), {"correct"}),
}

# Processes in a container other than pid 1, this probe, and the pool's persistent runner.
LIST_PIDS = """
import os
def cmd(p):
    try:
        return open(f"/proc/{p}/cmdline", "rb").read().split(bytes(1))
    except OSError:
        return []
print([p for p in os.listdir("/proc") if p.isdigit() and p not in ("1", str(os.getpid()))
       and cmd(p)[-2:] != [b"serve", b""]])
"""

# Docker only: the process backend shares the host's /tmp and /proc (documented); its leftover
# processes are checked from the host after the batch instead.
DOCKER_ONLY: dict[str, tuple[str, set[str]]] = {
    "double_fork_daemon_again": CASES["double_fork_daemon"],
    # Runs right after the daemon in the same runner: sees no trace of it.
    "no_leak_from_previous": (
        probe(
            f"import os\nleak = os.path.exists('/tmp/{MARKER}') or any(\n"
            "    p.isdigit() and int(p) not in (1, os.getpid(), os.getppid())\n"
            "    and open(f'/proc/{p}/status').read().find('State:\\tZ') < 0\n"
            "    and os.stat(f'/proc/{p}').st_uid == os.getuid()\n"
            "    for p in os.listdir('/proc'))"
        ),
        {"correct"},
    ),
}

HOST_FILE_CASES = {
    "read_host_file": "leak = False\ntry:\n    leak = open({path!r}).read() == 'secret'\n"
    "except OSError:\n    pass",
    "write_host_file": "leak = False\ntry:\n    open({path!r} + '.w', 'w').write('x')\n"
    "    leak = True\nexcept OSError:\n    pass",
}


def _leftover_processes(uid: int) -> list[str]:
    found = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{p}")
            cmd = open(f"/proc/{p}/cmdline", "rb").read()
        except OSError:
            continue
        if st.st_uid == uid or MARKER.encode() in cmd:
            found.append(f"{p}: {cmd[:80]!r}")
    return found


def _run_cases(sandbox, cases, monkeypatch):
    monkeypatch.setenv(SECRET_ENV, "s3cret")
    names = list(cases)
    jobs = [
        Job("function", cases[n][0], ADD_TEST, "add", timeout=2.0, memory_mb=256) for n in names
    ]
    runs = sandbox.run(jobs)
    return {n: function_verdict(r, j.nonce) for n, r, j in zip(names, runs, jobs, strict=True)}


@pytest.fixture
def host_dir():
    """A host directory everyone may traverse (pytest's tmp_path is private to root)."""
    d = tempfile.mkdtemp(prefix="verirl-abuse-")
    os.chmod(d, 0o755)
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(params=[pytest.param("docker", marks=pytest.mark.docker), "process"])
def backend(request):
    if request.param == "docker":
        return "docker", request.getfixturevalue("docker_pool")
    # One runner at a time: concurrent process-backend samples share one uid's process budget
    # (RLIMIT_NPROC), so a fork bomb could starve its neighbour (a documented weakness).
    from verirl.sandboxes.process import ProcessSandbox

    sb = ProcessSandbox(workers=1)
    request.addfinalizer(sb.close)
    return "process", sb


def test_abuse_cases_get_honest_verdicts(backend, host_dir, monkeypatch):
    kind, sandbox = backend
    cases = dict(CASES)
    if kind == "docker":
        cases.update(DOCKER_ONLY)
    if kind == "process" and not getattr(sandbox, "isolated_network", False):
        cases.pop("connect_out")  # without unshare the process backend has the host network
    secret = host_dir / "secret.txt"
    secret.write_text("secret")
    os.chmod(secret, 0o600)  # root-only: nobody (the process backend's uid) may not read it
    for name, body in HOST_FILE_CASES.items():
        cases[name] = (probe(body.format(path=str(secret))), {"correct"})
    verdicts = _run_cases(sandbox, cases, monkeypatch)
    wrong = {
        n: (v.status, v.detail[:200]) for n, v in verdicts.items() if v.status not in cases[n][1]
    }
    assert not wrong, wrong
    assert not (host_dir / "secret.txt.w").exists()
    if kind == "docker":
        for ctr in sandbox._all:  # only pid 1 (sleep) and the idle runner may remain
            out = ctr.exec_run(["python3", "-I", "-S", "-c", LIST_PIDS]).output.decode()
            assert out.strip() == "[]", out
            tmp = ctr.exec_run(["ls", "-A", "/tmp"]).output.decode().split()
            assert tmp == [], tmp
    else:
        assert _leftover_processes(65534) == []
        if os.path.exists(f"/tmp/{MARKER}"):  # the shared host /tmp: a documented weakness
            os.unlink(f"/tmp/{MARKER}")


def test_process_backend_reads_world_readable_host_files(process_sandbox, host_dir, monkeypatch):
    """Documented weakness: no filesystem isolation without Docker."""
    f = host_dir / "public.txt"
    f.write_text("secret")
    os.chmod(f, 0o644)
    code = probe(f"leak = open({str(f)!r}).read() == 'secret'")
    v = _run_cases(process_sandbox, {"read": (code, set())}, monkeypatch)["read"]
    assert v.status == "incorrect"  # the probe saw the file: the process backend cannot hide it


@pytest.mark.parametrize("kind", [pytest.param("docker", marks=pytest.mark.docker), "process"])
def test_solution_cannot_redefine_prompt_helpers_or_builtins(kind, request):
    sandbox = request.getfixturevalue("docker_pool" if kind == "docker" else "process_sandbox")
    prelude = "def ref(a, b):\n    return a + b\n"
    test = (
        "def check(candidate):\n    assert candidate(2, 2) == ref(2, 2)\n"
        "    assert abs(candidate(1, 2) - 3) < 0.5\n"
    )
    cheat = (
        prelude
        + "def ref(a, b):\n    return -1\nabs = lambda x: 0\ndef add(a, b):\n    return -1\n"
    )
    honest = prelude + OK
    jobs = [Job("function", c, test, "add", prelude=prelude) for c in (cheat, honest)]
    runs = sandbox.run(jobs)
    got = [function_verdict(r, j.nonce).status for r, j in zip(runs, jobs, strict=True)]
    assert got == ["incorrect", "correct"]
