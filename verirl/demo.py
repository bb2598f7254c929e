"""``verirl demo`` (what ``make demo`` runs): the whole product on a tiny model, from nothing.

1. build a tiny Qwen2 and byte-level tokenizer (``verirl.tiny``), offline;
2. ``verirl sft configs/demo_sft.yaml``: a warm start on imperfect demonstrations of 2-operand
   addition (``write_sft_data``: 40 % right, the rest near misses), so the base is right
   sometimes (moderate pass@1) and usually within 16 tries (high pass@16);
3. ``verirl train configs/demo_grpo.yaml``: GRPO from that base on the train split;
4. evaluate base vs trained on held-out test problems: n samples each, pass@k by the unbiased
   estimator of Chen et al. 2021 (``verirl.evals.passk``);
5. write ``summary.json`` (pass@1/pass@16 base and trained, seconds), ``report.md`` and plots.

RL sharpens sampling toward answers the base already finds (Yue et al. 2025): expect pass@1
to rise a lot and pass@16 to move little.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

CONFIG_DIRS = (
    Path(__file__).resolve().parent.parent / "configs",  # source checkout
    Path(__file__).resolve().parent / "configs",  # installed package data
)


def config_path(name: str) -> Path:
    for d in CONFIG_DIRS:
        if (d / name).is_file():
            return d / name
    raise FileNotFoundError(f"demo config {name} not found in {[str(d) for d in CONFIG_DIRS]}")


def write_sft_data(env: Any, path: Path, p_correct: float = 0.4, seed: int = 0) -> Path:
    """Imperfect demonstrations: each train problem's target is right with probability
    `p_correct`, else a near miss (±1, ±2, ±10). The correct answer stays the most likely one,
    so SFT gives a base whose greedy answer is often right but whose samples scatter: the
    situation where RL against a verifier pays (it sharpens toward what the base already has).
    """
    import random

    from verirl.jsonl import write_jsonl

    rng = random.Random(seed)
    rows = []
    for row in env.rows("train"):
        answer = int(row["answer"])
        if rng.random() >= p_correct:
            answer += rng.choice((-10, -2, -1, 1, 2, 10))
        rows.append({"prompt": env.prompt(row), "completion": str(answer)})
    write_jsonl(path, rows)
    return path


def evaluate(
    model_dir: str | Path,
    env: Any,
    n: int = 16,
    num_problems: int = 200,
    max_new_tokens: int = 5,
    seed: int = 1234,
) -> dict[str, Any]:
    """Sample `n` completions for each of the first `num_problems` test rows; pass@k curve."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from verirl.evals.passk import pass_at_k_array
    from verirl.rollout.base import SamplingParams
    from verirl.rollout.hf import HFRolloutEngine

    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    rows = list(env.rows("test"))[:num_problems]
    prompts = [str(env.prompt(r)) for r in rows]
    torch.manual_seed(seed)
    engine = HFRolloutEngine(model, tok)
    groups = engine.generate(prompts, n, SamplingParams(max_new_tokens=max_new_tokens))
    texts = [c.text for g in groups for c in g]
    results = env.score_batch(texts, [r for r in rows for _ in range(n)])
    correct = np.array([r.ok for r in results]).reshape(len(rows), n).sum(-1)
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= n]
    curve = {k: float(pass_at_k_array(n, correct, k).mean()) for k in ks}
    return {"pass@k": curve, "n": n, "problems": len(rows)}


def main(out_dir: str = "runs/demo") -> int:
    from verirl.config import load_config
    from verirl.envs.registry import make_env
    from verirl.tiny import build_tiny_model
    from verirl.train.config import SftConfig, TrainConfig
    from verirl.train.loop import train
    from verirl.train.metrics import plot_curves
    from verirl.train.sft import sft

    t0 = time.perf_counter()
    out = Path(out_dir)
    shutil.rmtree(out, ignore_errors=True)  # the demo always starts from nothing
    out.mkdir(parents=True)
    print(f"[1/4] building a tiny Qwen2 in {out / 'tiny-model'}")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    build_tiny_model(out / "tiny-model", hidden_size=128, num_layers=2, seed=0)
    common = [f"run_dir={out}"]
    print("[2/4] SFT warm start on imperfect demonstrations (configs/demo_sft.yaml)")
    sft_over = [*common, f"model.path={out / 'tiny-model'}", f"data.path={out / 'sft_data.jsonl'}"]
    sft_cfg = load_config(SftConfig, config_path("demo_sft.yaml"), sft_over)
    write_sft_data(make_env(sft_cfg.env.name, **sft_cfg.env.options), out / "sft_data.jsonl")
    sft(sft_cfg)
    t_sft = time.perf_counter() - t0
    print("[3/4] GRPO (configs/demo_grpo.yaml)")
    grpo_cfg = load_config(
        TrainConfig, config_path("demo_grpo.yaml"), [*common, f"model.path={out / 'sft/final'}"]
    )
    train(grpo_cfg)
    t_grpo = time.perf_counter() - t0 - t_sft
    print("[4/4] evaluating base vs trained on held-out problems")
    env = make_env(grpo_cfg.env.name, **grpo_cfg.env.options)
    max_new = grpo_cfg.rollout.max_new_tokens
    base = evaluate(out / "sft/final", env, max_new_tokens=max_new)
    trained = evaluate(out / "grpo/final", env, max_new_tokens=max_new)
    summary = {
        "pass@1_base": base["pass@k"][1],
        "pass@1_trained": trained["pass@k"][1],
        "pass@16_base": base["pass@k"][16],
        "pass@16_trained": trained["pass@k"][16],
        "pass@k_base": base["pass@k"],
        "pass@k_trained": trained["pass@k"],
        "eval_problems": base["problems"],
        "eval_samples_per_problem": base["n"],
        "seconds_sft": round(t_sft, 1),
        "seconds_grpo": round(t_grpo, 1),
        "seconds_total": round(time.perf_counter() - t0, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_curves(out / "grpo", ("reward_mean", "entropy", "response_length"), "grpo_curves")
    _plot_passk(out, base["pass@k"], trained["pass@k"])
    _report(out, summary)
    for k in ("pass@1_base", "pass@1_trained", "pass@16_base", "pass@16_trained"):
        print(f"{k:>16}: {summary[k]:.3f}")
    print(f"{'seconds_total':>16}: {summary['seconds_total']:.0f}")
    return 0


def _plot_passk(out: Path, base: dict[int, float], trained: dict[int, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, curve in (("base (SFT)", base), ("GRPO", trained)):
        ax.plot(list(curve), list(curve.values()), marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k")
    ax.set_ylabel("pass@k (held-out)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "passk.png", dpi=100)
    plt.close(fig)


def _report(out: Path, s: dict[str, Any]) -> None:
    lines = [
        "# verirl demo",
        "",
        "Tiny Qwen2 (byte tokenizer): SFT on imperfect demonstrations (40% right), then GRPO "
        "against the exact-answer verifier, on 2-operand addition; "
        f"held-out: {s['eval_problems']} test problems x {s['eval_samples_per_problem']} samples.",
        "",
        "| | pass@1 | pass@16 |",
        "|---|---|---|",
        f"| base (SFT) | {s['pass@1_base']:.3f} | {s['pass@16_base']:.3f} |",
        f"| GRPO | {s['pass@1_trained']:.3f} | {s['pass@16_trained']:.3f} |",
        "",
        f"Time: SFT {s['seconds_sft']} s, GRPO {s['seconds_grpo']} s, "
        f"total {s['seconds_total']} s.",
        "",
        "![pass@k](passk.png) ![GRPO curves](grpo/grpo_curves.png)",
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
