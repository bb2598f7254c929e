"""``verirl demo`` (what ``make demo`` runs): the whole product on a tiny model, from nothing.

1. build a tiny Qwen2 and byte-level tokenizer (``verirl.tiny``), offline;
2. ``verirl sft configs/demo_sft.yaml``: a warm start on imperfect demonstrations of 2-operand
   addition (``write_sft_data``: 40 % right, the rest near misses), so the base is right
   sometimes (moderate pass@1) and usually within 16 tries (high pass@16);
3. ``verirl train configs/demo_grpo.yaml``: GRPO from that base on the train split;
4. ``verirl eval arithmetic``: the built-in pass@k suite (``evals/suites/arithmetic.yaml``) on
   held-out test problems, base vs trained, by the unbiased estimator of Chen et al. 2021 with
   bootstrap intervals, into ``eval/`` (summary.json, results.jsonl, passk.png, report.md);
5. write ``summary.json`` (pass@1/pass@16 base and trained, seconds), ``report.md`` and the
   GRPO curves plot.

RL sharpens sampling toward answers the base already finds (Yue et al. 2025): expect pass@1
to rise a lot and pass@16 to move little.

A re-run replaces only what the demo wrote (``DEMO_OUTPUTS``, recorded in ``.verirl-demo``);
anything else in the output folder (a run of yours, say) stays.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

CONFIG_DIRS = (
    Path(__file__).resolve().parent.parent / "configs",  # source checkout
    Path(__file__).resolve().parent / "configs",  # installed package data
)


# Everything the demo writes at the top of its output folder.
DEMO_OUTPUTS = ("tiny-model", "sft_data.jsonl", "sft", "grpo", "eval", "summary.json", "report.md")
MARKER = ".verirl-demo"


def clear_demo_outputs(out: Path, outputs: Sequence[str] = DEMO_OUTPUTS) -> list[str]:
    """Delete what an earlier demo wrote in `out` (the names its marker lists, else
    `outputs`, this demo's names); returns the names of the other entries, left alone."""
    marker = out / MARKER
    mine = set(outputs)
    if marker.is_file():
        mine &= set(json.loads(marker.read_text()).get("outputs", outputs))
    kept = []
    for entry in sorted(out.iterdir()) if out.is_dir() else []:
        if entry.name in mine:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        elif entry.name != MARKER:
            kept.append(entry.name)
    marker.unlink(missing_ok=True)
    return kept


def start_demo_dir(out: Path, outputs: Sequence[str]) -> None:
    """Clear an earlier demo's `outputs` in `out` (``clear_demo_outputs``), create `out`, record
    what this demo will write in its marker, and name the entries left alone."""
    kept = clear_demo_outputs(out, outputs)  # the demo starts from nothing of its own
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(json.dumps({"outputs": list(outputs)}) + "\n")
    if kept:
        print(f"{out}: leaving {', '.join(kept)} alone (not written by the demo)")


def config_path(name: str) -> Path:
    for d in CONFIG_DIRS:
        if (d / name).is_file():
            return d / name
    raise FileNotFoundError(f"demo config {name} not found in {[str(d) for d in CONFIG_DIRS]}")


def write_sft_data(
    env: Any,
    path: Path,
    p_correct: float = 0.4,
    seed: int = 0,
    completion: Callable[[dict[str, Any], int], str] = lambda row, answer: str(answer),
) -> Path:
    """Imperfect demonstrations: each train problem's target is right with probability
    `p_correct`, else a near miss (±1, ±2, ±10). The correct answer stays the most likely one,
    so SFT gives a base whose greedy answer is often right but whose samples scatter: the
    situation where RL against a verifier pays (it sharpens toward what the base already has).
    `completion(row, answer)` writes the target text (default: the answer alone).
    """
    import random

    from verirl.jsonl import write_jsonl

    rng = random.Random(seed)
    rows = []
    for row in env.rows("train"):
        answer = int(row["answer"])
        if rng.random() >= p_correct:
            answer += rng.choice((-10, -2, -1, 1, 2, 10))
        rows.append({"prompt": env.prompt(row), "completion": completion(row, answer)})
    write_jsonl(path, rows)
    return path


def run_task(task: str, out_dir: str | None = None) -> int:
    """``verirl demo --task TASK``: ``math`` (this module, into runs/demo) or ``tools``
    (``verirl.demo_tools``: learning to call a sandboxed Python tool, into runs/demo-tools)."""
    if task == "tools":
        from verirl.demo_tools import main as tools_main

        return tools_main(out_dir or "runs/demo-tools")
    if task != "math":
        raise ValueError(f"demo task must be 'math' or 'tools', got {task!r}")
    return main(out_dir or "runs/demo")


def main(
    out_dir: str = "runs/demo",
    sft_overrides: Sequence[str] = (),
    grpo_overrides: Sequence[str] = (),
    eval_overrides: Sequence[str] = (),
) -> int:
    """Run the demo into `out_dir` (an earlier demo's outputs there are replaced; nothing else
    is touched). The overrides (``key=value``) go to the SFT config, the GRPO config and the
    eval suite; tests use them to shrink the job."""
    from verirl.config import load_config
    from verirl.envs.registry import make_env
    from verirl.evals import run_suite
    from verirl.tiny import build_tiny_model
    from verirl.train.config import SftConfig, TrainConfig
    from verirl.train.loop import train
    from verirl.train.sft import sft

    t0 = time.perf_counter()
    out = Path(out_dir)
    start_demo_dir(out, DEMO_OUTPUTS)
    print(f"[1/4] building a tiny Qwen2 in {out / 'tiny-model'}")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    build_tiny_model(out / "tiny-model", hidden_size=128, num_layers=2, seed=0)
    common = [f"run_dir={out}"]  # names below: runs/demo/sft and runs/demo/grpo
    print("[2/4] SFT warm start on imperfect demonstrations (configs/demo_sft.yaml)")
    sft_over = [
        *common,
        "name=sft",
        f"model.path={out / 'tiny-model'}",
        f"data.path={out / 'sft_data.jsonl'}",
        *sft_overrides,
    ]
    sft_cfg = load_config(SftConfig, config_path("demo_sft.yaml"), sft_over)
    write_sft_data(make_env(sft_cfg.env.name, **sft_cfg.env.options), out / "sft_data.jsonl")
    sft(sft_cfg)
    t_sft = time.perf_counter() - t0
    print("[3/4] GRPO (configs/demo_grpo.yaml)")
    grpo_over = [*common, "name=grpo", f"model.path={out / 'sft/final'}", *grpo_overrides]
    grpo_cfg = load_config(TrainConfig, config_path("demo_grpo.yaml"), grpo_over)
    train(grpo_cfg)
    t_grpo = time.perf_counter() - t0 - t_sft
    print("[4/4] pass@k suite `arithmetic`: base vs trained on held-out problems")
    ev = run_suite(
        "arithmetic",
        {"base": out / "sft/final", "grpo": out / "grpo/final"},
        out / "eval",
        overrides=[f"sampling.max_tokens={grpo_cfg.rollout.max_new_tokens}", *eval_overrides],
    )
    base, trained = ev["models"]["base"], ev["models"]["grpo"]
    ks = [k for k in ev["ks"] if f"pass@{k}" in base]
    k_hi = max(ks)
    summary: dict[str, Any] = {}
    for k in ks:  # pass@1_base, pass@1_trained, ..., pass@16_base, pass@16_trained, ...
        summary[f"pass@{k}_base"], summary[f"pass@{k}_trained"] = (
            base[f"pass@{k}"],
            trained[f"pass@{k}"],
        )
    summary |= {
        "pass@k_base": {k: base[f"pass@{k}"] for k in ks},
        "pass@k_trained": {k: trained[f"pass@{k}"] for k in ks},
        "eval_problems": base["problems"],
        "eval_samples_per_problem": base["n"],
        "seconds_sft": round(t_sft, 1),
        "seconds_grpo": round(t_grpo, 1),
        "seconds_total": round(time.perf_counter() - t0, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    shown = sorted({1, 16, k_hi} & set(ks))
    _report(out, summary, shown)
    for k in shown:
        for who in ("base", "trained"):
            print(f"{f'pass@{k}_{who}':>16}: {summary[f'pass@{k}_{who}']:.3f}")
    print(f"{'seconds_total':>16}: {summary['seconds_total']:.0f}")
    print(f"wrote {out}: summary.json, report.md, sft/, grpo/ (grpo_curves.png), eval/")
    return 0


def _report(out: Path, s: dict[str, Any], ks: list[int]) -> None:
    lines = [
        "# verirl demo",
        "",
        "Tiny Qwen2 (byte tokenizer): SFT on imperfect demonstrations (40% right), then GRPO "
        "against the exact-answer verifier, on 2-operand addition; "
        f"held-out: {s['eval_problems']} test problems x {s['eval_samples_per_problem']} samples.",
        "",
        "| | " + " | ".join(f"pass@{k}" for k in ks) + " |",
        "|---" * (len(ks) + 1) + "|",
        "| base (SFT) | " + " | ".join(f"{s[f'pass@{k}_base']:.3f}" for k in ks) + " |",
        "| GRPO | " + " | ".join(f"{s[f'pass@{k}_trained']:.3f}" for k in ks) + " |",
        "",
        f"Time: SFT {s['seconds_sft']} s, GRPO {s['seconds_grpo']} s, "
        f"total {s['seconds_total']} s.",
        "",
        "Full pass@k table with bootstrap intervals: [eval/report.md](eval/report.md).",
        "",
        "![pass@k](eval/passk.png) ![GRPO curves](grpo/grpo_curves.png)",
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
