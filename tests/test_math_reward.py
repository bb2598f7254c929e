"""The math reward on the labelled table (tests/data/math_cases.jsonl), extraction, exactness,
and the worker pool's safety: hard deadlines, threads, clean shutdown, no torch."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from verirl.rewards.math_extract import extract_answer
from verirl.rewards.math_pool import CheckerPool
from verirl.rewards.math_reward import math_reward, math_reward_batch

CASES = [
    json.loads(line)
    for line in (Path(__file__).parent / "data" / "math_cases.jsonl").read_text().splitlines()
    if line.strip()
]
# Generous against a shared 2-core machine: the point is "returns, never hangs"; the benchmark
# reports the real worst item (well under 1 s).
SLACK_S = 4.0


@pytest.fixture(scope="module")
def pool():
    # The table checks verdicts, not speed: a long deadline keeps it stable when the shared
    # machine is loaded. The deadline itself is tested below with short ones.
    with CheckerPool(workers=2, timeout_s=5.0) as p:
        p.start(wait=True)
        yield p


@pytest.fixture(scope="module")
def fast_pool():
    with CheckerPool(workers=2, timeout_s=0.75) as p:
        p.start(wait=True)
        yield p


@pytest.fixture(scope="module")
def table_results(pool):
    return math_reward_batch([c["completion"] for c in CASES], [c["gold"] for c in CASES], pool)


def test_table_is_large_and_covers_every_area():
    assert len(CASES) >= 150
    cats = {c["category"] for c in CASES}
    need = {
        "extract", "hedge", "think", "exact", "number", "decimal", "fraction", "mixed",
        "thousands", "currency", "units", "percent", "degrees", "scientific", "radical",
        "constants", "complex", "factorial", "binomial", "log", "symbolic", "equation",
        "assignment", "tuple", "set", "interval", "matrix", "choice", "word", "pathological",
    }  # fmt: skip
    assert need <= cats, need - cats
    # both labels appear, so a checker that always says yes (or no) fails the table
    assert 0.3 < sum(c["expected"] for c in CASES) / len(CASES) < 0.8


@pytest.mark.parametrize("i", range(len(CASES)), ids=lambda i: f"{i}-{CASES[i]['category']}")
def test_case_table(table_results, i):
    case, res = CASES[i], table_results[i]
    if case.get("verirl_known_wrong"):
        # A documented weakness, kept in the table so the benchmark counts it against us.
        # If this starts passing, the checker improved: drop the flag from the row.
        assert res.ok != case["expected"], f"row {i} is fixed now: remove verirl_known_wrong"
        return
    assert res.ok == case["expected"], (case, res)
    assert res.reward == (1.0 if case["expected"] else 0.0)
    assert res.components == {"correct": res.reward}


def test_known_weaknesses_are_few():
    assert sum(bool(c.get("verirl_known_wrong")) for c in CASES) <= 5


@pytest.mark.parametrize(
    "completion, answer, source, hedged",
    [
        (r"so \boxed{\frac{a}{\sqrt{b^{2}}}} done", r"\frac{a}{\sqrt{b^{2}}}", "boxed", False),
        (r"Thus \boxed 7.", "7", "boxed", False),
        ("<answer> 12 </answer>", "12", "answer_tag", False),
        ("blah\n#### 1,234", "1,234", "gsm8k", False),
        ("The answer is $x=5$. Because ...", "x=5", "answer_is", False),
        ("Final Answer: The final answer is $7$. I hope it is correct.", "7", "answer_is", False),
        ("I got 3 and then 4", "4", "last_number", False),
        # several boxes in the final sentence: a list when joined by commas, a hedge with "or",
        # the last one after a correction
        (r"\boxed{2}, \boxed{3}", "2, 3", "boxed", False),
        (r"\boxed{2} or \boxed{3}", "3", "boxed", True),
        (r"first \boxed{3}, but actually \boxed{5}", "5", "boxed", False),
        (r"\boxed{4}. Then \boxed{5}", "5", "boxed", False),
        ("<think>\\boxed{1}</think>nothing more to say", "1", "boxed", False),
        # answer phrases give their value, not their clause; bold markers are no part of it
        ("**Final Answer:** 12", "12", "final_answer", False),
        ("**Final Answer**: $\\frac{1}{2}$", "\\frac{1}{2}", "final_answer", False),
        ("Final Answer: The largest $n$ is 34.", "34", "final_answer", False),
        ("Answer: 25", "25", "answer_is", False),
        # no box, no phrase: the last math span that is a value, before any bare number
        (r"so $x = \frac{1+\sqrt5}{2}$ works", r"\frac{1+\sqrt5}{2}", "math_span", False),
        (r"the value of $n$ here is 7", "7", "last_number", False),
        # the bare-number fallback never takes a fragment
        (r"so it is \frac{1}{3}", None, "none", False),
        ("it is 2^10", None, "none", False),
        ("x+3", None, "none", False),
        ("nothing at all", None, "none", False),
    ],
)
def test_extraction(completion, answer, source, hedged):
    got = extract_answer(completion)
    assert (got.answer, got.source, got.hedged) == (answer, source, hedged)


def test_last_number_fallback_is_configurable():
    assert extract_answer("it is 4", last_number_fallback=False).answer is None
    res = math_reward("it is 4", "4", last_number_fallback=False)
    assert res.status == "format_error" and res.reward == 0.0


@pytest.mark.parametrize(
    "completion",
    [
        r"\boxed{9^{9^{9^{9}}}}",
        r"\boxed{100000!}",
        "\\boxed{" + "(" * 300 + "1" + ")" * 300 + "}",
        "".join("x+{(\\"[i % 5] for i in range(20000)),
        "\\boxed{" * 3000 + "}" * 10,
        "\\boxed{" + "7" * 20000 + "}",
        r"\boxed{\sqrt{\sqrt{\sqrt{\sqrt{\sqrt{\sqrt{\sqrt{2^{10^{9}}}}}}}}}}",
    ],
    ids=["tower", "factorial", "parens300", "garbage20k", "boxes3000", "digits20k", "roots"],
)
def test_pathological_inputs_return_promptly(fast_pool, completion):
    t = time.perf_counter()
    res = math_reward(completion, "1", fast_pool)
    assert time.perf_counter() - t < SLACK_S
    assert res.status in ("timeout", "incorrect", "format_error")
    assert res.reward == 0.0


def test_timeouts_from_many_threads_and_the_pool_recovers():
    """SIGALRM-based checkers break off the main thread (Math-Verify #50/#55); ours must not."""
    with CheckerPool(workers=2, timeout_s=0.5) as pool:
        out: list[str] = []

        deep = "\\boxed{" + "(" * 300 + "1" + ")" * 300 + "}"  # the LaTeX parser needs seconds

        def hit() -> None:
            out.append(math_reward(deep, "2", pool).status)

        threads = [threading.Thread(target=hit) for _ in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=30)
        assert out == ["timeout"] * 4
        # killed workers were replaced: an ordinary symbolic check still works
        assert math_reward(r"\boxed{\sqrt{8}}", r"2\sqrt{2}", pool).status == "correct"


def test_close_ends_the_zygote_and_workers():
    pool = CheckerPool(workers=2)
    assert math_reward(r"\boxed{\sqrt{8}}", r"2\sqrt{2}", pool).ok
    zygote = pool._zygote
    assert zygote is not None
    worker_pids = [w.pid for w in pool._idle]
    pool.close()
    assert zygote.poll() is not None
    time.sleep(0.2)  # the kernel needs a moment to reap the SIGKILLed workers
    for pid in worker_pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in _proc_state(pid)
    with pytest.raises(RuntimeError, match="closed"):
        pool.check("x", "x")


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return "Z"


def test_math_reward_and_workers_never_load_torch(pool):
    code = (
        "import sys\n"
        "from verirl.rewards.math_reward import math_reward\n"
        "from verirl.envs.registry import available_envs\n"
        "available_envs()\n"
        "assert math_reward('\\\\boxed{1/2}', '0.5').ok\n"
        "bad = [m for m in ('torch', 'vllm') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert math_reward(r"\boxed{\sqrt{8}}", r"2\sqrt{2}", pool).ok
    maps = Path(f"/proc/{pool._zygote.pid}/maps").read_text()
    assert "torch" not in maps and "vllm" not in maps


def test_checkers_drop_the_ld_preload_vllm_cpu_sets(monkeypatch):
    # vLLM's CPU platform preloads torch's libgomp into the trainer's environment; the zygote
    # must not inherit it (seen in a full test run after the vLLM tests).
    spec = importlib.util.find_spec("torch")
    assert spec is not None and spec.submodule_search_locations
    gomp = Path(next(iter(spec.submodule_search_locations))) / "lib" / "libgomp.so.1"
    assert gomp.exists()
    monkeypatch.setenv("LD_PRELOAD", str(gomp))
    with CheckerPool(workers=1, timeout_s=5.0) as p:
        p.start(wait=True)
        assert math_reward(r"\boxed{\sqrt{8}}", r"2\sqrt{2}", p).ok
        assert p._zygote is not None
        maps = Path(f"/proc/{p._zygote.pid}/maps").read_text()
    assert "torch" not in maps


def test_batch_keeps_order_and_validates_lengths(pool):
    comps = [r"\boxed{1}", r"\boxed{\sqrt{4}}", "none", r"\boxed{3}"]
    res = math_reward_batch(comps, ["1", "2", "3", "4"], pool)
    assert [r.status for r in res] == ["correct", "correct", "format_error", "incorrect"]
    with pytest.raises(ValueError, match="completions"):
        math_reward_batch(["a"], ["1", "2"], pool)


def test_pool_rejects_bad_timeout():
    with pytest.raises(ValueError, match="timeout_s"):
        CheckerPool(timeout_s=0)


def test_default_pool_is_process_wide():
    from verirl.rewards.math_reward import default_pool

    assert default_pool() is default_pool()
    assert default_pool().size >= 1 and os.cpu_count()
