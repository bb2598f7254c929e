"""GRPO step time and peak memory, verirl vs TRL, on a real-vocabulary model: Qwen2.5-0.5B's
config (tied embeddings, q/k/v bias, GQA 14:2) cut to 4 layers, with its 151,936-token vocabulary.

At that shape the LM head is 136 M of the model's 196 M parameters: per completion token it is
~70 % of the matmul work, and a [tokens, 151936] float32 tensor is 0.6 MB per position. Random
weights; a byte-level tokenizer whose 151,936 ids past the bytes decode to words (half of them
ASCII, half not), so every sampled id decodes; reward = the share of ASCII characters in the
completion, dense and varying, so both trainers compute real gradients on every row. Same job for
both: `--prompts` prompts × `--group` completions (all in one micro-batch), `--new-tokens` new
tokens (the prompts are ~46 byte tokens), β = 0, fp32, CPU, AdamW, one optimizer step per
generation batch, no gradient checkpointing. The default, 2 × 4 completions of 64 tokens, is
TRL's per-device batch of 8 with completions longer than the prompts, as in RL; 512 scored
positions make the logits 311 MB per [tokens, V] copy. TRL's default 256 tokens would take ~4×
as long on 2 cores. TRL (≥ 1.16 here) already scores tokens through a chunked, recomputing LM
head (``add_fused_lm_head``): neither side holds log-softmax copies of the logits, and at this
shape weights, gradients and AdamW's moments (3.1 GB in fp32) are most of either peak.

Each trainer runs in its own subprocess; the two alternate over `--rounds`. Peak memory is the
same measure for both: the child's peak resident set (ru_maxrss), which includes the ~0.5 GB of
imported libraries. Inside each child a 5 ms sampler of /proc/self/statm attributes the resident
set to phases (generation, backward, optimizer step, the rest: forward and scoring) marked by the
same hooks on both sides (``torch.Tensor.backward``, torch's global optimizer-step hooks, each
trainer's generate); it prints each phase's peak and seconds. Prints per-step medians of wall
time and of process CPU time (from one step's generation to the next), the ratios, and the load
average during the run: on a shared machine wall time moves with other jobs (two threads
waiting on each other at every small decode op), CPU time less, peak memory not at all.

    python benchmarks/grpo_vs_trl_realvocab.py   # 5.5 min on a 2-core machine at load 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from verirl.envs.base import Environment, Row
from verirl.envs.registry import register_env
from verirl.rewards.result import RewardResult

VOCAB, LAYERS, SEED, LR = 151_936, 4, 0, 1e-5
QWEN25_05B = dict(  # Qwen/Qwen2.5-0.5B config.json, layers cut to LAYERS
    hidden_size=896, intermediate_size=4864, num_attention_heads=14, num_key_value_heads=2,
    max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1e6, tie_word_embeddings=True,
    use_sliding_window=False, vocab_size=VOCAB, num_hidden_layers=LAYERS,
)  # fmt: skip


def word(i: int) -> str:
    """Word i of the vocabulary (0, 1: pad, eos): ASCII for even i, not for odd i."""
    return f"a{i}" if i % 2 == 0 else f"é{i}"


def ascii_share(text: str) -> float:
    chars = [c for c in text if not c.isspace()]
    return sum(c.isascii() for c in chars) / len(chars) if chars else 0.0


@register_env
class AsciiWords(Environment):
    name = "bench-ascii-words"
    description = "benchmark: reward = share of ASCII characters (word-level 151,936 vocab)"
    reward_kinds = ("dense",)
    fields = ("prompt",)

    def rows(self, split: str = "train") -> list[Row]:
        return [{"prompt": " ".join(word(2 + (7 * i + 3 * j) % 2000) for j in range(8))}
                for i in range(256)]  # fmt: skip

    def prompt(self, row: Row) -> str:
        return str(row["prompt"])

    def score(self, completion: str, row: Row) -> RewardResult:
        r = ascii_share(completion)
        return RewardResult(r, "correct" if r > 0.9 else "incorrect")


class PhasePeaks:
    """Peak resident set (MiB) and seconds per phase of this process. A daemon thread reads
    /proc/self/statm every 5 ms (torch releases the GIL in its kernels) and charges the reading
    to the innermost phase; ``wrap`` marks a function as a phase. Linux only."""

    def __init__(self) -> None:
        self.stack: list[str] = ["rest"]
        self.peak: defaultdict[str, float] = defaultdict(float)
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.step_cpu: list[float] = []  # process CPU seconds (all threads) at each step's start
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE") / 2**20
        with open("/proc/self/statm") as f:
            while True:
                f.seek(0)
                rss, phase = int(f.read().split()[1]) * page, self.stack[-1]
                self.peak[phase] = max(self.peak[phase], rss)
                time.sleep(0.005)

    def enter(self, phase: str) -> None:
        if phase == "generate":  # each GRPO step starts with one generation batch
            self.step_cpu.append(time.process_time())
        self.stack.append(phase)
        self.seconds[phase] -= time.perf_counter()

    def leave(self) -> None:
        self.seconds[self.stack.pop()] += time.perf_counter()

    def wrap(self, owner: Any, name: str, phase: str) -> None:
        fn: Callable[..., Any] = getattr(owner, name)

        def marked(*a: Any, **k: Any) -> Any:
            self.enter(phase)
            try:
                return fn(*a, **k)
            finally:
                self.leave()

        setattr(owner, name, marked)

    def watch_backward_and_optimizer(self) -> None:
        import torch
        from torch.optim.optimizer import (
            register_optimizer_step_post_hook,
            register_optimizer_step_pre_hook,
        )

        self.wrap(torch.Tensor, "backward", "backward")
        register_optimizer_step_pre_hook(lambda *_: self.enter("optimizer"))
        register_optimizer_step_post_hook(lambda *_: self.leave())

    def report(self) -> dict[str, Any]:
        """Peaks, seconds per phase, and CPU seconds of each step but the last (from one
        step's generation to the next: less sensitive to other jobs than wall time)."""
        cpu = [round(b - a, 2) for a, b in zip(self.step_cpu, self.step_cpu[1:], strict=False)]
        return {"phase_peak_mib": {k: round(v) for k, v in self.peak.items()},
                "phase_seconds": {k: round(v, 2) for k, v in self.seconds.items() if k != "rest"},  # all steps
                "cpu_times": cpu}  # fmt: skip


def build_model(out: Path, **overrides: Any) -> Path:
    """The word-level tokenizer and a random Qwen2.5-0.5B-shaped model (``QWEN25_05B`` updated
    with `overrides`, e.g. a smaller vocab_size for smoke runs) saved to `out`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        GenerationConfig,
        PreTrainedTokenizerFast,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    # Byte-level BPE as Qwen2's tokenizer (which AutoTokenizer picks for a qwen2 config) with
    # no merges: prompts encode byte by byte, every id decodes (ids past the bytes to words).
    shape = {**QWEN25_05B, **overrides}
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    fillers = [byte_level.pre_tokenize_str(word(i))[0][0] for i in range(2 + len(alphabet), shape["vocab_size"])]  # fmt: skip
    vocab = {t: i for i, t in enumerate(["<pad>", "<|endoftext|>", *alphabet, *fillers])}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = byte_level
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>",
                                  eos_token="<|endoftext|>", padding_side="left")  # fmt: skip
    tok.save_pretrained(str(out))
    cfg = Qwen2Config(**shape, bos_token_id=1, eos_token_id=1, pad_token_id=0,
                      dtype="float32")  # fmt: skip
    torch.manual_seed(SEED)
    model = Qwen2ForCausalLM(cfg)
    model.generation_config = GenerationConfig(eos_token_id=1, pad_token_id=0, bos_token_id=1)
    model.save_pretrained(str(out))
    return out


def run_verirl(
    model_dir: str, a: argparse.Namespace, out: Path, peaks: PhasePeaks
) -> dict[str, Any]:
    from verirl.config import deep_merge, parse_overrides, validate_config
    from verirl.rollout.hf import HFRolloutEngine
    from verirl.train.config import TrainConfig
    from verirl.train.loop import train
    from verirl.train.metrics import read_metrics

    peaks.wrap(HFRolloutEngine, "_generate", "generate")
    if a.head_block_min is not None:  # batches above it score through the head function
        import verirl.train.model

        verirl.train.model.HEAD_BLOCK_MIN_ELEMENTS = a.head_block_min
        verirl.train.model.HEAD_PATH_MIN_VOCAB = 2**62  # the threshold alone decides
    cfg = {
        "name": "verirl", "run_dir": str(out), "model": {"path": model_dir},
        "env": {"name": AsciiWords.name},
        "rollout": {"max_new_tokens": a.new_tokens, "temperature": 1.0, "score_workers": 1},
        "algo": {"batch_size": a.prompts * a.group, "group_size": a.group, "beta": 0.0},
        "train": {"steps": a.steps, "lr": LR, "seed": SEED, "threads": a.threads},
        "log": {"progress": False, "tensorboard": False, "samples_every": 0},
    }  # fmt: skip
    cfg = deep_merge(cfg, parse_overrides(a.verirl_set))
    rows = read_metrics(train(validate_config(TrainConfig, cfg, "benchmark")))
    return {"times": [r["step_seconds"] for r in rows], "rewards": [r["reward_mean"] for r in rows]}  # fmt: skip


def run_trl(model_dir: str, a: argparse.Namespace, out: Path, peaks: PhasePeaks) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationMixin, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    peaks.wrap(GenerationMixin, "generate", "generate")
    torch.set_num_threads(a.threads)
    data = Dataset.from_list([{"prompt": r["prompt"]} for r in AsciiWords().rows()])
    times: list[float] = []
    rewards: list[float] = []

    def reward(completions: list[str], **_: Any) -> list[float | None]:
        return [ascii_share(c) for c in completions]

    class Timer(TrainerCallback):  # type: ignore[misc]
        t0 = 0.0

        def on_step_begin(self, *x: Any, **k: Any) -> None:
            self.t0 = time.perf_counter()

        def on_step_end(self, *x: Any, **k: Any) -> None:
            times.append(time.perf_counter() - self.t0)

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **k: Any) -> None:
            if logs and "reward" in logs:
                rewards.append(float(logs["reward"]))

    args = GRPOConfig(
        output_dir=str(out / "trl"), per_device_train_batch_size=a.prompts * a.group,
        gradient_accumulation_steps=1, num_generations=a.group, steps_per_generation=1,
        num_iterations=1, max_completion_length=a.new_tokens, temperature=1.0, beta=0.0,
        learning_rate=LR, lr_scheduler_type="constant", max_steps=a.steps, seed=SEED,
        use_cpu=True, bf16=False, fp16=False, logging_steps=1, report_to="none",
        save_strategy="no", disable_tqdm=True,
        gradient_checkpointing=False,  # verirl does not checkpoint: the same job for both
    )  # fmt: skip
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=data,
                processing_class=tok, callbacks=[Timer()]).train()  # fmt: skip
    return {"times": times, "rewards": rewards}


def child(a: argparse.Namespace) -> None:
    peaks = PhasePeaks()
    peaks.watch_backward_and_optimizer()
    fn = run_verirl if a.child == "verirl" else run_trl
    res = fn(a.model, a, Path(a.out), peaks)
    res["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print("RESULT " + json.dumps({**res, **peaks.report()}))


def measure(which: str, model_dir: str, a: argparse.Namespace, out: Path) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", which, "--model", model_dir, "--out", str(out),
           "--steps", str(a.steps), "--threads", str(a.threads), "--prompts", str(a.prompts),
           "--group", str(a.group), "--new-tokens", str(a.new_tokens),
           *(x for kv in a.verirl_set for x in ("--verirl-set", kv)),
           *(["--head-block-min", str(a.head_block_min)] if a.head_block_min is not None else [])]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{which} failed:\n{proc.stderr[-4000:]}")
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return dict(json.loads(line[len("RESULT ") :]))


def summarise(
    res: dict[str, list[dict[str, Any]]], warmup: int, loads: list[float]
) -> dict[str, Any]:
    """Medians over every round's steps after `warmup`, the highest peak of any round, and per
    phase the highest peak and the median seconds per step."""
    out: dict[str, Any] = {"load_average": loads}
    for w, rs in res.items():
        steps = [t for x in rs for t in x["times"][warmup:]]
        cpu = [t for x in rs for t in x["cpu_times"][warmup:]] or [float("nan")]
        phases = sorted({p for x in rs for p in x["phase_peak_mib"]})
        out[w] = {
            "median_step_s": round(statistics.median(steps), 2), "steps": len(steps),
            "median_step_cpu_s": round(statistics.median(cpu), 2),
            "peak_mib": round(max(x["peak_mib"] for x in rs)),
            "phase_peak_mib": {p: max(x["phase_peak_mib"].get(p, 0) for x in rs) for p in phases},
            "phase_s_per_step": {p: round(statistics.median(x["phase_seconds"].get(p, 0.0) / len(x["times"])
                                                            for x in rs), 2) for p in phases if p != "rest"},
            "mean_reward": round(statistics.fmean(y for x in rs for y in x["rewards"]), 3),
        }  # fmt: skip
    if len(res) == 2:
        out["ratio_step"] = round(out["verirl"]["median_step_s"] / out["trl"]["median_step_s"], 3)
        out["ratio_peak"] = round(out["verirl"]["peak_mib"] / out["trl"]["peak_mib"], 3)
        cpu_v, cpu_t = out["verirl"]["median_step_cpu_s"], out["trl"]["median_step_cpu_s"]
        out["ratio_step_cpu"] = round(cpu_v / cpu_t, 3)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3, help="GRPO steps per run")
    p.add_argument("--rounds", type=int, default=1, help="runs of each, alternating")
    p.add_argument("--warmup", type=int, default=1, help="first steps left out of the median")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompts", type=int, default=2)
    p.add_argument("--group", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--verirl-set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for verirl's run (e.g. model.forward=transformers)")  # fmt: skip
    p.add_argument("--head-block-min", type=int, help="verirl.train.model.HEAD_BLOCK_MIN_ELEMENTS "
                   "for verirl's run, deciding alone (0: always the head function; a huge value: the plain "
                   "head, the default before real vocabularies took the head function)")  # fmt: skip
    p.add_argument("--only", choices=["trl", "verirl"], help="run one side only (its memory)")
    p.add_argument("--json", help="also write the summary to this file")
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--out", help="work dir (default: a temporary one)")
    p.add_argument("--child", choices=["verirl", "trl"], help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a)
        return
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(a.out or tmp)
        model_dir = str(build_model(out / "model"))
        sides = ("verirl", "trl") if a.only is None else (a.only,)
        res: dict[str, list[dict[str, Any]]] = {w: [] for w in sides}
        for r in range(a.rounds):
            for w in sides:
                res[w].append(measure(w, model_dir, a, out / f"round-{r}-{w}"))
                print(f"{w} round {r}: " + json.dumps(res[w][-1]), flush=True)
                loads.append(os.getloadavg()[0])
    s = summarise(res, a.warmup, loads)
    s["shape"] = {"prompts": a.prompts, "group": a.group, "new_tokens": a.new_tokens,
                  "steps": a.steps, "rounds": a.rounds, "threads": a.threads,
                  "verirl_set": a.verirl_set, "head_block_min": a.head_block_min}  # fmt: skip
    for w in [w for w in ("trl", "verirl") if w in s]:
        x = s[w]
        print(f"{w:>7}: median step {x['median_step_s']:.2f} s over {x['steps']} steps "
              f"({x['median_step_cpu_s']:.2f} CPU s), peak RSS {x['peak_mib']} MiB, "
              f"mean reward {x['mean_reward']:.3f}")  # fmt: skip
        print(" " * 9 + "peak MiB by phase " + json.dumps(x["phase_peak_mib"])
              + ", s per step (mean, all steps) " + json.dumps(x["phase_s_per_step"]))  # fmt: skip
    print(
        "load average (1 min) at start and after each run: " + " ".join(f"{v:.1f}" for v in loads)
    )
    if "ratio_step" in s:
        print(f"ratio verirl/trl: step {s['ratio_step']:.3f} (CPU time {s['ratio_step_cpu']:.3f}), "
              f"peak memory {s['ratio_peak']:.3f}")  # fmt: skip
    if a.json:
        Path(a.json).write_text(json.dumps(s, indent=1) + "\n")


if __name__ == "__main__":
    main()
