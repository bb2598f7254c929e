"""verirl's math reward vs Math-Verify 0.9.0 on the same rows, in one run: our labelled table,
the conformance corpus of other graders' cases (per source), and the universal-answer guard.

    python benchmarks/math_vs_mathverify.py [--cases tests/data/math_cases.jsonl] [--workers 2]
                                            [--repeat 5] [--json out.json] [--guard-stride 1]

For each suite: accuracy, false positives and false negatives separately, the worst single
item, and the batch speed ratio (Math-Verify's sequential total / verirl's batch total). On the
guard every row is labelled 0, so every pass is a false positive (a reward hack).

Each table row is (completion, gold, expected). Math-Verify gets ``parse(completion)`` and
``parse("$" + gold + "$")`` (its documented usage) and ``verify(gold, pred)``; verirl gets
``math_reward(completion, gold)``. Printed: accuracy of each, the rows where they disagree with
the label, total seconds, worst single item, and the speed ratio (Math-Verify total / verirl
batch total). Throughput is measured on the table repeated ``--repeat`` times; the per-item
worst case on one sequential pass. Math-Verify's SIGALRM timeouts need the main thread, so it
runs sequentially here, as it must in a trainer's reward function.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from verirl.rewards.math_corpus import load_corpus
from verirl.rewards.math_guard import GUARD_GOLDS, guard_completions
from verirl.rewards.math_pool import CheckerPool
from verirl.rewards.math_reward import math_reward, math_reward_batch

from verirl.jsonl import read_jsonl

DEFAULT_CASES = Path(__file__).resolve().parent.parent / "tests" / "data" / "math_cases.jsonl"
DEFAULT_CORPUS = DEFAULT_CASES.parent / "math_corpus"


def run_verirl(cases: list[dict[str, Any]], workers: int, repeat: int) -> dict[str, Any]:
    # No verdict cache: the timed batch must not reuse the verdicts of the sequential pass.
    with CheckerPool(workers=workers, cache_size=0) as pool:
        t0 = time.perf_counter()
        pool.start(wait=True)  # zygote start-up (sympy import), paid once per run
        startup = time.perf_counter() - t0
        verdicts, times = [], []
        for c in cases:
            t = time.perf_counter()
            verdicts.append(math_reward(c["completion"], c["gold"], pool).ok)
            times.append(time.perf_counter() - t)
    # The timed batch runs in fresh workers: each worker memoises its parses, and the
    # sequential pass above must not warm them for it.
    with CheckerPool(workers=workers, cache_size=0) as pool:
        for _ in range(workers):
            pool.start(wait=True)
        comps = [c["completion"] for c in cases] * repeat
        golds = [c["gold"] for c in cases] * repeat
        t = time.perf_counter()
        math_reward_batch(comps, golds, pool)
        batch = time.perf_counter() - t
    return {"verdicts": verdicts, "times": times, "batch_s": batch, "startup_s": startup}


def run_mathverify(cases: list[dict[str, Any]], repeat: int) -> dict[str, Any]:
    import logging

    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # one line per timeout otherwise

    def one(c: dict[str, Any]) -> bool:
        gold = c["gold"] if "\\boxed" in c["gold"] else f"${c['gold']}$"
        try:
            return bool(verify(parse(gold), parse(c["completion"])))
        except Exception:
            return False

    verdicts, times = [], []
    for c in cases:
        t = time.perf_counter()
        verdicts.append(one(c))
        times.append(time.perf_counter() - t)
    seq_total = sum(times)
    if repeat > 1:  # same work again, as the batch run does
        t = time.perf_counter()
        for _ in range(repeat - 1):
            for c in cases:
                one(c)
        seq_total += time.perf_counter() - t
    return {"verdicts": verdicts, "times": times, "batch_s": seq_total, "startup_s": 0.0}


def numeric_mix(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """A training-like batch: GSM8K-style integer answers, half right, seeded."""
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        gold = rng.randint(0, 5000)
        got = gold if i % 2 == 0 else gold + rng.randint(1, 9)
        text = f"She buys {rng.randint(2, 9)} boxes, so the total is {got:,}."
        comp = text + (f"\n#### {got}" if i % 3 else f" The answer is $\\boxed{{{got}}}$.")
        rows.append({"completion": comp, "gold": str(gold), "expected": got == gold})
    return rows


def time_mix(rows: list[dict[str, Any]], workers: int) -> tuple[float, float, float, float]:
    """(verirl seconds, math-verify seconds, verirl accuracy, math-verify accuracy)."""
    from math_verify import parse, verify

    with CheckerPool(workers=workers, cache_size=0) as pool:
        pool.start(wait=True)
        t = time.perf_counter()
        ours = math_reward_batch([r["completion"] for r in rows], [r["gold"] for r in rows], pool)
        ours_s = time.perf_counter() - t
    t = time.perf_counter()
    theirs = [bool(verify(parse(f"${r['gold']}$"), parse(r["completion"]))) for r in rows]
    theirs_s = time.perf_counter() - t
    acc = sum(o.ok == r["expected"] for o, r in zip(ours, rows, strict=True)) / len(rows)
    acc_mv = sum(v == r["expected"] for v, r in zip(theirs, rows, strict=True)) / len(rows)
    return ours_s, theirs_s, acc, acc_mv


def summary(name: str, cases: list[dict[str, Any]], res: dict[str, Any]) -> dict[str, Any]:
    right = [v == c["expected"] for v, c in zip(res["verdicts"], cases, strict=True)]
    worst = max(range(len(cases)), key=lambda i: res["times"][i])
    return {
        "name": name,
        "accuracy": sum(right) / len(cases),
        "wrong": [i for i, ok in enumerate(right) if not ok],
        "total_s": res["batch_s"],
        "worst_s": res["times"][worst],
        "worst_item": worst,
        "startup_s": res["startup_s"],
        "times": res["times"],
    }


def errors(cases: list[dict[str, Any]], verdicts: list[bool]) -> tuple[int, int]:
    """(false positives, false negatives) against the labels."""
    fp = sum(v and not c["expected"] for v, c in zip(verdicts, cases, strict=True))
    fn = sum(c["expected"] and not v for v, c in zip(verdicts, cases, strict=True))
    return fp, fn


def compare_suite(name: str, cases: list[dict[str, Any]], workers: int) -> dict[str, Any]:
    """Both checkers on one suite; prints one line per checker, and agreement per source."""
    runs = {"verirl": run_verirl(cases, workers, 1), "math-verify": run_mathverify(cases, 1)}
    print(
        f"\n== {name}: {len(cases)} rows ({sum(c['expected'] for c in cases)} labelled equivalent)"
    )
    out: dict[str, Any] = {}
    for checker, res in runs.items():
        fp, fn = errors(cases, res["verdicts"])
        acc = 1 - (fp + fn) / len(cases)
        worst = max(res["times"])
        print(
            f"  {checker:12s} accuracy {acc:.3f}  FP {fp:5d}  FN {fn:4d}  "
            f"total {res['batch_s']:7.2f}s  worst item {worst:.3f}s"
        )
        out[checker] = {"accuracy": acc, "fp": fp, "fn": fn, "total_s": res["batch_s"],
                        "worst_s": worst}  # fmt: skip
    for src in sorted({c.get("source", "") for c in cases} - {""}):
        idx = [i for i, c in enumerate(cases) if c.get("source") == src]
        agree = {
            k: sum(r["verdicts"][i] == cases[i]["expected"] for i in idx) / len(idx)
            for k, r in runs.items()
        }
        print(
            f"    {src:24s} n={len(idx):3d}  verirl {agree['verirl']:.3f}  "
            f"math-verify {agree['math-verify']:.3f}"
        )
    ratio = runs["math-verify"]["batch_s"] / runs["verirl"]["batch_s"]
    print(f"  speed ratio (math-verify sequential / verirl batch of 2 workers): {ratio:.1f}x")
    out["ratio"] = ratio
    return out


def guard_cases(stride: int) -> list[dict[str, Any]]:
    golds = [g for g, _ in GUARD_GOLDS][::stride]
    return [
        {"completion": text, "gold": g, "expected": False, "category": f"guard:{style}"}
        for _, style, text in guard_completions()
        for g in golds
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default=str(DEFAULT_CASES))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1, help="table repeats for throughput")
    ap.add_argument("--json", help="write the summary here")
    ap.add_argument(
        "--numeric", type=int, default=1000, help="size of a GSM8K-like integer batch (0: skip)"
    )
    ap.add_argument("--corpus", default=str(DEFAULT_CORPUS), help="conformance corpus folder")
    ap.add_argument(
        "--guard-stride", type=int, default=1, help="use every n-th guard gold (1: all 42)"
    )
    ap.add_argument("--skip-table", action="store_true", help="only the corpus and the guard")
    args = ap.parse_args(argv)
    suites = {
        "corpus": compare_suite("conformance corpus", load_corpus(args.corpus), args.workers),
        "guard": compare_suite(
            "universal-answer guard", guard_cases(args.guard_stride), args.workers
        ),
    }
    if args.skip_table:
        if args.json:
            Path(args.json).write_text(json.dumps(suites, default=str))
        return 0
    print("\n== our own labelled table")
    cases = read_jsonl(args.cases)
    ours = summary("verirl", cases, run_verirl(cases, args.workers, args.repeat))
    theirs = summary("math-verify", cases, run_mathverify(cases, args.repeat))
    n = len(cases) * args.repeat
    print(f"{len(cases)} labelled cases ({sum(c['expected'] for c in cases)} equivalent)")
    for s in (ours, theirs):
        print(
            f"{s['name']:12s} accuracy {s['accuracy']:.3f} ({len(cases) - len(s['wrong'])}/"
            f"{len(cases)})  total {s['total_s']:.2f}s for {n} checks  "
            f"worst item {s['worst_s']:.2f}s (#{s['worst_item']})"
        )
    calm = [i for i, c in enumerate(cases) if c["category"] != "pathological"]
    ours_calm = sum(ours["times"][i] for i in calm)
    theirs_calm = sum(theirs["times"][i] for i in calm)
    print(
        f"without the {len(cases) - len(calm)} pathological rows, one at a time: verirl "
        f"{ours_calm:.2f}s, math-verify {theirs_calm:.2f}s ({theirs_calm / ours_calm:.1f}x)"
    )
    print(f"verirl worker start-up (once per pool): {ours['startup_s']:.2f}s")
    print(f"speed ratio (math-verify / verirl): {theirs['total_s'] / ours['total_s']:.1f}x")
    if args.numeric:
        o_s, t_s, acc, acc_mv = time_mix(numeric_mix(args.numeric), args.workers)
        print(
            f"GSM8K-like batch of {args.numeric}: verirl {o_s:.2f}s (accuracy {acc:.3f}), "
            f"math-verify {t_s:.2f}s (accuracy {acc_mv:.3f}), ratio {t_s / o_s:.0f}x"
        )
    for s in (ours, theirs):
        for i in s["wrong"]:
            c = cases[i]
            print(
                f"  {s['name']} wrong on #{i} [{c['category']}]: {c['completion'][:60]!r} "
                f"vs gold {c['gold'][:30]!r} (label {c['expected']})"
            )
    if args.json:
        Path(args.json).write_text(json.dumps({"verirl": ours, "math_verify": theirs}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
