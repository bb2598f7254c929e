"""Ablation of the algorithm menu on the demo task: same SFT base, same budget, one run per
advantage estimator / policy loss, then one held-out pass@k suite over all of them.

Every run starts from the demo's SFT model (``runs/demo/sft/final`` after ``make demo``; built
here with the demo's own steps when missing) and uses ``configs/demo_grpo.yaml`` with one change
per row (``ROWS``). The policy-loss rows train 2 epochs per batch: with one epoch the ratio
π_θ/π_old is 1 and gspo / dual_clip / cispo give the same gradient as ppo_clip. PPO (value head,
GAE) uses G = 1 with the same number of completions per step. Held-out: the ``arithmetic``
suite (100 test problems, n = 32). Writes ``<out>/ablation.json`` and ``<out>/ablation.md``
(pass@1, pass@16, maj@16, seconds of training per row) and prints the table.

    python benchmarks/algos_ablation.py                       # the demo's budget (250 steps)
    python benchmarks/algos_ablation.py --steps 40 --problems 50 --n 16   # a reduced run
    python benchmarks/algos_ablation.py --only grpo rloo      # a subset of the rows
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

# name -> (algo overrides, note). Budget: the demo's 128 completions per step.
ROWS: dict[str, tuple[list[str], str]] = {
    "grpo": ([], "GRPO (the demo)"),
    "dr_grpo": (["algo.scale_rewards=false", "algo.loss_agg=seq-mean-token-sum-norm"], "Dr. GRPO"),
    "rloo": (["algo.advantage=rloo"], "RLOO"),
    "reinforce_pp": (["algo.advantage=reinforce_pp"], "REINFORCE++"),
    "reinforce_pp_baseline": (["algo.advantage=reinforce_pp_baseline"], "REINFORCE++-baseline"),
    "grpo_2ep": (["algo.epochs=2"], "GRPO, ppo_clip, 2 epochs"),
    "dapo": (["algo.epochs=2", "algo.clip_high=0.28", "algo.filter_zero_variance=true",
              "algo.overlong_cache=2", "algo.mask_truncated=true"], "DAPO-style, 2 epochs"),
    "gspo": (["algo.epochs=2", "algo.policy_loss=gspo", "algo.loss_agg=seq-mean-token-mean",
              "algo.clip_low=3e-4", "algo.clip_high=4e-4"], "GSPO, 2 epochs"),
    "cispo": (["algo.epochs=2", "algo.policy_loss=cispo"], "CISPO, 2 epochs"),
    "dual_clip": (["algo.epochs=2", "algo.policy_loss=dual_clip"], "dual-clip PPO, 2 epochs"),
    "ppo": (["algo.name=ppo", "algo.group_size=1"], "PPO (value head, GAE), G = 1"),
}  # fmt: skip


def sft_base(out: Path) -> Path:
    """The demo's SFT model: ``runs/demo/sft/final`` when ``make demo`` has run, else built
    into ``out/base`` with the demo's own steps (tiny Qwen2, imperfect demonstrations, SFT)."""
    demo = Path("runs/demo/sft/final")
    if (demo / "config.json").is_file():
        return demo
    base = out / "base"
    if (base / "sft" / "final" / "config.json").is_file():
        return base / "sft" / "final"
    from verirl.envs.registry import make_env

    from verirl.config import load_config
    from verirl.demo import config_path, write_sft_data
    from verirl.tiny import build_tiny_model
    from verirl.train.config import SftConfig
    from verirl.train.sft import sft

    build_tiny_model(base / "tiny-model", hidden_size=128, num_layers=2, seed=0)
    over = [f"run_dir={base}", "name=sft", f"model.path={base / 'tiny-model'}",
            f"data.path={base / 'sft_data.jsonl'}", "log.progress=false"]  # fmt: skip
    cfg = load_config(SftConfig, config_path("demo_sft.yaml"), over)
    write_sft_data(make_env(cfg.env.name, **cfg.env.options), base / "sft_data.jsonl")
    sft(cfg)
    return base / "sft" / "final"


def train_row(name: str, extra: list[str], base: Path, out: Path, steps: int) -> float:
    """Train one row from ``base``; returns its training seconds."""
    from verirl.config import load_config
    from verirl.demo import config_path
    from verirl.train.config import TrainConfig
    from verirl.train.loop import train

    over = [f"run_dir={out / 'runs'}", f"name={name}", f"model.path={base}",
            f"train.steps={steps}", f"train.save_every={steps}", "log.progress=false",
            "log.samples_every=0", "log.tensorboard=false", *extra]  # fmt: skip
    cfg = load_config(TrainConfig, config_path("demo_grpo.yaml"), over)
    t0 = time.perf_counter()
    train(cfg)
    return time.perf_counter() - t0


def table(result: dict[str, Any], ks: list[int]) -> str:
    cols = [f"pass@{k}" for k in ks] + [f"maj@{ks[-1]}"]
    lines = ["| row | what | " + " | ".join(cols) + " | train s |", "|" + "---|" * (len(cols) + 3)]
    for name, r in result["rows"].items():
        cells = " | ".join(f"{r[c]:.3f}" if c in r else "–" for c in cols)
        secs = f"{r['seconds']:.0f}" if r.get("seconds") is not None else "–"
        lines.append(f"| {name} | {r['what']} | {cells} | {secs} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/ablation", help="output folder")
    ap.add_argument("--steps", type=int, default=250, help="RL steps per row (demo: 250)")
    ap.add_argument("--problems", type=int, default=100, help="held-out problems (suite: 100)")
    ap.add_argument("--n", type=int, default=32, help="samples per problem (suite: 32)")
    ap.add_argument("--only", nargs="*", choices=list(ROWS), help="run only these rows")
    args = ap.parse_args()
    from transformers.utils import logging as hf_logging
    from verirl.evals import run_suite

    hf_logging.disable_progress_bar()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = sft_base(out)
    rows = {k: ROWS[k] for k in (args.only or ROWS)}
    seconds: dict[str, float] = {}
    for name, (extra, _) in rows.items():
        print(f"[train] {name}: {' '.join(extra) or '(demo config)'}", flush=True)
        seconds[name] = train_row(name, extra, base, out, args.steps)
        print(f"[train] {name}: {seconds[name]:.0f} s", flush=True)
    models = {"base": base, **{n: out / "runs" / n / "final" for n in rows}}
    ks = [k for k in (1, 16) if k <= args.n]
    size = args.problems  # the suite's env, resized
    envs = (f"envs=[{{name: arithmetic, split: test, size: {size}, options: {{seed: 0, "
            "max_operand: 30, ops: '+', test_size: 200}}]")  # fmt: skip
    over = [f"n={args.n}", f"ks={ks}", envs, "sampling.max_tokens=5"]
    ev = run_suite("arithmetic", models, out / "eval", overrides=over, progress=False)
    result: dict[str, Any] = {"steps": args.steps, "problems": args.problems, "n": args.n,
                              "base": str(base), "rows": {}}  # fmt: skip
    for name in models:
        m = ev["models"][name]
        what = "SFT base (no RL)" if name == "base" else rows[name][1]
        keys = [f"pass@{k}" for k in ks] + [f"maj@{ks[-1]}"]
        result["rows"][name] = {"what": what, "seconds": seconds.get(name),
                                **{k: m[k] for k in keys if k in m}}  # fmt: skip
    (out / "ablation.json").write_text(json.dumps(result, indent=2) + "\n")
    md = table(result, ks)
    (out / "ablation.md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
