"""The batch runner that executes inside the sandbox (stdlib only; also run by the process backend).

Started as ``python3 -I -S -c <this file's source>``, it reads one JSON batch from stdin and,
for each job in turn, forks a fresh child that runs the untrusted program in its own session,
its own private temp dir, with rlimits; the runner itself runs no untrusted code. Between jobs
it kills every leftover process (the child's group, orphans reparented to it as a subreaper,
and with ``kill_all`` every process it may signal) and wipes the scratch space, so nothing leaks
from one sample to the next. It prints one JSON line per job: ``{"i", "start"}`` before, the
result after. Verdicts are NOT decided here: the host compares marshalled values (see
``verirl.sandboxes.sandbox`` for the threat model).

Function jobs run a HumanEval-style ``check(candidate)`` test whose ``assert`` statements are
rewritten so that each comparison's operands are marshalled to plain data (exact builtin types
only, see `encode`) and reported, with a per-job nonce, through a private pipe; the candidate's
return values are likewise reduced to plain copies. Stdio jobs run a program on a given stdin
and return its stdout.
"""

from __future__ import annotations

import ast
import builtins
import json
import os
import resource
import select
import signal
import sys
import time

_OPS = {
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.In: "in",
    ast.NotIn: "not in",
    ast.Is: "is",
    ast.IsNot: "is not",
}
MAX_DEPTH = 200
MAX_ITEMS = 1_000_000


class NotPlain(Exception):
    """A value that is not built from exact builtin types (a subclass, a custom __eq__...)."""


def encode(v, depth=0, _type=type, _hex=hex, _fhex=float.hex, _len=len):
    """Plain data -> nested tuples of str/bool, or NotPlain. Exact types only: an ``int``
    subclass or an object with a lying ``__eq__`` cannot pass as a value.

    >>> encode([1, (2.5, "a")], 0)
    ('l', [('i', '0x1'), ('t', [('f', '0x1.4000000000000p+1'), ('s', 'a')])])
    """
    if depth > MAX_DEPTH:
        raise NotPlain("nesting too deep")
    t = _type(v)
    if v is None:
        return ("n",)
    if t is bool:
        return ("b", v)
    if t is int:
        return ("i", _hex(v))
    if t is float:
        return ("f", _fhex(v))
    if t is str:
        return ("s", v)
    if t is complex:
        return ("c", _fhex(v.real), _fhex(v.imag))
    if t is bytes:
        return ("y", v.hex())
    if t is list or t is tuple or t is set or t is frozenset:
        if _len(v) > MAX_ITEMS:
            raise NotPlain("container too large")
        tag = {list: "l", tuple: "t", set: "S", frozenset: "F"}[t]
        return (tag, [encode(x, depth + 1) for x in v])
    if t is dict:
        return ("d", [(encode(k, depth + 1), encode(x, depth + 1)) for k, x in v.items()])
    raise NotPlain(f"value of type {t.__module__}.{t.__qualname__}")


def decode(e):
    """The inverse of `encode` (run on the trusted side, and for in-sandbox plain copies)."""
    tag = e[0]
    if tag == "n":
        return None
    if tag == "b":
        return bool(e[1])
    if tag == "i":
        return int(e[1], 16)
    if tag == "f":
        return float.fromhex(e[1])
    if tag == "s":
        return str(e[1])
    if tag == "c":
        return complex(float.fromhex(e[1]), float.fromhex(e[2]))
    if tag == "y":
        return bytes.fromhex(e[1])
    if tag == "d":
        return {decode(k): decode(v) for k, v in e[1]}
    items = [decode(x) for x in e[1]]
    return {"l": list, "t": tuple, "S": set, "F": frozenset}[tag](items)


class _AssertRewriter(ast.NodeTransformer):
    """``assert L op R`` -> ``__vr_cmp(i, op, L, R)``; any other ``assert E`` ->
    ``__vr_truth(i, E)``. Operands are still evaluated in the sandbox; the comparison is not."""

    def __init__(self):
        self.count = 0

    def visit_Assert(self, node):
        i = self.count
        self.count += 1
        t = node.test
        if isinstance(t, ast.Compare) and len(t.ops) == 1 and type(t.ops[0]) in _OPS:
            args = [ast.Constant(i), ast.Constant(_OPS[type(t.ops[0])]), t.left, t.comparators[0]]
            call = ast.Call(ast.Name("__vr_cmp", ast.Load()), args, [])
        else:
            call = ast.Call(ast.Name("__vr_truth", ast.Load()), [ast.Constant(i), t], [])
        return ast.copy_location(ast.Expr(call), node)


def rewrite_test(test):
    tree = _AssertRewriter().visit(ast.parse(test, "<test>"))
    return compile(ast.fix_missing_locations(tree), "<test>", "exec")


def _test_imports(tree_src):
    names = []
    for node in ast.walk(ast.parse(tree_src)):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
    return names


def _run_function(job, report_fd):
    """Child side of a function job. Captures everything it needs BEFORE the solution runs,
    so patched builtins/modules cannot alter the report; exits without running atexit hooks."""
    _write, _exit, _repr, _encode = os.write, os._exit, repr, encode
    nonce, records = job["nonce"], []

    def report(obj):
        data = (nonce + ":" + _repr(obj) + "\n").encode("utf-8", "surrogatepass")
        while data:
            data = data[_write(report_fd, data) :]

    def vr_cmp(i, op, left, right):
        try:
            records.append((i, op, _encode(left), _encode(right)))
        except NotPlain as e:
            records.append((i, "notplain", str(e)))

    def vr_truth(i, value):
        try:
            records.append((i, "truth", _encode(value)))
        except NotPlain as e:
            records.append((i, "notplain", str(e)))

    try:
        test_code = rewrite_test(job["test"])
        imports = _test_imports(job["test"])
    except SyntaxError as e:
        report(("test_error", f"test does not compile: {e}"))
        _exit(0)
    guarded = []
    for name in imports:
        try:
            __import__(name)
            guarded.append(sys.modules[name])
        except Exception:
            pass  # the test itself will fail on it; that is reported as a test error
    # Snapshot every module namespace: patches made by the solution (to builtins, math, this
    # runner...) are undone before the test runs, and those of the test's own imports again
    # after every call of the candidate. The test sees a private copy of the builtins.
    snapshot = [(m, dict(m.__dict__)) for m in list(sys.modules.values()) if m is not None]
    guarded_snap = [(m, d) for m, d in snapshot if m in guarded]
    modules_before = dict(sys.modules)
    clean_builtins = dict(builtins.__dict__)
    # The test sees the helpers of the trusted prelude (the prompt: e.g. HumanEval/32's poly),
    # executed before any solution code, so a completion cannot redefine them under the test.
    prelude_ns = None
    if job.get("prelude"):
        prelude_ns = {"__name__": "prelude", "__builtins__": clean_builtins}
        try:
            exec(compile(job["prelude"], "<prelude>", "exec"), prelude_ns)
        except BaseException:
            prelude_ns = None
    _restore_one, _decode, _NotPlain = _restore, decode, NotPlain
    try:
        sol_code = compile(job["code"], "<solution>", "exec")
    except (SyntaxError, ValueError) as e:
        report(("compile_error", f"{type(e).__name__}: {e}"))
        _exit(0)
    sol_ns = {"__name__": "solution", "__builtins__": builtins}
    phase = "solution"
    try:
        exec(sol_code, sol_ns)
        sys.settrace(None)
        sys.setprofile(None)
        sys.modules.clear()
        sys.modules.update(modules_before)
        for m, d in snapshot:
            _restore_one(m, d)
        entry = job["entry_point"]
        if entry not in sol_ns:
            report(("missing_entry", f"the solution defines no {entry!r}"))
            _exit(0)
        candidate = sol_ns[entry]

        def plain_candidate(*args, **kwargs):
            # Return a plain copy: what the test compares cannot lie about its value.
            try:
                return _decode(_encode(candidate(*args, **kwargs)))
            finally:
                for m, d in guarded_snap:
                    _restore_one(m, d)

        if prelude_ns is not None:
            test_ns = dict(prelude_ns)
        else:  # no usable prelude: the solution's names, minus any that shadow a builtin
            test_ns = {k: v for k, v in sol_ns.items() if k not in clean_builtins}
        test_ns.update(__builtins__=clean_builtins, __vr_cmp=vr_cmp, __vr_truth=vr_truth)
        test_ns[entry] = plain_candidate  # tests may call it by name (HumanEval/33)
        phase = "test"
        exec(test_code, test_ns)
        test_ns["check"](plain_candidate)
    except _NotPlain as e:
        report(("notplain", f"candidate returned a non-plain {e}"))
        _exit(0)
    except MemoryError:
        report(("memory", f"MemoryError in {phase}"))
        _exit(0)
    except BaseException as e:  # SystemExit included: exiting early is not passing
        report(("raised", f"{phase}: {type(e).__name__}: {str(e)[:500]}"))
        _exit(0)
    report(("done", records))
    _exit(0)


def _restore(m, d, _len=len):
    # Identity, not ==: a planted object with a lying __eq__ must not look unchanged.
    md = m.__dict__
    if _len(md) != _len(d) or any(md.get(k, _restore) is not v for k, v in d.items()):
        md.clear()
        md.update(d)


def _run_stdio(job):
    """Child side of a stdio job: the program runs as __main__ on fds 0/1/2."""
    sys.stdin = open(0, encoding="utf-8", errors="replace", closefd=False)
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False)
    sys.stderr = open(2, "w", encoding="utf-8", closefd=False)
    code = 0
    try:
        exec(compile(job["code"], "<solution>", "exec"), {"__name__": "__main__"})
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _prctl(option, value):
    """Best effort: subreaper (orphans come back to us) and non-dumpable (children cannot
    read our memory or fds through /proc or ptrace)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)
    except Exception:
        pass


def _descendants():
    pids, me = [], os.getpid()
    try:
        for tid in os.listdir(f"/proc/{me}/task"):
            with open(f"/proc/{me}/task/{tid}/children") as f:
                pids += [int(p) for p in f.read().split()]
    except OSError:
        pass
    return pids


def _kill_leftovers(pgid, kill_all):
    for _ in range(50):
        for target in ([-pgid] if pgid else []) + _descendants():
            try:
                os.kill(target, signal.SIGKILL)
            except OSError:
                pass
        if kill_all:
            try:
                os.kill(-1, signal.SIGKILL)  # every process we may signal, except us and init
            except OSError:
                pass
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                break
        if not _descendants():
            return
        time.sleep(0.002)


def _rmtree(path):
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files + dirs:
            p = os.path.join(root, name)
            try:
                os.rmdir(p) if name in dirs and not os.path.islink(p) else os.unlink(p)
            except OSError:
                pass
    try:
        os.rmdir(path)
    except OSError:
        pass


def _read_capped(path, cap):
    try:
        with open(path, "rb") as f:
            data = f.read(cap + 1)
    except OSError:
        return "", False
    return data[:cap].decode("utf-8", "replace"), len(data) > cap


def run_job(i, job, opts):
    scratch = opts["scratch"]
    work = os.path.join(scratch, f"vr-{os.getpid()}-{i}")
    os.mkdir(work, 0o700)
    uid = opts.get("drop_to_uid")
    if uid is not None:
        os.chown(work, uid, uid)
    with open(os.path.join(work, ".stdin"), "w") as f:
        f.write(job.get("stdin") or "")
    out_cap = int(job.get("output_bytes", 1 << 16))
    report_r, report_w = os.pipe()
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:  # child: never returns
        try:
            os.close(report_r)
            os.setsid()
            os.chdir(work)
            fin = os.open(os.path.join(work, ".stdin"), os.O_RDONLY)
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
            fout = os.open(os.path.join(work, ".stdout"), flags, 0o600)
            ferr = os.open(os.path.join(work, ".stderr"), flags, 0o600)
            if uid is not None:
                os.fchown(fout, uid, uid)
                os.fchown(ferr, uid, uid)
            for src, dst in ((fin, 0), (fout, 1), (ferr, 2)):
                os.dup2(src, dst)
            private = 900 + (os.getpid() % 90)
            os.dup2(report_w, private)
            os.closerange(3, private)
            os.closerange(private + 1, 4096)
            mem = int(job.get("memory_mb", 512)) << 20
            cpu = int(job.get("timeout", 10)) + 2
            for lim, val in (
                (resource.RLIMIT_AS, mem),
                (resource.RLIMIT_FSIZE, out_cap),
                (resource.RLIMIT_CPU, cpu),
                (resource.RLIMIT_CORE, 0),
                (resource.RLIMIT_NPROC, int(job.get("nproc", 64))),
            ):
                resource.setrlimit(lim, (val, val))
            if uid is not None:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
            os.environ.clear()
            os.environ.update(PATH="/usr/bin:/bin", HOME=work, TMPDIR=work, LANG="C.UTF-8")
            signal.signal(signal.SIGPIPE, signal.SIG_DFL)
            if job["mode"] == "stdio":
                _run_stdio(job)
            _run_function(job, private)
        finally:
            os._exit(70)
    os.close(report_w)
    timeout = float(job.get("timeout", 10))
    report, timed_out, status = b"", False, None
    pidfd = os.pidfd_open(pid)
    report_open = True
    while status is None:
        left = t0 + timeout - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        rl = select.select([pidfd] + ([report_r] if report_open else []), [], [], left)[0]
        if report_r in rl:
            chunk = os.read(report_r, 1 << 16)
            if not chunk:
                report_open = False
            elif len(report) < opts["report_cap"]:
                report += chunk
        if pidfd in rl:
            status = os.waitpid(pid, 0)[1]
    wall = time.monotonic() - t0
    _kill_leftovers(pid, opts["kill_all"])
    if status is None:
        status = os.waitpid(pid, 0)[1] if _alive(pid) else None
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
    os.close(pidfd)
    stdout, out_trunc = _read_capped(os.path.join(work, ".stdout"), out_cap)
    stderr, err_trunc = _read_capped(os.path.join(work, ".stderr"), out_cap)
    _rmtree(work)
    if opts["wipe"]:  # we own the whole sandbox (a container): wipe what the job left there
        _wipe(scratch)
    return {
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


def _alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def _unlink(p):
    try:
        os.unlink(p)
    except OSError:
        pass


# Imported once by the runner, so each forked child gets them for free (HumanEval prompts import
# typing; tests import math/random/hashlib). A child's changes to them die with the child.
PRELOAD = (
    "typing math random re string collections itertools functools heapq bisect hashlib "
    "fractions decimal statistics copy datetime operator traceback"
).split()


def _wipe(scratch):
    for d in (scratch, "/dev/shm"):
        for name in os.listdir(d) if os.path.isdir(d) else []:
            p = os.path.join(d, name)
            _rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else _unlink(p)


def main():
    """One batch per stdin line. ``serve`` (the Docker pool's persistent runner): keep reading
    batches until stdin closes, and first clean up after a predecessor a job may have killed."""
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
    if serve:
        _kill_leftovers(0, True)
        _wipe("/tmp")
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    while True:
        line = inp.readline()
        if not line.strip():
            break
        batch = json.loads(line)
        opts = {
            "scratch": batch.get("scratch", "/tmp"),
            "kill_all": bool(batch.get("kill_all")),
            "wipe": bool(batch.get("wipe")),
            "drop_to_uid": batch.get("drop_to_uid"),
            "report_cap": int(batch.get("report_cap", 4 << 20)),
        }
        for i, job in enumerate(batch["jobs"]):
            out.write(json.dumps({"i": i, "start": True}).encode() + b"\n")
            out.flush()
            out.write(json.dumps(run_job(i, job, opts)).encode() + b"\n")
            out.flush()
        out.write(b'{"done": true}\n')
        out.flush()
        if not serve:
            break


if __name__ == "__main__":
    main()
