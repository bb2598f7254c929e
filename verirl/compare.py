"""``verirl demo --compare`` (``make compare``): five ways to post-train from verifiable rewards,
side by side on the demo's task, from the demo's SFT base, with the same sampling budget.

- grpo: ``configs/demo_grpo.yaml`` (S steps × 128 samples);
- ppo: the same with ``algo.name=ppo`` (a value head and GAE instead of group baselines);
- online_dpo: the same samples, each group's best- vs worst-rewarded completion a DPO pair;
- rft: best-of-K from the base (the same number of samples, K per train prompt), the
  verified-correct completions kept, then SFT on them (``verirl curate`` + ``verirl sft``);
- dpo: offline DPO on best-vs-worst pairs of those same base samples (``verirl dpo``), with
  the chosen answers' NLL added (``algo.sft_weight: 1``, RPO, Pang et al. 2024): DPO alone
  lowers the likelihood of the chosen answers along with the rejected ones, and on this task
  fell below the base (pass@1 0.22 -> 0.07 in one run).

Every model is evaluated by the built-in pass@k suite ``arithmetic`` (held-out test problems),
and ``runs/compare/summary.json`` holds ``{"base": {pass@1, pass@16}, "methods": {name:
{pass@1, pass@16, seconds}}}`` plus the budget; ``report.md`` and ``compare.png`` show it.
``seconds`` is each method's own wall time, its sampling included (rft and dpo share one
sampling pass; each is charged for it in full).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

METHODS = ("grpo", "ppo", "online_dpo", "rft", "dpo")
OUTPUTS = ("tiny-model", "sft_data.jsonl", "base", *METHODS, "curated", "eval", "summary.json",
           "report.md", "compare.png")  # fmt: skip
CURATE_KEYS = ("prompts", "pass_rate", "kept", "pairs")
ENV_OPTIONS = ("max_operand=30", "train_size=2000", "test_size=200")  # demo_grpo.yaml's


def _clear(out: Path) -> None:
    """Delete what an earlier comparison wrote in `out` (only ``OUTPUTS``)."""
    for name in OUTPUTS:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def build_base(out: Path, sft_overrides: Sequence[str] = ()) -> Path:
    """The demo's SFT base: its tiny model, its imperfect demonstrations, its SFT config."""
    from verirl.config import load_config
    from verirl.demo import config_path, write_sft_data
    from verirl.envs.registry import make_env
    from verirl.tiny import build_tiny_model
    from verirl.train.config import SftConfig
    from verirl.train.sft import sft

    build_tiny_model(out / "tiny-model", hidden_size=128, num_layers=2, seed=0)
    over = [f"run_dir={out}", "name=base", f"model.path={out / 'tiny-model'}",
            f"data.path={out / 'sft_data.jsonl'}", *sft_overrides]  # fmt: skip
    cfg = load_config(SftConfig, config_path("demo_sft.yaml"), over)
    write_sft_data(make_env(cfg.env.name, **cfg.env.options), out / "sft_data.jsonl")
    return sft(cfg) / "final"


def _rl(out: Path, name: str, base: Path, steps: int, extra: Sequence[str]) -> Path:
    from verirl.config import load_config
    from verirl.demo import config_path
    from verirl.train.config import TrainConfig
    from verirl.train.loop import train

    over = [f"run_dir={out}", f"name={name}", f"model.path={base}", f"train.steps={steps}",
            "train.save_every=0", "log.progress=false", *extra]  # fmt: skip
    return train(load_config(TrainConfig, config_path("demo_grpo.yaml"), over)) / "final"


def _curate(out: Path, base: Path, k: int, rows: int) -> dict[str, Any]:
    from verirl.cli import build_parser
    from verirl.curate import curate

    (out / "curated").mkdir(parents=True, exist_ok=True)
    args = build_parser().parse_args(
        ["curate", "arithmetic", "--model", str(base), "--k", str(k), "--rows", str(rows),
         "--out", str(out / "curated" / "rft.jsonl"),
         "--pairs-out", str(out / "curated" / "pairs.jsonl"), "--max-new-tokens", "5",
         *[x for o in ENV_OPTIONS for x in ("--option", o)]]
    )  # fmt: skip
    return curate(args)


def _rft(out: Path, base: Path, steps: int) -> Path:
    from verirl.config import load_config
    from verirl.demo import config_path
    from verirl.train.config import SftConfig
    from verirl.train.sft import sft

    over = [f"run_dir={out}", "name=rft", f"model.path={base}",
            f"data.path={out / 'curated' / 'rft.jsonl'}", f"train.steps={steps}",
            "train.lr=3e-4", "log.progress=false"]  # fmt: skip
    return sft(load_config(SftConfig, config_path("demo_sft.yaml"), over)) / "final"


def _dpo(out: Path, base: Path, steps: int) -> Path:
    from verirl.config import validate_config
    from verirl.train.dpo import dpo
    from verirl.train.dpo_config import DpoConfig

    cfg = {"name": "dpo", "run_dir": str(out), "model": {"path": str(base)},
           "data": {"path": str(out / "curated" / "pairs.jsonl")},
           "algo": {"beta": 0.1, "sft_weight": 1.0},
           "train": {"steps": steps, "batch_size": 32, "lr": 3e-4, "schedule": "constant",
                     "threads": 1}, "log": {"progress": False}}  # fmt: skip
    return dpo(validate_config(DpoConfig, cfg, "compare")) / "final"


def main(
    out_dir: str = "runs/compare",
    steps: int = 250,
    sft_steps: int = 200,
    base: str | None = None,
    sft_overrides: Sequence[str] = (),
    eval_overrides: Sequence[str] = (),
) -> int:
    """Run the comparison into `out_dir`. `steps`: RL steps of 128 samples (the budget is
    steps × 128 samples per method); `sft_steps`: optimizer steps of the rft and dpo stages;
    `base`: an existing SFT base (e.g. runs/demo/sft/final) instead of building the demo's."""
    from verirl.evals import run_suite

    t0 = time.perf_counter()
    out = Path(out_dir)
    _clear(out)
    out.mkdir(parents=True, exist_ok=True)
    base_path = Path(base) if base else build_base(out, sft_overrides)
    budget = steps * 128
    seconds: dict[str, float] = {}
    models: dict[str, Path] = {}
    rl = {"grpo": [], "ppo": ["algo.name=ppo"],
          "online_dpo": ["algo.name=online_dpo", "algo.beta=0.1", "train.lr=1e-4"]}  # fmt: skip
    for name, extra in rl.items():
        t = time.perf_counter()
        models[name] = _rl(out, name, base_path, steps, extra)
        seconds[name] = time.perf_counter() - t
    n_rows = 2000
    k = min(16, max(2, budget // n_rows))
    t = time.perf_counter()
    curated = _curate(out, base_path, k, min(n_rows, budget // k))
    t_sample = time.perf_counter() - t
    for name, fn in (("rft", _rft), ("dpo", _dpo)):
        t = time.perf_counter()
        models[name] = fn(out, base_path, sft_steps)
        seconds[name] = time.perf_counter() - t + t_sample
    ev = run_suite("arithmetic", {"base": base_path, **models}, out / "eval",
                   overrides=["sampling.max_tokens=5", "ks=[1, 16]", *eval_overrides], progress=False)  # fmt: skip
    res = {m: ev["models"][m] for m in ("base", *METHODS)}
    summary: dict[str, Any] = {
        "base": {"pass@1": res["base"]["pass@1"], "pass@16": res["base"]["pass@16"]},
        "methods": {m: _scores(res[m], seconds[m]) for m in METHODS},
        "samples_per_method": budget,
        "curate": {"k": k, **{key: curated["rounds"][0][key] for key in CURATE_KEYS}},
        "eval_problems": res["base"]["problems"],
        "eval_samples_per_problem": res["base"]["n"],
        "seconds_total": round(time.perf_counter() - t0, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _report(out, summary)
    _plot(out, summary)
    for m, r in [("base", summary["base"]), *summary["methods"].items()]:
        print(f"{m:>11}: pass@1 {r['pass@1']:.3f}  pass@16 {r['pass@16']:.3f}")
    print(f"wrote {out / 'summary.json'}, report.md, compare.png ({summary['seconds_total']} s)")
    return 0


def _scores(r: dict[str, Any], seconds: float) -> dict[str, float]:
    return {"pass@1": r["pass@1"], "pass@16": r["pass@16"], "seconds": round(seconds, 1)}


def _report(out: Path, s: dict[str, Any]) -> None:
    b = s["base"]
    lines = [
        "# verirl comparison: post-training from verifiable rewards",
        "",
        f"From the demo's SFT base, {s['samples_per_method']} samples per method; held-out: "
        f"{s['eval_problems']} test problems x {s['eval_samples_per_problem']} samples.",
        "",
        "| method | pass@1 | pass@16 | Δ pass@1 | seconds |",
        "|---|---|---|---|---|",
        f"| base (SFT) | {b['pass@1']:.3f} | {b['pass@16']:.3f} | | |",
    ]
    for m, r in s["methods"].items():
        lines.append(f"| {m} | {r['pass@1']:.3f} | {r['pass@16']:.3f} | "
                     f"{r['pass@1'] - b['pass@1']:+.3f} | {r['seconds']} |")  # fmt: skip
    lines += ["", "![comparison](compare.png)", ""]
    (out / "report.md").write_text("\n".join(lines))


def _plot(out: Path, s: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["base", *s["methods"]]
    rows = [s["base"], *s["methods"].values()]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    x = range(len(names))
    for i, key in enumerate(("pass@1", "pass@16")):
        ax.bar([j + (i - 0.5) * 0.38 for j in x], [r[key] for r in rows], 0.38, label=key)
    ax.set_xticks(list(x), names)
    ax.set_ylim(0, 1)
    ax.set_ylabel("held-out pass@k")
    ax.set_title(f"{s['samples_per_method']} samples per method, from the demo's SFT base")
    ax.legend(loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "compare.png", dpi=100)
    plt.close(fig)


def cli(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/compare")
    p.add_argument("--steps", type=int, default=250, help="RL steps (x 128 samples)")
    p.add_argument("--base", help="an existing SFT base instead of building the demo's")
    a = p.parse_args(argv)
    return main(a.out, a.steps, base=a.base)


if __name__ == "__main__":
    raise SystemExit(cli())
