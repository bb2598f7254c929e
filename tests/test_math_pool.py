"""Fault injection on the math checker's worker processes: a worker killed mid-check (from
outside: the OOM killer, an operator) costs a retry in a fresh worker, not the answer's reward; a
second death on the same answer is the answer's fault; a killed zygote is replaced."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from verirl.rewards.math_pool import CheckerPool

PRED, GOLD = r"\sqrt{8}", r"2\sqrt{2}"  # symbolic (not decided by the fast path), correct


def _children(pid: int) -> list[int]:
    """The live children of `pid` (its forked workers)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def test_a_worker_killed_mid_check_is_retried_in_a_fresh_worker():
    with CheckerPool(workers=1, timeout_s=30.0, cache_size=0) as pool:
        pool.start(wait=True)
        (victim,) = [w.pid for w in pool._idle]
        # Stopped, the worker holds the check in flight for as long as we need; then it dies.
        _kill(victim, signal.SIGSTOP)
        out = []
        th = threading.Thread(target=lambda: out.append(pool.check(PRED, GOLD)))
        th.start()
        time.sleep(0.3)
        assert th.is_alive() and not pool._idle  # the check is in the stopped worker
        _kill(victim, signal.SIGKILL)
        th.join(timeout=60)
        assert not th.is_alive()
        assert out[0].status == "correct", out
        assert victim not in [w.pid for w in pool._idle]


def test_a_second_death_on_the_same_answer_is_the_answers_fault():
    with CheckerPool(workers=1, timeout_s=30.0, cache_size=0) as pool:
        pool.start(wait=True)
        assert pool._zygote is not None
        zygote = pool._zygote.pid
        for pid in _children(zygote):
            _kill(pid, signal.SIGSTOP)  # the first attempt's worker, stopped, dies below
        stop = threading.Event()

        def killer() -> None:  # every worker the zygote forks dies at once
            while not stop.is_set():
                for pid in _children(zygote):
                    _kill(pid, signal.SIGKILL)
                time.sleep(0.01)

        k = threading.Thread(target=killer)
        k.start()
        try:
            verdict = pool.check(PRED, GOLD)
        finally:
            stop.set()
            k.join()
        assert verdict.status == "incorrect"
        assert "died twice" in verdict.detail
        # the pool recovers once the killing stops
        assert pool.check(PRED, GOLD).status == "correct"


def test_a_killed_zygote_is_replaced():
    with CheckerPool(workers=1, timeout_s=30.0, cache_size=0) as pool:
        pool.start(wait=True)
        assert pool._zygote is not None
        first = pool._zygote.pid
        for w in list(pool._idle):
            _kill(w.pid, signal.SIGKILL)  # the idle worker, and the zygote that forks more
        _kill(first, signal.SIGKILL)
        pool._zygote.wait(timeout=10)
        verdict = pool.check(PRED, GOLD)
        assert verdict.status == "correct", verdict
        assert pool._zygote is not None and pool._zygote.pid != first
