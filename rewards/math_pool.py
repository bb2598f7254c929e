"""Worker processes that run the symbolic math check under a hard, external deadline.

Why processes and not SIGALRM: an alarm only works in the main thread (Math-Verify #50, #55) and
cannot interrupt a C-level big-integer power such as ``9^{9^{9^9}}``. Here a worker that misses
its deadline is SIGKILLed and replaced, so one pathological answer costs at most ``timeout_s``,
and `CheckerPool.check` may be called from any thread.

Workers are forked from a *zygote*: a small ``python -m verirl.rewards.math_pool`` process that
imports sympy and latex2sympy2_extended once and forks a worker on request, handing the
worker's socket back over SCM_RIGHTS. A replacement therefore starts in milliseconds, the caller
never forks itself (safe with torch threads), nothing re-imports the caller's ``__main__`` (as
multiprocessing's spawn/forkserver do), and neither torch nor vLLM is ever imported. Closing the
pool (or the caller dying) closes the sockets, and every worker and the zygote exit on EOF.

Faults: a worker that dies mid-check (killed from outside, e.g. by the OOM killer) is replaced
and the check retried once in the fresh worker; a second death on the same answer is the
answer's fault (``incorrect``). A dead zygote is restarted on the next fork; when no worker can be
started at all the verdict is ``infra_error``, never a wrong answer.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass
from multiprocessing.connection import Connection

from verirl.rewards.result import Status


@dataclass(frozen=True)
class Verdict:
    status: Status  # correct | incorrect | timeout | memory | infra_error (no worker)
    detail: str

    @property
    def correct(self) -> bool:
        return self.status == "correct"


# ---- child side -----------------------------------------------------------------------------
def _worker_loop(conn: Connection, memory_mb: int) -> None:
    """Receive (pred, gold), send (status, detail), until the parent closes the socket."""
    from verirl.rewards.math_equiv import symbolic_equiv

    try:
        import resource

        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):  # no rlimit here: the deadline still holds
        pass
    while True:
        try:
            pred, gold = conn.recv()
        except (EOFError, OSError):
            return
        try:
            ok, how = symbolic_equiv(pred, gold)
            out = ("correct" if ok else "incorrect", how)
        except MemoryError:
            out = ("memory", f"over {memory_mb} MiB")
        except RecursionError:
            out = ("incorrect", "too deeply nested to parse")
        except Exception as e:  # an unparseable answer is a wrong answer, not a crash
            out = ("incorrect", f"unparseable: {type(e).__name__}")
        conn.send(out)


def _zygote(ctrl_fd: int, memory_mb: int) -> None:
    """Import the checker once, then fork one worker per request byte on the control socket."""
    import latex2sympy2_extended  # noqa: F401
    import sympy  # noqa: F401 - imported here so that every fork starts warm
    from verirl.rewards.math_equiv import symbolic_equiv

    # Warm-up checks, once, before any fork: they load sympy's lazily imported parts and fill
    # the ANTLR parser's DFA cache of the LaTeX grammar (a cold parse costs ~3x a warm one).
    # Every forked worker inherits both. Generic shapes, not the benchmark's rows.
    for expr in _WARMUP:
        try:
            symbolic_equiv(expr, r"\frac{\sqrt{3}}{2} + x")
        except Exception:
            pass
    # ...and the paths that reach simplify() and the equation comparison (their first call
    # imports more of sympy, ~2 s that no worker should pay).
    for pred, gold in _WARMUP_PAIRS:
        try:
            symbolic_equiv(pred, gold)
        except Exception:
            pass
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps killed workers
    # Ctrl-C is the caller's to handle; zygote and workers exit when their sockets close.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ctrl = socket.socket(fileno=ctrl_fd)
    while True:
        if not ctrl.recv(1):
            return  # the parent closed the pool or died
        ours, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:
            ctrl.close()
            ours.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            _worker_loop(Connection(theirs.detach()), memory_mb)
            os._exit(0)
        theirs.close()
        socket.send_fds(ctrl, [pid.to_bytes(8, "little")], [ours.fileno()])
        ours.close()


_WARMUP = (
    r"\frac{\sqrt{2}}{2}", r"\dfrac{3}{4}", r"-\frac{1}{2}", r"2\sqrt{3}", r"\sqrt[3]{4}",
    r"3\pi", r"\frac{\pi}{6}", r"e^{2}", r"1+2i", r"10^{-3}", r"2^{10}", r"5!", r"\binom{6}{2}",
    r"\log_2 8", r"\ln 5", r"\sin^2 x + \cos^2 x", r"\tan\theta", r"x^2+2x+1", r"(x+1)(x-1)",
    r"\frac{x}{x+1}", r"a+b", r"\sqrt{x^2+1}", r"x=3", r"y=2x+1", r"a=2, b=3", r"(1,2)", r"(1, 2, 3)",
    r"\{1,2\}", r"[0,1)", r"(-\infty, 3]", r"(-\infty,1)\cup(2,\infty)", r"\pm 2",
    r"\begin{pmatrix}1\\2\end{pmatrix}", r"\begin{bmatrix}1&2\\3&4\end{bmatrix}", r"1.5\times10^{3}",
    r"\frac{1}{x}+\frac{1}{y}", r"\left(3,\frac{1}{2}\right)", r"\infty", r"|x-1|", r"2\cdot 3", r"k = 7",
)  # fmt: skip


_WARMUP_PAIRS = (
    (r"\sin^2 x + \cos^2 x", "1"), ("2x - 2y = 4", "x - y = 2"), ("y = x^2+2x+1", "2x+1+x^2"),
    (r"x \geq 5", r"-x \leq -5"), (r"x^2 > 1", r"(-\infty, -1) \cup (1, \infty)"),
)  # fmt: skip


# ---- parent side ----------------------------------------------------------------------------
class _Worker:
    def __init__(self, pid: int, conn: Connection) -> None:
        self.pid, self.conn = pid, conn

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.conn.close()


class CheckerPool:
    """Long-lived worker processes running `symbolic_equiv` with a per-item hard deadline.

    Thread-safe: `check` takes an idle worker (forking one if fewer than `workers` exist), sends
    the pair and waits at most `timeout_s`; a late worker is killed and a fresh one forked later.
    Starting the pool costs nothing until the first symbolic check.
    """

    def __init__(
        self,
        workers: int | None = None,
        timeout_s: float = 0.75,
        memory_mb: int = 2048,
        cache_size: int = 8192,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.size = max(1, workers or min(4, os.cpu_count() or 1))
        self.timeout_s, self.memory_mb = timeout_s, memory_mb
        self._idle: list[_Worker] = []
        self._live = 0
        self._cond = threading.Condition()
        self._closed = False
        self._zygote: subprocess.Popen[bytes] | None = None
        self._ctrl: socket.socket | None = None
        self._fork_lock = threading.Lock()
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str], Verdict] = OrderedDict()
        self._cache_lock = threading.Lock()

    def start(self, wait: bool = False) -> None:
        """Start the zygote and one worker now (in the background unless `wait`), so that the
        first symbolic check does not pay the ~1-2 s sympy import."""
        if wait:
            self._prefork()
        else:
            threading.Thread(target=self._prefork, name="math-checker-fork", daemon=True).start()

    def _prefork(self) -> None:
        """Fork one idle worker if the pool has room and none is idle; never blocks on a busy
        pool."""
        with self._cond:
            if self._closed or self._idle or self._live >= self.size:
                return
            self._live += 1
        try:
            worker = self._fork()
        except Exception:  # a real failure surfaces again on the next check
            with self._cond:
                self._live -= 1
                self._cond.notify()
            return
        self._release(worker)

    def _fork(self) -> _Worker:
        with self._fork_lock:
            if self._closed:
                raise RuntimeError("CheckerPool is closed")
            if self._zygote is None or self._zygote.poll() is not None:
                ours, theirs = socket.socketpair()
                code = f"from verirl.rewards.math_pool import _zygote; _zygote({theirs.fileno()}, {self.memory_mb})"
                # the caller's sys.path, so a source checkout works like an install
                env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
                # vLLM's CPU platform puts torch's libgomp (and tcmalloc) into LD_PRELOAD of the
                # trainer process; checkers run sympy only and must stay small.
                env.pop("LD_PRELOAD", None)
                self._zygote = subprocess.Popen(
                    [sys.executable, "-c", code],
                    pass_fds=[theirs.fileno()],
                    close_fds=True,
                    env=env,
                )
                theirs.close()
                self._ctrl = ours
            assert self._ctrl is not None
            try:
                self._ctrl.sendall(b"F")
                msg, fds, _, _ = socket.recv_fds(self._ctrl, 8, 1)
            except OSError:
                msg, fds = b"", []
            if len(msg) != 8 and self._zygote is not None and self._zygote.poll() is None:
                self._zygote.kill()  # half dead (its socket broken): start afresh next time
                self._zygote.wait()
            if len(msg) != 8 or len(fds) != 1:
                raise RuntimeError("math checker zygote exited; see its stderr")
            return _Worker(int.from_bytes(msg, "little"), Connection(fds[0]))

    def _acquire(self) -> _Worker:
        with self._cond:
            while True:
                if self._closed:
                    raise RuntimeError("CheckerPool is closed")
                if self._idle:
                    return self._idle.pop()
                if self._live < self.size:
                    self._live += 1
                    break
                self._cond.wait()
        try:
            return self._fork()
        except BaseException:
            with self._cond:
                self._live -= 1
                self._cond.notify()
            raise

    def _release(self, worker: _Worker | None) -> None:
        refill = False
        with self._cond:
            if worker is None or self._closed or self._live > self.size:
                self._live -= 1
                if worker is not None:
                    worker.kill()
                refill = worker is None and not self._closed
            else:
                self._idle.append(worker)
            self._cond.notify()
        if refill:  # fork the replacement now, so the next check does not wait for it
            self.start()

    def check(self, pred: str, gold: str) -> Verdict:
        """One `symbolic_equiv(pred, gold)` under the deadline; repeated pairs (a GRPO group
        often repeats an answer) come from a small cache of definite verdicts."""
        key = (pred, gold)
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        verdict = self._check_in_worker(pred, gold)
        if verdict.status in ("correct", "incorrect") and self.cache_size > 0:
            with self._cache_lock:
                self._cache[key] = verdict
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return verdict

    def _check_in_worker(self, pred: str, gold: str) -> Verdict:
        """One check, retried once in a fresh worker when its worker dies: a death can come
        from outside (the OOM killer, an operator's kill) and then says nothing about the
        answer; a second death on the same answer is the answer's fault. A late worker is not
        retried (the deadline is the answer's to meet)."""
        for _attempt in range(2):
            verdict = self._attempt(pred, gold)
            if verdict is not None:
                return verdict
        return Verdict("incorrect", "checker process died twice on this answer")

    def _attempt(self, pred: str, gold: str) -> Verdict | None:
        """The verdict of one worker, or None when the worker died before giving one."""
        worker, error = None, None
        for _ in range(2):  # a dead zygote is replaced by the second try
            try:
                worker = self._acquire()
                break
            except (OSError, RuntimeError) as e:
                if self._closed:
                    raise
                error = e
        if worker is None:  # nothing to do with the answer
            return Verdict("infra_error", f"math checker could not start a worker: {error}")
        keep = False
        try:
            worker.conn.send((pred, gold))
            if not worker.conn.poll(self.timeout_s):
                return Verdict("timeout", f"no verdict within {self.timeout_s:g}s")
            status, detail = worker.conn.recv()
            keep = True
            return Verdict(status, detail)
        except (EOFError, OSError):
            return None
        finally:
            if not keep:
                worker.kill()  # late or dead: SIGKILL, a fresh fork replaces it
            self._release(worker if keep else None)

    def resize(self, workers: int) -> None:
        """Change the number of workers; extra ones retire as they come back."""
        with self._cond:
            self.size = max(1, workers)
            self._cond.notify_all()

    def close(self) -> None:
        """Kill every idle worker and the zygote; busy ones are killed when they return."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._live -= len(idle)
            self._cond.notify_all()
        for w in idle:
            w.kill()
        with self._fork_lock:
            if self._ctrl is not None:
                self._ctrl.close()
                self._ctrl = None
            if self._zygote is not None:
                try:
                    self._zygote.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._zygote.kill()
                    self._zygote.wait()
                self._zygote = None

    def __enter__(self) -> CheckerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
