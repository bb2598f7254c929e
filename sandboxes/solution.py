"""The sample's side of the sandbox: the zygote, the solution process, and the wire format.

The runner execs ``python3 -I -S -c <this source> vr-zygote`` once (as root, non-dumpable):
a fresh interpreter that preloads the common stdlib modules and then only ever receives spawn
requests (descriptors and limits, never a test, a nonce or a program) on its socket. For each
sample it forks a child that becomes the sample uid and reads its own program from fd 3: the
solution's memory holds its program, its stdin or call arguments, and nothing else. (A plain
``exec`` per sample would give the same isolation at ~15 ms more per sample; see
benchmarks/code_vs_humaneval.py.) Function jobs: `serve` answers calls of the entry point,
arguments on fd 4, plain-data replies on fd 5. Stdio jobs: `run_stdio` runs the program as
``__main__`` on fds 0-2. The harness (forked from the runner, another uid) reads replies with
the same `decode`: the runner execs this source into a namespace, so the format has one
definition.

Wire format: a flat, length-prefixed token stream, decoded iteratively (no nesting limit, no
``eval``): ``N`` None, ``T``/``F`` bools, ``i<hex>;`` int, ``f<float.hex>;`` float,
``c<hex>,<hex>;`` complex, ``s<n>:<utf-8>`` str, ``y<n>:<bytes>`` bytes, and ``l t S z d``
(list, tuple, set, frozenset, dict) followed by ``<count>;`` and the items. Only exact builtin
types are plain: an ``int`` subclass or an object with a lying ``__eq__`` is `NotPlain`.

>>> decode(encode([1, (2.5, "a"), {None: b"x"}]))
[1, (2.5, 'a'), {None: b'x'}]
>>> decode(encode(2**20000)) == 2**20000, encode(True)
(True, b'T')
"""

MAX_ITEMS = 20_000_000  # tokens per value: a cyclic list cannot be sent forever


class NotPlain(BaseException):
    """A value not built from exact builtin types. BaseException: a test's ``except
    Exception`` must not swallow it."""


_TAGS = {list: b"l", tuple: b"t", set: b"S", frozenset: b"z", dict: b"d"}
_BUILD = {108: list, 116: tuple, 83: set, 122: frozenset}


def encode(value, _type=type, _len=len, _str=str, _fhex=float.hex, _fmt=format, _tags=_TAGS):
    """Plain data -> bytes, or NotPlain. Iterative: depth is not limited by recursion."""
    out, stack, n = [], [value], 0
    append, pop, extend = out.append, stack.pop, stack.extend
    while stack:
        v = pop()
        n += 1
        if n > MAX_ITEMS:
            raise NotPlain("value too large")
        t = _type(v)
        if v is None:
            append(b"N")
        elif t is bool:
            append(b"T" if v else b"F")
        elif t is int:
            append(b"i" + _fmt(v, "x").encode() + b";")
        elif t is float:
            append(b"f" + _fhex(v).encode() + b";")
        elif t is str:
            raw = v.encode("utf-8", "surrogatepass")
            append(b"s" + _str(_len(raw)).encode() + b":" + raw)
        elif t is bytes:
            append(b"y" + _str(_len(v)).encode() + b":" + v)
        elif t is complex:
            append(b"c" + _fhex(v.real).encode() + b"," + _fhex(v.imag).encode() + b";")
        elif t in _tags:
            append(_tags[t] + _str(_len(v)).encode() + b";")
            items = [x for kv in v.items() for x in kv] if t is dict else list(v)
            items.reverse()
            extend(items)
        else:
            raise NotPlain(f"value of type {t.__module__}.{t.__qualname__}")
    return b"".join(out)


def decode(data):
    """bytes -> the value (ValueError when malformed). Run on the trusted side: it builds
    only exact builtin types and never evaluates anything."""
    pos, end, stack = 0, len(data), []
    while True:
        tag = data[pos]
        pos += 1
        if tag == 78:  # N
            value = None
        elif tag == 84 or tag == 70:  # T F
            value = tag == 84
        elif tag in (105, 102, 99):  # i f c
            semi = data.index(b";", pos)
            text = data[pos:semi].decode("ascii")
            pos = semi + 1
            if tag == 105:
                value = int(text, 16)
            elif tag == 102:
                value = float.fromhex(text)
            else:
                re_, im = text.split(",")
                value = complex(float.fromhex(re_), float.fromhex(im))
        elif tag == 115 or tag == 121:  # s y
            colon = data.index(b":", pos)
            size = int(data[pos:colon])
            if size < 0 or colon + 1 + size > end:
                raise ValueError("truncated string")
            raw = data[colon + 1 : colon + 1 + size]
            pos = colon + 1 + size
            value = raw.decode("utf-8", "surrogatepass") if tag == 115 else bytes(raw)
        elif tag in (108, 116, 83, 122, 100):  # l t S z d
            semi = data.index(b";", pos)
            count = int(data[pos:semi]) * (2 if tag == 100 else 1)
            pos = semi + 1
            if count < 0 or count > end - pos:
                raise ValueError("bad item count")
            if count:
                stack.append([tag, count, []])
                continue
            value = {} if tag == 100 else _BUILD[tag]()
        else:
            raise ValueError(f"bad tag {tag!r}")
        while True:  # attach the value to the open containers
            if not stack:
                if pos != end:
                    raise ValueError("trailing data")
                return value
            frame = stack[-1]
            frame[2].append(value)
            frame[1] -= 1
            if frame[1]:
                break
            stack.pop()
            items = frame[2]
            if frame[0] == 100:
                value = dict(zip(items[::2], items[1::2], strict=True))
            else:
                value = _BUILD[frame[0]](items)


def read_message(reader):
    """One ``<length>\\n<payload>`` frame from a buffered binary reader; b"" at EOF."""
    head = reader.readline(32)
    if not head.endswith(b"\n"):
        return b""
    size = int(head)
    data = reader.read(size)
    return data if len(data) == size else b""


def frame(payload):
    return str(len(payload)).encode() + b"\n" + payload


def serve():
    """Run the program, then answer calls of its entry point until the harness hangs up.

    Every helper is bound before the program runs: patching builtins, ``type`` or this
    module afterwards changes nothing here. Whatever the program does (walk frames, scan gc,
    patch anything, start threads), it controls only the plain values it sends back."""
    import posix

    _exit, _type, _str, _encode, _decode, _frame = posix._exit, type, str, encode, decode, frame
    _base = BaseException
    source = open(3, "rb").read()
    requests, replies = open(4, "rb"), open(5, "wb")
    _read, _write, _flush = read_message, replies.write, replies.flush

    def reply(obj):
        try:
            data = _encode(obj)
        except NotPlain as e:
            data = _encode(("notplain", _text(e)))
        except MemoryError:
            data = _encode(("raised", "MemoryError", ""))
        _write(_frame(data))
        _flush()

    def _text(e):
        try:
            s = _str(e)
            return s[:500] if _type(s) is _str else "?"
        except _base:
            return "?"

    def raised(e):
        name = _type(e).__name__
        return ("raised", name if _type(name) is _str else "?", _text(e))

    code_text, entry = _decode(source)
    del source
    try:
        code = compile(code_text, "<solution>", "exec")
    except (SyntaxError, ValueError) as e:
        reply(("compile_error", f"{_type(e).__name__}: {e}"))
        _exit(0)
    ns = {"__name__": "solution"}
    try:
        exec(code, ns)
        fn = ns.get(entry)
    except _base as e:  # SystemExit included
        reply(raised(e))
        _exit(0)
    if not callable(fn):
        reply(("missing_entry", f"the solution defines no {entry!r}"))
        _exit(0)
    reply(("ready",))
    while True:
        msg = _read(requests)
        if not msg:
            _exit(0)
        try:
            args, kwargs = _decode(msg)
            out = ("ok", fn(*args, **kwargs))
            data = _encode(out)
        except NotPlain as e:
            data = _encode(("notplain", _text(e)))
        except MemoryError:
            data = _encode(("raised", "MemoryError", ""))
        except _base as e:
            data = _encode(raised(e))
        _write(_frame(data))
        _flush()


def run_stdio():
    """A stdio sample: the program (fd 3) as ``__main__`` on fds 0/1/2; its exit code."""
    import posix
    import sys

    with open(3, "rb") as f:
        source = f.read()
    sys.stdin = open(0, encoding="utf-8", errors="replace", closefd=False)
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False)
    sys.stderr = open(2, "w", encoding="utf-8", closefd=False)
    code = 0
    try:
        exec(compile(source, "<solution>", "exec"), {"__name__": "__main__"})
    except SystemExit as e:
        code = e.code if type(e.code) is int else (0 if e.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        posix._exit(code)


def drop_capabilities():
    """Drop every capability for good (bounding, ambient, effective, permitted, inheritable;
    securebits so that uid 0 regains none on execve; no_new_privs). True if none is left."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(28, 0x03, 0, 0, 0)  # PR_SET_SECUREBITS: NOROOT | NOROOT_LOCKED
        for cap in range(64):
            libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP
        libc.prctl(47, 4, 0, 0, 0)  # PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, self
        libc.capset(header, (ctypes.c_uint32 * 6)())
        libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
        with open("/proc/self/status") as f:
            caps = {ln.split(":")[0]: ln.split()[1] for ln in f if ln.startswith("Cap")}
        return all(int(caps[k], 16) == 0 for k in ("CapEff", "CapPrm", "CapBnd"))
    except Exception:
        return False


def place_fds(fds):
    """In a child: descriptor ``fds[k]`` becomes fd k; every other one is closed."""
    import fcntl
    import os

    moved = [fcntl.fcntl(src, fcntl.F_DUPFD, 256) for src in fds]  # out of the targets' way
    for dst, tmp in enumerate(moved):
        os.dup2(tmp, dst, inheritable=True)
    os.closerange(len(fds), 65536)


def become(uid, spec):
    """In a child: limits, then `uid` (root's capabilities go with it), or, where there is no
    other uid to become (a user namespace), drop every capability instead."""
    import os
    import resource

    limits = [
        (resource.RLIMIT_AS, int(spec.get("memory_mb", 512)) << 20),
        (resource.RLIMIT_FSIZE, int(spec.get("output_bytes", 1 << 16))),
        (resource.RLIMIT_CPU, int(spec.get("timeout", 10)) + 2),
        (resource.RLIMIT_CORE, 0),
    ]
    if spec.get("nproc"):  # per uid; the Docker backend relies on the pids cgroup instead
        limits.append((resource.RLIMIT_NPROC, int(spec["nproc"])))
    for lim, val in limits:
        resource.setrlimit(lim, (val, val))
    if spec.get("nice"):  # within a container's CPU quota, the runner's cleanup comes first
        os.setpriority(os.PRIO_PROCESS, 0, int(spec["nice"]))
    try:  # the OOM killer takes samples first, never the runner
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass
    if uid is None:
        if os.geteuid() == 0 and not drop_capabilities():
            os._exit(71)
        return
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    import ctypes  # (preloaded by the zygote and the runner)

    ctypes.CDLL(None).prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS: no setuid binary lifts it


def zygote():
    """Serve spawn requests on fd 3 (a unix seqpacket socket to the runner): each is a JSON
    spec plus descriptors; fork, reply the pid; on ``reap``, reply the exit status."""
    import json
    import os
    import random
    import socket
    import sys

    for name in sys.argv[2].split(","):
        try:
            __import__(name)
        except Exception:
            pass
    import ctypes
    import gc

    gc.freeze()  # samples would otherwise copy every page the collector touches
    ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 0: not even memory maps
    sock = socket.socket(fileno=3)
    sock.send(b'{"ready": true}')  # preloading is over: the runner starts the clock after
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(sock, 1 << 16, 16)
        except OSError:
            os._exit(0)
        if not msg:
            os._exit(0)
        spec = json.loads(msg)
        if "reap" in spec:
            try:
                status = os.waitpid(spec["reap"], 0)[1]
            except ChildProcessError:
                status = None
            sock.send(json.dumps({"status": status}).encode())
            continue
        pid = os.fork()
        if pid == 0:
            try:
                sock.close()
                os.setsid()
                place_fds(fds)
                become(spec.get("uid"), spec)
                os.chdir(spec["work"])
                os.environ.clear()
                os.environ.update(spec["env"])
                random.seed()  # not the zygote's state, shared by every sample
                run_stdio() if spec["mode"] == "stdio" else serve()
            finally:
                os._exit(70)
        for fd in fds:
            os.close(fd)
        sock.send(json.dumps({"pid": pid}).encode())


if __name__ == "__main__" and __import__("sys").argv[1:2] == ["vr-zygote"]:
    zygote()
