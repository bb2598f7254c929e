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
        {"incorrect", "error"},  # the forged line garbles the solution's reply channel
    ),
    # The parent (the zygote), pid 1 and the runner are root: every signal is refused.
    "signal_parent_pid1_runner": (
        probe(
            "import os, signal\nleak = False\n"
            "runner = [p for p in os.listdir('/proc') if p.isdigit()\n"
            "          and open(f'/proc/{p}/cmdline', 'rb').read().endswith(b'serve\\0')]\n"
            "for pid in [os.getppid(), 1] + [int(p) for p in runner]:\n"
            "    for sig in (signal.SIGSTOP, signal.SIGKILL):\n"
            "        try:\n            os.kill(pid, sig)\n            leak = True\n"
            "        except OSError:\n            pass"
        ),
        {"correct"},
    ),
    # Reaches only the sample's own uid (the harness is another): nothing of ours dies.
    "kill_everything": (
        "import os, signal\ntry:\n    os.kill(-1, signal.SIGKILL)\nexcept OSError:\n    pass\n"
        + OK,
        {"correct"},
    ),
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

# Report forging: collect every nonce-like string and every function named `report` that the
# program can reach, then write forged "done" reports to every fd and call those functions.
FORGE = """
import os, re
_NONCE = re.compile(r"[0-9a-f]{32}")
def _forge(values, raw=b""):
    nonces, reports = set(_NONCE.findall(raw.decode("latin-1"))), []
    for v in values:
        if isinstance(v, (str, bytes)) and len(v) < 1 << 22:
            nonces.update(_NONCE.findall(v if isinstance(v, str) else v.decode("latin-1")))
        elif callable(v) and getattr(v, "__name__", "") == "report":
            reports.append(v)
    for r in reports:  # one forged line only: a second one would spoil the first
        try:
            r(("done", []))
            os._exit(0)
        except Exception:
            pass
    for n in nonces:
        msg = (n + ":('done', [])\\n").encode()
        for fd in range(3, 1024):
            try:
                os.write(fd, msg)
            except OSError:
                pass
    os._exit(0)
"""

# Walk the call stack (and every closure cell on it) for the nonce and the report writer.
FRAME_WALK = (
    FORGE
    + """
import sys
def add(a, b):
    vals, f = [], sys._getframe()
    while f is not None:
        for v in list(f.f_locals.values()) + list(f.f_globals.values()):
            vals.append(v)
            vals += [c.cell_contents for c in getattr(v, "__closure__", None) or ()
                     if hasattr(c, "cell_contents")]
            if isinstance(v, dict):
                vals += list(v.values())
        f = f.f_back
    _forge(vals)
"""
)

GC_SCAN = (
    FORGE
    + """
import gc
def add(a, b):
    vals = []
    for o in gc.get_objects():
        if isinstance(o, dict):
            vals += list(o.values())
        elif isinstance(o, (list, tuple)):
            vals += list(o)
        elif callable(o):
            vals.append(o)
    _forge(vals)
"""
)

# Read the process's own memory with ctypes, region by region.
CTYPES_SCAN = (
    FORGE
    + """
import ctypes
def add(a, b):
    raw = []
    for line in open("/proc/self/maps"):
        addr, perms = line.split()[:2]
        lo, hi = (int(x, 16) for x in addr.split("-"))
        if perms.startswith("rw") and hi - lo < 64 << 20:
            raw.append(ctypes.string_at(lo, hi - lo))
    _forge([], b"".join(raw))
"""
)

# A thread that keeps re-patching builtins and forging reports while the test runs.
PATCHING_THREAD = (
    FORGE.replace("    os._exit(0)", "")
    + """
import builtins, gc, sys, threading
def _patch():
    while True:
        builtins.repr = lambda o: "3"
        builtins.isinstance = lambda *a: True
        vals = [v for f in sys._current_frames().values() for v in f.f_locals.values()]
        for f in sys._current_frames().values():
            while f is not None:
                vals += list(f.f_locals.values())
                vals += [c.cell_contents for v in f.f_locals.values()
                         for c in getattr(v, "__closure__", None) or ()]
                f = f.f_back
        _forge(vals + [v for o in gc.get_objects() if isinstance(o, dict) for v in o.values()])
threading.Thread(target=_patch, daemon=True).start()
"""
    + WRONG
)

# Reach into the parent (the harness) through /proc: memory, environment, fds.
PROC_PARENT = """
import os
leak = False
p = os.getppid()
for path in (f"/proc/{p}/mem", f"/proc/{p}/environ", f"/proc/{p}/fd/0"):
    try:
        with open(path, "rb") as f:
            if path.endswith("mem"):
                start = int(open(f"/proc/{p}/maps").read().split("-")[0], 16)
                f.seek(start)
            leak = leak or len(f.read(16)) > 0
    except (OSError, ValueError):
        pass
try:
    leak = leak or len(os.listdir(f"/proc/{p}/fd")) > 0
except OSError:
    pass
"""

# Attach to the harness with ptrace, or read its memory with process_vm_readv.
PTRACE_PARENT = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
p = os.getppid()
leak = False
for req in (16, 0x4206):  # PTRACE_ATTACH, PTRACE_SEIZE
    if libc.ptrace(req, p, 0, 0) == 0:
        leak = True
        libc.ptrace(17, p, 0, 0)  # PTRACE_DETACH
class IOVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
buf = ctypes.create_string_buffer(16)
try:
    start = int(open(f"/proc/{p}/maps").read().split("-")[0], 16)
except (OSError, ValueError):
    start = 0x400000
local, remote = IOVec(ctypes.addressof(buf), 16), IOVec(start, 16)
if libc.process_vm_readv(p, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0) > 0:
    leak = True
"""

CASES.update(
    {
        # Not a pass; a scan of the whole address space may also run out of wall time.
        "frame_walk_forge": (FRAME_WALK, {"error", "incorrect", "timeout"}),
        "gc_scan_forge": (GC_SCAN, {"error", "incorrect", "timeout"}),
        "ctypes_memory_forge": (CTYPES_SCAN, {"error", "incorrect", "timeout"}),
        "patching_thread": (PATCHING_THREAD, {"error", "incorrect", "timeout"}),
        "proc_parent_mem_environ_fd": (probe(PROC_PARENT), {"correct"}),
        "ptrace_parent": (probe(PTRACE_PARENT), {"correct"}),
    }
)

# Processes in a container other than pid 1, this probe, the persistent runner and its zygote.
LIST_PIDS = """
import os
def cmd(p):
    try:
        return open(f"/proc/{p}/cmdline", "rb").read().split(bytes(1))
    except OSError:
        return []
print([p for p in os.listdir("/proc") if p.isdigit() and p not in ("1", str(os.getpid()))
       and cmd(p)[-2:] != [b"serve", b""] and b"vr-zygote" not in cmd(p)])
"""

# Both backends have a private /tmp and /proc (Docker: the container; process: the jail).
AFTER_DAEMON: dict[str, tuple[str, set[str]]] = {
    "double_fork_daemon_again": CASES["double_fork_daemon"],
    # Runs right after the daemon in the same runner: sees no trace of it.
    "no_leak_from_previous": (
        probe(
            f"import os\nleak = os.path.exists('/tmp/{MARKER}') or any(\n"
            "    p.isdigit() and int(p) != os.getpid()\n"
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


def _leftover_processes() -> list[str]:
    """Host processes of the process backend's sandbox uids, or carrying the daemon marker."""
    from verirl.sandboxes.process import UID_BASE, UID_SLOTS

    found = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{p}")
            cmd = open(f"/proc/{p}/cmdline", "rb").read()
        except OSError:
            continue
        if UID_BASE <= st.st_uid < UID_BASE + 2 * UID_SLOTS or MARKER.encode() in cmd:
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
    # One runner, so that the cases after the daemon run after it in the same runner.
    from verirl.sandboxes.process import ProcessSandbox

    sb = ProcessSandbox(workers=1, batch_size=64)
    request.addfinalizer(sb.close)
    return "process", sb


def test_abuse_cases_get_honest_verdicts(backend, host_dir, monkeypatch):
    kind, sandbox = backend
    cases = dict(CASES)
    cases.update(AFTER_DAEMON)
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
        assert _leftover_processes() == []
        assert not os.path.exists(f"/tmp/{MARKER}")  # the jail's /tmp, not the host's


def test_process_backend_jail_hides_world_readable_host_files(
    process_sandbox, host_dir, monkeypatch
):
    """Run as root, the process backend chroots into system directories only: a world-
    readable file elsewhere on the host (the scorer's input, the repository) is not there."""
    assert process_sandbox.jailed
    f = host_dir / "public.txt"
    f.write_text("secret")
    os.chmod(f, 0o644)
    repo = Path(__file__).resolve()
    code = probe(f"import os\nleak = os.path.exists({str(f)!r}) or os.path.exists({str(repo)!r})")
    v = _run_cases(process_sandbox, {"read": (code, set())}, monkeypatch)["read"]
    assert v.status == "correct", v


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


def test_process_backend_in_a_user_namespace_drops_capabilities(monkeypatch):
    """Run by a non-root user, the process backend's programs are root in a user namespace:
    the harness drops every capability first, so they cannot ptrace or read it either."""
    import shutil

    from verirl.sandboxes.process import ProcessSandbox

    exe = shutil.which("unshare")
    sb = ProcessSandbox(workers=1)
    try:
        sb.prefix = (exe or "unshare", "--net", "--pid", "--fork", "--kill-child", "--user")
        sb.prefix += ("--map-root-user",)
        sb.drop_uid = None
        names = ["honest", "ptrace_parent", "proc_parent_mem_environ_fd", "frame_walk_forge"]
        verdicts = _run_cases(sb, {n: CASES[n] for n in names}, monkeypatch)
    finally:
        sb.close()
    got = {n: v.status for n, v in verdicts.items()}
    if got["honest"] == "infra_error" or exe is None:
        pytest.fail(f"unshare --user does not work here: {verdicts['honest'].detail}")
    assert got["honest"] == "correct"
    assert got["ptrace_parent"] == "correct"  # the probe found no way in
    assert got["proc_parent_mem_environ_fd"] == "correct"
    assert got["frame_walk_forge"] in ("error", "incorrect")
