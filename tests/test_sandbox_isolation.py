"""Red-team round 2, classes 1-5: pid 1, what the solution holds, state that outlives a sample,
root as a confused deputy, limits shared across sandboxes. Every case runs on both backends.

Each probe is an honest solution that returns the right answer only if its attack found
nothing (`probe`), so "correct" means the attack failed; cases that must run one after the
other in the same runner go through a one-worker sandbox in one batch.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import textwrap
from pathlib import Path

import pytest
from verirl.rewards.code import function_verdict, stdio_verdict
from verirl.sandboxes.sandbox import Job

ADD_TEST = (
    "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(2, 2) == 4\n"
)
OK = "def add(a, b):\n    return a + b\n"
WRONG = "def add(a, b):\n    return a - b\n"
MARK = "VRMARK" + "7q3z"  # split, so this file's own text never matches a memory scan


def probe(body: str) -> str:
    return (
        "def _probe():\n" + textwrap.indent(textwrap.dedent(body), "    ") + "\n    return leak\n"
        "def add(a, b):\n    return a + b if not _probe() else -1\n"
    )


@pytest.fixture(scope="module")
def docker_one():
    from verirl.sandboxes.docker_pool import DockerPool

    pool = DockerPool(workers=1, batch_size=64)
    yield pool
    pool.close()


@pytest.fixture(params=[pytest.param("docker", marks=pytest.mark.docker), "process"])
def one_runner(request):
    """A sandbox whose batch runs in one runner, jobs in order."""
    if request.param == "docker":
        return request.getfixturevalue("docker_one")
    from verirl.sandboxes.process import ProcessSandbox

    sb = ProcessSandbox(workers=1, batch_size=64)
    request.addfinalizer(sb.close)
    return sb


def _verdicts(sandbox, cases: dict[str, str], test: str = ADD_TEST) -> dict[str, str]:
    jobs = [
        Job("function", code, test, "add", timeout=5.0, memory_mb=256) for code in cases.values()
    ]
    runs = sandbox.run(jobs)
    return {
        n: function_verdict(r, j.nonce).status for n, r, j in zip(cases, runs, jobs, strict=True)
    }


# 1. pid 1 (and every trusted process) is another uid: no signal, no ptrace reaches it.
PID1 = """
import ctypes, os, signal
libc = ctypes.CDLL(None, use_errno=True)
me = os.getuid()
others = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()
          and os.stat(f"/proc/{p}").st_uid != me]
leak = not others or 1 not in others  # pid 1 must exist and not be ours
for pid in others:
    for sig in (0, signal.SIGSTOP, signal.SIGKILL):
        try:
            os.kill(pid, sig)
            leak = True
        except OSError:
            pass
    for req in (16, 0x4206):  # PTRACE_ATTACH, PTRACE_SEIZE
        if libc.ptrace(req, pid, 0, 0) == 0:
            leak = True
"""


# ... and nothing lifts the sample: no capability, no_new_privs (a setuid binary gives none).
NO_WAY_UP = """
st = dict(ln.split(":", 1) for ln in open("/proc/self/status") if ":" in ln)
leak = st["NoNewPrivs"].strip() != "1" or int(st["CapEff"], 16) or int(st["CapPrm"], 16)
"""


def test_pid1_and_trusted_processes_cannot_be_signalled_or_traced(one_runner):
    got = _verdicts(one_runner, {"pid1": probe(PID1), "up": probe(NO_WAY_UP)})
    assert got == {"pid1": "correct", "up": "correct"}


# 2. The solution's memory holds its own program and arguments, nothing else.
SCAN_SELF = f"""
import ctypes, gc, sys
needle = {MARK[:6]!r} + {MARK[6:]!r}
raw = []
for line in open("/proc/self/maps"):
    addr, perms = line.split()[:2]
    lo, hi = (int(x, 16) for x in addr.split("-"))
    if perms.startswith("rw") and hi - lo < 256 << 20:
        try:
            raw.append(ctypes.string_at(lo, hi - lo))
        except Exception:
            pass
blob = b"".join(raw)
own = blob.count(needle.encode() + b"-own")  # this program's own marker: expected
leak = needle.encode() + b"-test" in blob or needle.encode() + b"-other" in blob
leak = leak or any(needle + suffix in v for v in gc.get_objects() if isinstance(v, str)
                   for suffix in ("-test", "-other"))
"""


def test_solution_memory_holds_no_test_and_no_other_sample(one_runner):
    test = ADD_TEST + f"    assert {MARK + '-test'!r} != candidate(0, 0)\n"
    other = f"# {MARK}-other\n" + OK
    me = f"# {MARK}-own\n" + probe(SCAN_SELF)
    got = _verdicts(one_runner, {"other": other, "scanner": me, "other2": other}, test)
    assert got == {"other": "correct", "scanner": "correct", "other2": "correct"}


PROC_CMDLINES = """
import os
leak = False
for p in os.listdir("/proc"):
    if p.isdigit():
        try:
            cmd = open(f"/proc/{p}/cmdline", "rb").read()
        except OSError:
            continue
        leak = leak or b"pytest" in cmd or b"--input" in cmd
"""


def test_no_host_command_line_is_visible(one_runner):
    """The scorer's ``--input`` path leaked through /proc/*/cmdline on the process backend."""
    assert _verdicts(one_runner, {"cmdlines": probe(PROC_CMDLINES)}) == {"cmdlines": "correct"}


# 3. Channels that must not survive the wipe: run a writer, then a reader in the same runner.
WRITER = (
    """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
for d in ("/tmp/vr-chan", "/dev/shm/vr-chan"):
    try:
        os.mkdir(d)
        open(d + "/answer", "w").write("3")
        os.chmod(d, 0o500)
    except OSError:
        pass
try:  # fill the rest of /tmp, protected (in files under the output cap, RLIMIT_FSIZE)
    os.mkdir("/tmp/vr-full")
    for k in range(100000):
        with open(f"/tmp/vr-full/{k}", "wb") as f:
            f.write(b"x" * (32 << 10))
except OSError:
    pass
os.chmod("/tmp/vr-full", 0o500) if os.path.isdir("/tmp/vr-full") else None
shm = libc.shmget(0x5652, 64 << 20, 0o1666)  # IPC_CREAT, 64 MiB
if shm >= 0:
    libc.shmat.restype = ctypes.c_void_p
    addr = libc.shmat(shm, None, 0)
    ctypes.memset(addr, 1, 64 << 20)  # charged to the sandbox's memory
libc.msgget(0x5653, 0o1666)
libc.semget(0x5654, 1, 0o1666)
libc.mq_open.restype = ctypes.c_int
libc.mq_open(b"/vr-chan", os.O_CREAT | os.O_RDWR, 0o666, None)
"""
    + OK
)

READER = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
leak = os.path.exists("/tmp/vr-chan") or os.path.exists("/dev/shm/vr-chan")
leak = leak or os.path.exists("/tmp/vr-full")
leak = leak or libc.shmget(0x5652, 0, 0) >= 0 or libc.msgget(0x5653, 0) >= 0
leak = leak or libc.semget(0x5654, 0, 0) >= 0
leak = leak or libc.mq_open(b"/vr-chan", os.O_RDONLY) >= 0
for kind in ("shm", "msg", "sem"):
    leak = leak or len(open(f"/proc/sysvipc/{kind}").read().splitlines()) > 1
try:  # a correct program may need /tmp again
    for k in range(64):
        with open(f"/tmp/room{k}", "wb") as f:
            f.write(b"x" * (32 << 10))
        os.unlink(f"/tmp/room{k}")
except OSError:
    leak = True
"""


def test_no_channel_survives_to_the_next_sample(one_runner):
    got = _verdicts(one_runner, {"writer": WRITER, "reader": probe(READER), "again": probe(READER)})
    assert got == {"writer": "correct", "reader": "correct", "again": "correct"}


def test_a_full_protected_tmp_does_not_silence_a_later_stdio_program(one_runner):
    jobs = [
        Job("stdio", WRITER, timeout=5.0),
        Job("stdio", "print(int(input()) * 2)\n", stdin="21\n", timeout=5.0),
    ]
    runs = one_runner.run(jobs)
    assert stdio_verdict([runs[1]], ["42"]).status == "correct", runs[1]


# 4. Process backend: root never follows a path the sample can write.
PLANT = (
    """
import os
# Replace the output files the runner might read back (as root) after the job, and plant
# links under the names it might open, all pointing at host files.
for name in (".stdout", ".stderr", ".stdin"):
    for d in (".", "/tmp", os.environ.get("TMPDIR", ".")):
        p = os.path.join(d, name)
        try:
            os.unlink(p)
        except OSError:
            pass
        try:
            os.symlink({secret!r} if name != ".stdin" else {victim!r}, p)
        except OSError:
            pass
print("planted")
"""
    + OK
)


def test_root_never_follows_a_planted_symlink():
    from verirl.sandboxes.process import ProcessSandbox

    d = Path(tempfile.mkdtemp(prefix="verirl-deputy-"))
    try:
        os.chmod(d, 0o755)
        victim, secret = d / "victim", d / "secret"
        victim.write_text("keep")
        secret.write_text("root only")
        os.chmod(secret, 0o600)
        code = PLANT.format(victim=str(victim), secret=str(secret))
        with ProcessSandbox(workers=2, batch_size=2) as sb:
            runs = sb.run([Job("function", code, ADD_TEST, "add", timeout=5.0) for _ in range(4)])
        assert victim.read_text() == "keep"
        st = victim.stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o644)
        assert all("root only" not in r.stdout + r.stderr + r.report for r in runs)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_concurrent_runners_have_their_own_uids():
    from verirl.sandboxes.process import ProcessSandbox

    # Both hold their runner for a second: the two reservations overlap.
    code = "import os, time\ntime.sleep(1)\nprint(os.getuid(), flush=True)\n" + OK
    with ProcessSandbox(workers=2, batch_size=1) as sb:
        runs = sb.run([Job("function", code, ADD_TEST, "add", timeout=3.0) for _ in range(2)])
    uids = {r.stdout.split()[0] for r in runs}
    assert len(uids) == 2 and all(int(u) >= 61000 for u in uids), [r.stdout for r in runs]


# 5. Limits are per sandbox: a fork hog in one must not fail a correct sample in another.
HOG = (
    """
import os, time
kids = []
try:
    while True:
        pid = os.fork()
        if pid == 0:
            time.sleep(3)
            os._exit(0)
        kids.append(pid)
except OSError:
    pass
time.sleep(2.5)
"""
    + OK
)

VICTIM = (
    """
import os, time
time.sleep(0.8)  # the hog holds every process it can by now
for _ in range(20):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
"""
    + OK
)


@pytest.mark.parametrize("kind", [pytest.param("docker", marks=pytest.mark.docker), "process"])
def test_fork_hog_in_one_sandbox_does_not_fail_another(kind, request):
    sandbox = request.getfixturevalue("docker_pool" if kind == "docker" else "process_sandbox")
    jobs = [Job("function", c, ADD_TEST, "add", timeout=6.0) for c in (HOG, VICTIM)]
    runs = sandbox.run(jobs)  # two workers: the two run at once, in two sandboxes
    assert function_verdict(runs[1], jobs[1].nonce).status == "correct", runs[1]


LEAVE_TMP = "import os\nopen('/tmp/vr-left-' + str(os.getuid()), 'w').write('3')\n" + OK
FIND_TMP = "import os\nleak = any(n.startswith('vr-left-') for n in os.listdir('/tmp'))"


def test_without_namespaces_samples_still_get_their_own_uids_and_leave_nothing():
    """Root without ``unshare``: no jail, but own uids, and what they leave in the host's
    world-writable directories is removed (by owner) before the next sample."""
    from verirl.sandboxes.process import ProcessSandbox

    if os.geteuid() != 0:
        pytest.skip("needs root")
    with ProcessSandbox(workers=1, batch_size=8, use_unshare=False) as sb:
        assert sb.drops_uid and not sb.jailed
        got = _verdicts(sb, {"leave": LEAVE_TMP, "find": probe(FIND_TMP), "pid1": probe(PID1)})
    assert got == {"leave": "correct", "find": "correct", "pid1": "correct"}
    assert not [n for n in os.listdir("/tmp") if n.startswith("vr-left-")]


def test_jail_is_used_when_root():
    from verirl.sandboxes.process import ProcessSandbox

    if os.geteuid() != 0:
        pytest.skip("the jail and the uid pairs need root")
    assert ProcessSandbox().jailed


BOMB = (
    "import os\ndef add(a, b):\n    while True:\n        try:\n            os.fork()\n"
    "        except OSError:\n            pass\n"
)


def test_a_fork_bomb_is_its_own_timeout_and_the_runner_survives(one_runner):
    """The pids cap full, the runner still kills everything (without needing a fork), keeps
    the CPU it needs (samples are niced in a container), and the next sample passes."""
    jobs = [Job("function", c, ADD_TEST, "add", timeout=2.0) for c in (BOMB, OK, BOMB, OK)]
    runs = one_runner.run(jobs)
    got = [function_verdict(r, j.nonce).status for r, j in zip(runs, jobs, strict=True)]
    assert got == ["timeout", "correct", "timeout", "correct"], got
    assert not any(r.harness_killed for r in runs)
