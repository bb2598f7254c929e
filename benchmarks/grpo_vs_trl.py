"""GRPO step time: verirl vs TRL's GRPOTrainer on the same tiny model, data, reward and config.

Config (both): 8 prompts x 8 completions per step, 32 new tokens, β = 0, lr 1e-4, one optimizer
step per generation batch, fp32, CPU, same seed. Each trainer runs in its own subprocess so its
peak resident memory (ru_maxrss) is its own; the two alternate `--rounds` times. Prints each
round's ratio, the median step time of each over all rounds (the first `--warmup` steps of a
run are dropped), their peak memory and mean reward, and, last, ``ratio verirl/trl: X``.

The policy (`--init`):

- ``sft`` (default): the tiny Qwen2 after a short SFT warm start (``verirl sft``) on worked
  answers to 2-operand addition, ~30 tokens each, right 40 % of the time (near misses
  otherwise): the situation RL starts from. Completions fill most of the 32 tokens and the
  reward varies within and between groups, so both trainers compute real gradients; groups
  whose 8 rewards are all equal (easy or hopeless prompts) have zero advantage, which verirl
  does not run forward and backward (``algo.skip_zero_grad_rows``, exact) and TRL does.
- ``random``: the randomly initialised model. Its completions never score, every advantage is
  0, and verirl's update has nothing to run: that ratio shows generation speed, not training.

    python benchmarks/grpo_vs_trl.py --steps 12
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROMPTS, GROUP, NEW_TOKENS, LR, SEED = 8, 8, 32, 1e-4, 0
ENV: dict[str, Any] = {"name": "arithmetic", "options": {"train_size": 512}}


def worked_answer(row: dict[str, Any], s: int) -> str:
    """The warm start's target for "a+b=" with answer s (right or a near miss):
    "s" then "Check: s-b=a, so a+b=s." on the next line. The env's reward reads the first
    line (the answer alone); the rest makes completions ~30 tokens long, like the benchmark's
    32-token budget."""
    a, b = row["question"].split("+")
    return f"{s}\nCheck: {s}-{b}={a}, so {a}+{b}={s}."


def warm_start(model_dir: Path, out: Path, steps: int, threads: int) -> Path:
    """`verirl sft` of the tiny model on imperfect worked answers (the demo's
    ``write_sft_data``, 40 % right, with ``worked_answer`` targets); returns the model dir."""
    from verirl.envs.registry import make_env

    from verirl.config import validate_config
    from verirl.demo import write_sft_data
    from verirl.train.config import SftConfig
    from verirl.train.sft import sft

    data = write_sft_data(make_env(ENV["name"], **ENV["options"]), out / "sft.jsonl",
                          seed=SEED, completion=worked_answer)  # fmt: skip
    cfg = {
        "name": "sft",
        "run_dir": str(out),
        "model": {"path": str(model_dir)},
        "env": ENV,
        "data": {"path": str(data)},
        "train": {"steps": steps, "batch_size": 32, "lr": 1e-3, "schedule": "constant",
                  "seed": SEED, "threads": threads},
        "log": {"progress": False, "tensorboard": False},
    }  # fmt: skip
    return sft(validate_config(SftConfig, cfg, "benchmark sft")) / "final"


def run_verirl(
    model_dir: str, steps: int, out: Path, threads: int
) -> tuple[list[float], list[float]]:
    from verirl.config import validate_config
    from verirl.train.config import TrainConfig
    from verirl.train.loop import train
    from verirl.train.metrics import read_metrics

    cfg = {
        "name": "verirl",
        "run_dir": str(out),
        "model": {"path": model_dir},
        "env": ENV,
        "rollout": {"max_new_tokens": NEW_TOKENS, "temperature": 1.0, "score_workers": 1},
        "algo": {"batch_size": PROMPTS * GROUP, "group_size": GROUP, "beta": 0.0, "epochs": 1},
        "train": {"steps": steps, "lr": LR, "seed": SEED, "threads": threads},
        "log": {"progress": False, "tensorboard": False, "samples_every": 0},
    }
    run_dir = train(validate_config(TrainConfig, cfg, "benchmark"))
    rows = read_metrics(run_dir)
    return [r["step_seconds"] for r in rows], [r["reward_mean"] for r in rows]


def run_trl(model_dir: str, steps: int, out: Path, threads: int) -> tuple[list[float], list[float]]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    from verirl.envs.registry import make_env

    torch.set_num_threads(threads)
    env = make_env(ENV["name"], **ENV["options"])
    rows = list(env.rows("train"))
    data = Dataset.from_list([{"prompt": env.prompt(r), "answer": r["answer"]} for r in rows])

    def reward(completions: list[str], answer: list[str], **_: Any) -> list[float | None]:
        return [
            env.score(c, {"answer": a}).reward for c, a in zip(completions, answer, strict=True)
        ]

    times: list[float] = []
    rewards: list[float] = []

    class Timer(TrainerCallback):  # type: ignore[misc]
        t0 = 0.0

        def on_step_begin(self, *a: Any, **k: Any) -> None:
            self.t0 = time.perf_counter()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            times.append(time.perf_counter() - self.t0)

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **k: Any) -> None:
            if logs and "reward" in logs:
                rewards.append(float(logs["reward"]))

    args = GRPOConfig(
        output_dir=str(out / "trl"),
        per_device_train_batch_size=PROMPTS * GROUP,
        gradient_accumulation_steps=1,
        num_generations=GROUP,
        steps_per_generation=1,
        num_iterations=1,
        max_completion_length=NEW_TOKENS,
        temperature=1.0,
        beta=0.0,
        learning_rate=LR,
        lr_scheduler_type="constant",
        max_steps=steps,
        seed=SEED,
        use_cpu=True,
        bf16=False,
        fp16=False,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        # TRL turns gradient checkpointing on by default (recomputing the forward during the
        # backward to save activation memory); verirl does not checkpoint, so neither does TRL
        # here: both run the same job.
        gradient_checkpointing=False,
    )
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=args,
        train_dataset=data,
        processing_class=tok,
        callbacks=[Timer()],
    )
    trainer.train()
    return times, rewards


def child(which: str, model_dir: str, steps: int, out: str, threads: int) -> None:
    fn = run_verirl if which == "verirl" else run_trl
    times, rewards = fn(model_dir, steps, Path(out), threads)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print("RESULT " + json.dumps({"times": times, "rewards": rewards, "peak_mib": peak_mib}))


def measure(which: str, model_dir: str, steps: int, out: Path, threads: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", which, "--model", model_dir,
           "--steps", str(steps), "--out", str(out / which), "--threads", str(threads)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{which} failed:\n{proc.stderr[-4000:]}")
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    result: dict[str, Any] = json.loads(line[len("RESULT ") :])
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=12, help="GRPO steps per run")
    p.add_argument("--rounds", type=int, default=3, help="runs of each, alternating")
    p.add_argument("--warmup", type=int, default=2, help="first steps left out of the median")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads for both")
    p.add_argument("--model", help="model dir (default: build the tiny default model)")
    p.add_argument(
        "--init",
        choices=["sft", "random"],
        default="sft",
        help="warm-start the built model with SFT (default) or use it as initialised",
    )
    p.add_argument("--sft-steps", type=int, default=400, help="SFT steps of the warm start")
    p.add_argument("--out", help="work dir (default: a temporary one)")
    p.add_argument("--child", choices=["verirl", "trl"], help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a.child, a.model, a.steps, a.out, a.threads)
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(a.out or tmp)
        model_dir = a.model
        if model_dir is None:
            from verirl.tiny import build_tiny_model

            model_dir = str(build_tiny_model(out / "tiny-model", seed=SEED))
            if a.init == "sft":
                t0 = time.perf_counter()
                model_dir = str(warm_start(Path(model_dir), out, a.sft_steps, a.threads))
                print(f"warm start: {a.sft_steps} SFT steps in {time.perf_counter() - t0:.0f} s")
        # Alternate the two, `rounds` times: a machine that speeds up or slows down during the
        # run (shared CPUs do) then weighs on both alike.
        res: dict[str, list[dict[str, Any]]] = {"trl": [], "verirl": []}
        for r in range(a.rounds):
            for w in ("trl", "verirl"):
                res[w].append(measure(w, model_dir, a.steps, out / f"round-{r}", a.threads))
    times = {w: [t for x in rs for t in x["times"][a.warmup :]] for w, rs in res.items()}
    med = {w: statistics.median(ts) for w, ts in times.items()}
    if a.rounds > 1:
        per_round = [
            statistics.median(v["times"][a.warmup :]) / statistics.median(t["times"][a.warmup :])
            for t, v in zip(res["trl"], res["verirl"], strict=True)
        ]
        print("per round verirl/trl: " + " ".join(f"{x:.3f}" for x in per_round))
    for w in ("trl", "verirl"):
        peak = max(x["peak_mib"] for x in res[w])
        rewards = [y for x in res[w] for y in x["rewards"]] or [float("nan")]
        print(f"{w:>7}: median step {med[w]:.3f} s over {len(times[w])} steps, "
              f"peak RSS {peak:.0f} MiB, mean reward {statistics.fmean(rewards):.3f}")  # fmt: skip
    print(f"ratio verirl/trl: {med['verirl'] / med['trl']:.3f}")


if __name__ == "__main__":
    main()
