"""The batch runner that executes inside the sandbox (stdlib only; also run by the process backend).

Started as root (Docker: a container root with only CHOWN, DAC_OVERRIDE, FOWNER, KILL, SETUID,
SETGID; process backend: root on the host inside fresh namespaces) as ``python3 -I -S -c
<this source>``, it reads one JSON batch per line from stdin and runs its jobs one at a time;
it runs no untrusted code itself. Per job:

- the program runs as the sample uid in a process forked from the zygote, an interpreter the
  runner exec'd once that never receives a test, a nonce or another sample
  (`verirl.sandboxes.solution`): the sample's memory holds its program, its stdin or call
  arguments, and nothing else. stdin, stdout and stderr are memfds the runner created: it
  never opens a path the sample could have planted;
- a function job's test runs in the harness (`verirl.sandboxes.harness`), forked from the
  runner and dropped to the judge uid: the solution cannot signal, trace or read it;
- afterwards every process of those uids is killed (the runner is their subreaper, or pid 1 of
  the namespace), SysV IPC objects and POSIX message queues they created are removed, and the
  scratch ``/tmp`` and ``/dev/shm`` are wiped as root (a chmod 0500 directory stops nothing).
  The runner then checks that nothing is left; if it cannot prove that, it says ``dirty`` and
  stops, and the host starts a fresh sandbox for the remaining jobs.

It prints one JSON line per job (``{"i", "start"}`` before, the result after). Verdicts are
decided on the trusted side (the harness, the host), never from the program's exit code.
"""

import json
import os
import select
import shutil
import signal
import sys
import time

PRELOAD = (  # imported once, so each forked harness gets them for free
    "typing math random re string collections itertools functools heapq bisect hashlib "
    "fractions decimal statistics copy datetime operator traceback ctypes fcntl tempfile resource "
    "json socket"
).split()
# What the runner takes from the solution source: the wire format and the child setup.
WIRE_NAMES = ("encode", "decode", "frame", "read_message", "NotPlain", "place_fds", "become")
# World-writable host directories a sample could leave state in where it has no private ones.
SHARED_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/dev/mqueue")
SYSVIPC = {"shm": "shmid", "msg": "msqid", "sem": "semid"}


def _libc():
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _prctl(option, value):
    """Best effort: subreaper (orphans come back to us) and non-dumpable (no /proc or ptrace
    access to our memory and fds for anyone but root)."""
    try:
        _libc().prctl(option, value, 0, 0, 0)
    except Exception:
        pass


def _memfd(name, data=b""):
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    if data:
        os.write(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _readonly(fd):
    """A read-only descriptor of a memfd (the child cannot rewrite its input for later)."""
    return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)


class Zygote:
    """The exec'd interpreter that forks the samples (`verirl.sandboxes.solution.zygote`)."""

    def __init__(self, opts):
        import socket

        self.opts = opts
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        null = os.open("/dev/null", os.O_RDWR)
        argv = [
            sys.executable,
            "-I",
            "-S",
            "-c",
            opts["solution_src"],
            "vr-zygote",
            ",".join(PRELOAD),
        ]
        self.pid = os.fork()
        if self.pid == 0:
            try:
                os.dup2(null, 0)
                os.dup2(null, 1)
                os.dup2(theirs.fileno(), 3)
                os.closerange(4, 65536)
                os.execve(sys.executable, argv, {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
            finally:
                os._exit(70)
        theirs.close()
        os.close(null)
        self.sock = mine
        mine.recv(64)  # ready (or b"" if it died: the first spawn then fails and says so)

    def _ask(self, spec, fds=()):
        import socket

        socket.send_fds(self.sock, [json.dumps(spec).encode()], list(fds))
        reply = self.sock.recv(1 << 16)
        if not reply:
            raise OSError("the zygote is gone")
        return json.loads(reply)

    def spawn(self, spec, fds):
        return self._ask(spec, fds)["pid"]

    def reap(self, pid):
        try:
            return self._ask({"reap": pid})["status"]
        except OSError:  # the zygote died: the sample was reparented to us and reaped
            return None


def _harness(uid, job, fds, ns):
    try:
        os.setsid()
        ns["place_fds"](fds)
        ns["become"](uid, dict(job, nproc=0))
        _prctl(4, 0)  # non-dumpable again: setuid reset it
        os.chdir("/")
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        ns["run_harness"](job, 4, 3, 5)
        os._exit(0)
    finally:
        os._exit(70)


def _zygote(opts, ns):
    z = ns.get("_zygote")
    if z is None or not _alive(z.pid):
        z = ns["_zygote"] = Zygote(opts)
    opts["zygote_pid"] = z.pid
    return z


def _alive(pid):
    try:
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return False


def run_job(i, job, opts, ns):
    cap = int(job.get("output_bytes", 1 << 16))
    work = _mkwork(opts)
    out, err = _memfd("stdout"), _memfd("stderr")
    null = os.open("/dev/null", os.O_RDWR)
    close_after = [out, err, null]
    env = {"PATH": "/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8"}
    spec = {k: job.get(k) for k in ("mode", "memory_mb", "output_bytes", "timeout")}
    spec.update(uid=opts["uid"], nproc=opts["nproc"], nice=opts["nice"], work=work, env=env)
    report_r = harness = None
    zygote = _zygote(opts, ns)  # started (or restarted) outside the job's wall time
    t0 = time.monotonic()
    if job["mode"] == "stdio":
        stdin = _memfd("stdin", job.get("stdin", "").encode("utf-8", "surrogatepass"))
        prog = _memfd("program", job["code"].encode("utf-8", "surrogatepass"))
        ins = [_readonly(stdin), _readonly(prog)]
        close_after += [stdin, prog, *ins]
        sample = zygote.spawn(spec, [ins[0], out, err, ins[1]])
    else:
        prog = _memfd("program", ns["encode"]((job["code"], job["entry_point"])))
        ro = _readonly(prog)
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        report_r, report_w = os.pipe()
        close_after += [prog, ro]
        sample = zygote.spawn(spec, [null, out, err, ro, req_r, resp_w])
        hfds = [null, null, err, resp_r, req_w, report_w]
        harness = _spawn(lambda: _harness(opts["judge_uid"], job, hfds, ns))
        for fd in (req_r, req_w, resp_r, resp_w, report_w):
            os.close(fd)
    deadline = t0 + float(job.get("timeout", 10))
    watched = sample if harness is None else harness
    timed_out, report = _wait(os.pidfd_open(watched), report_r, deadline, opts)
    wall = time.monotonic() - t0
    status = os.waitpid(harness, 0)[1] if harness is not None and not timed_out else None
    try:  # the sample first, by pid (still valid: only the zygote can reap it)
        os.kill(sample, signal.SIGKILL)
    except OSError:
        pass
    sample_status = zygote.reap(sample)
    if harness is None and not timed_out:
        status = sample_status
    # (a reaped harness's pid may already be someone else's: only a live one is named)
    _kill_leftovers(opts, [sample] + ([harness] if harness and status is None else []))
    stdout, out_trunc = _read_memfd(out, cap)
    stderr, err_trunc = _read_memfd(err, cap)
    for fd in close_after:
        os.close(fd)
    dirty = _clean(opts, work)
    result = {
        "i": i,
        "exit": os.WEXITSTATUS(status) if status is not None and os.WIFEXITED(status) else None,
        "signal": os.WTERMSIG(status) if status is not None and os.WIFSIGNALED(status) else None,
        "timed_out": timed_out,
        "wall": round(wall, 4),
        "stdout": stdout,
        "stderr": stderr,
        "truncated": out_trunc or err_trunc,
        "report": report.decode("utf-8", "replace"),
    }
    return result, dirty


def _spawn(fn):
    pid = os.fork()
    if pid == 0:
        fn()
    return pid


def _wait(pidfd, report_r, deadline, opts):
    """Wait until the process of `pidfd` exits (reading the report pipe meanwhile) or the
    deadline. Returns (timed out, report)."""
    report, timed_out = b"", False
    readers = [pidfd] + ([report_r] if report_r is not None else [])
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        ready = select.select(readers, [], [], left)[0]
        if report_r is not None and report_r in ready:
            chunk = os.read(report_r, 1 << 16)
            if not chunk:
                readers.remove(report_r)
            elif len(report) < opts["report_cap"]:
                report += chunk
        if pidfd in ready:
            break
    os.close(pidfd)
    if report_r is not None:
        os.set_blocking(report_r, False)
        try:
            while len(report) < opts["report_cap"]:
                chunk = os.read(report_r, 1 << 16)
                if not chunk:
                    break
                report += chunk
        except OSError:
            pass
        os.close(report_r)
    return timed_out, report


def _reap(pid):
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _read_memfd(fd, cap):
    os.lseek(fd, 0, os.SEEK_SET)
    data = os.read(fd, cap + 1)
    return data[:cap].decode("utf-8", "replace"), len(data) > cap


def _mkwork(opts):
    import tempfile

    work = tempfile.mkdtemp(prefix="vr-", dir=opts["scratch"])  # unpredictable, root's 0700
    if opts["uid"] is not None:
        os.chown(work, opts["uid"], opts["uid"])
    return work


def _uid_pids(uids):
    """Live (non-zombie) processes with any of `uids` as real, effective or saved uid."""
    pids = []
    for p in os.listdir("/proc"):
        if p.isdigit() and int(p) != os.getpid():
            try:
                with open(f"/proc/{p}/status") as f:
                    fields = dict(ln.split(":", 1) for ln in f if ln[:4] in ("Stat", "Uid:"))
            except (OSError, ValueError):
                continue
            if fields.get("State", "Z").split()[0] in ("Z", "X"):
                continue
            if {int(x) for x in fields.get("Uid", "").split()} & uids:
                pids.append(int(p))
    return pids


def _kill_as(uid):
    """SIGKILL every process of `uid` at once: a helper that becomes `uid` and calls
    kill(-1), which the kernel applies to the whole task list (a fork bomb cannot outrun it)."""
    try:
        pid = os.fork()
    except OSError:  # the pids cap is full (a fork bomb): the caller does it another way
        return False
    if pid == 0:
        try:
            os.setresuid(uid, uid, uid)
            os.kill(-1, signal.SIGKILL)
        finally:
            os._exit(0)
    _reap(pid)
    return True


def _kill_leftovers(opts, groups):
    """Kill and reap everything the job left: every process of the sample and judge uids;
    where there are no such uids (a user namespace), the job's process groups, our other
    children (orphans come back to us as subreaper) and, as pid 1 of a namespace, all."""
    uids = {u for u in (opts["uid"], opts["judge_uid"]) if u is not None}
    zygote = opts.get("zygote_pid")
    for t in groups:  # the common case: nothing else is left, and no helper is needed
        try:
            os.kill(t, signal.SIGKILL)
        except OSError:
            pass
    for _ in range(200):
        for uid in uids if _uid_pids(uids) else ():
            if _kill_as(uid):
                continue
            if opts["kill_all"] and zygote:  # we own the pid namespace: all but us, at once
                os.kill(-1, signal.SIGKILL)
                _reap(zygote)  # respawned for the next job
                opts["zygote_pid"] = zygote = None
            for p in _uid_pids(uids):  # else one by one, until fork works again
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
        if not uids:
            targets = [-g for g in groups] + [int(p) for p in _children() if int(p) != zygote]
            doomed = zygote if opts["kill_all"] else None
            if doomed:
                targets.append(-1)  # the zygote too (same uid): respawned for the next job
                opts["zygote_pid"] = zygote = None
            for t in targets:
                try:
                    os.kill(t, signal.SIGKILL)
                except OSError:
                    pass
            if doomed:
                _reap(doomed)
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
        left = _uid_pids(uids) if uids else [p for p in _children() if int(p) != zygote]
        if not left:
            return
        time.sleep(0.001)


def _children():
    try:
        with open(f"/proc/self/task/{os.getpid()}/children") as f:
            return f.read().split()
    except OSError:
        return []


def _sysv_objects(uids):
    """[(kind, id, creator uid)] of SysV IPC objects created or owned by `uids`."""
    found = []
    for kind, idcol in SYSVIPC.items():
        try:
            with open(f"/proc/sysvipc/{kind}") as f:
                head, *rows = f.read().splitlines()
        except OSError:
            continue
        cols = head.split()
        for row in rows:
            rec = dict(zip(cols, row.split(), strict=False))
            owners = {int(rec.get("uid", -1)), int(rec.get("cuid", -1))}
            if not uids or owners & uids:
                found.append((kind, int(rec[idcol]), int(rec["cuid"])))
    return found


def _remove_sysv(objs):
    """IPC_RMID needs the creator's or owner's euid (or CAP_SYS_ADMIN, which we lack)."""
    import ctypes

    libc, me = _libc(), os.geteuid()
    for kind, ident, cuid in objs:
        try:
            if cuid != me:
                os.seteuid(cuid)
            if kind == "shm":
                libc.shmctl(ident, 0, None)
            elif kind == "msg":
                libc.msgctl(ident, 0, None)
            else:
                libc.semctl(ident, 0, 0, ctypes.c_void_p(0))
        except OSError:
            pass  # what is left is found by the check that follows, and reported
        finally:
            if os.geteuid() != me:
                os.seteuid(me)


def _ipc_of_job(opts, uids):
    """SysV objects the job may have left: all of them where the IPC namespace is the
    sandbox's own (a container, the jail), else only those of its own uids; with neither (a
    user namespace on the host's IPC) none can be told apart from the host's (documented)."""
    if opts["wipe"]:
        return _sysv_objects(set())
    return _sysv_objects(uids) if uids else []


def _clean(opts, work):
    """Remove what the job left (IPC objects, queues, files) as root, then prove it: the
    reason it is not clean, or None."""
    uids = {u for u in (opts["uid"], opts["judge_uid"]) if u is not None}
    _remove_sysv(_ipc_of_job(opts, uids))
    queues = "/dev/mqueue" if os.path.ismount("/dev/mqueue") and opts["wipe"] else None
    wiped = [opts["scratch"], "/dev/shm"] if opts["wipe"] else []
    for d in ([queues] if queues else []) + wiped:
        for name in os.listdir(d) if os.path.isdir(d) else []:
            _remove(os.path.join(d, name))
    _remove(work)
    shared = [] if opts["wipe"] or not uids else SHARED_DIRS  # the host's: only ours go
    for p in _owned_entries(shared, uids):
        _remove(p)
    if _ipc_of_job(opts, uids):
        return "SysV IPC objects survived removal"
    for d in [queues, *wiped]:
        if d and os.path.isdir(d) and os.listdir(d):
            return f"{d} is not empty after the wipe"
    if _owned_entries(shared, uids):
        return "a file of the sample survived in a shared directory"
    if os.path.lexists(work):
        return "the work dir survived removal"
    if uids and _uid_pids(uids):
        return "a process of the sample survived"
    return None


def _owned_entries(dirs, uids):
    found = []
    for d in dirs:
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for name in names:
            try:
                if os.lstat(os.path.join(d, name)).st_uid in uids:
                    found.append(os.path.join(d, name))
            except OSError:
                pass
    return found


def _remove(path):
    """Delete without following symlinks (shutil's fd-based rmtree is symlink-race safe)."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except OSError:
        pass


def load_sources(batch, ns):
    """Exec the solution source (wire format) and the harness into `ns`, once."""
    if ns.get("_src") != (batch["solution_src"], batch["harness_src"]):
        wire = {"__name__": "vr_wire"}
        exec(compile(batch["solution_src"], "<vr-solution>", "exec"), wire)
        ns.clear()
        ns.update({k: wire[k] for k in WIRE_NAMES})
        ns["__name__"] = "vr_harness"
        exec(compile(batch["harness_src"], "<vr-harness>", "exec"), ns)
        ns["_src"] = (batch["solution_src"], batch["harness_src"])


def main():
    """One batch per stdin line. ``serve`` (the Docker pool's persistent runner): keep reading
    batches until stdin closes, and first clean up after a predecessor."""
    serve = "serve" in sys.argv[1:]
    for name in PRELOAD:
        try:
            __import__(name)
        except Exception:
            pass
    import gc

    gc.freeze()  # children would otherwise copy every page the collector touches
    _prctl(36, 1)  # PR_SET_CHILD_SUBREAPER
    _prctl(4, 0)  # PR_SET_DUMPABLE = 0
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    ns = {}
    jailed = False
    while True:
        line = inp.readline()
        if not line.strip():
            break
        batch = json.loads(line)
        opts = {
            "scratch": batch.get("scratch", "/tmp"),
            "kill_all": bool(batch.get("kill_all")),
            "wipe": bool(batch.get("wipe")),
            "uid": batch.get("uid"),
            "judge_uid": batch.get("judge_uid"),
            "nproc": int(batch.get("nproc") or 0),
            "nice": int(batch.get("nice") or 0),
            "report_cap": int(batch.get("report_cap", 1 << 20)),
            "solution_src": batch["solution_src"],
        }
        if batch.get("jail") and not jailed:
            jail = {"__name__": "vr_jail"}
            exec(compile(batch["jail_src"], "<vr-jail>", "exec"), jail)
            from_jail = jail["enter_jail"](batch["jail"])
            if from_jail:
                out.write(json.dumps({"dirty": f"cannot build the jail: {from_jail}"}).encode())
                out.write(b"\n")
                out.flush()
                return
            jailed = True
        if jailed:
            opts["scratch"] = "/tmp"
        load_sources(batch, ns)
        if serve or opts["wipe"]:
            _kill_leftovers(opts, [])
        for i, job in enumerate(batch["jobs"]):
            out.write(json.dumps({"i": i, "start": True}).encode() + b"\n")
            out.flush()
            result, dirty = run_job(i, job, opts, ns)
            out.write(json.dumps(result).encode() + b"\n")
            if dirty:
                out.write(json.dumps({"dirty": dirty}).encode() + b"\n")
                out.flush()
                return
            out.flush()
        out.write(b'{"done": true}\n')
        out.flush()
        if not serve:
            break


if __name__ == "__main__":
    main()
