"""GRPO step time and peak memory, verirl vs TRL, on a real-vocabulary model: Qwen2.5-0.5B's
config (tied embeddings, q/k/v bias, GQA 14:2) cut to 4 layers, with its 151,936-token vocabulary.

There the LM head and the log-softmax over the vocabulary dominate: a [B, T, 151936] float32
tensor is 0.6 MB per position. Random weights; a byte-level tokenizer whose 151,936 ids past the bytes
decode to words (half of them ASCII, half not), so every sampled id decodes; reward = the share of ASCII characters in
the completion, dense and varying, so both trainers compute real gradients on every row. Same
job for both: `--prompts` prompts × `--group` completions, `--new-tokens` new tokens, β = 0,
fp32, CPU, one optimizer step per generation batch. Each trainer runs in its own subprocess
(peak RSS = ru_maxrss of that process); the two alternate over `--rounds`. Prints per-step
medians, peak RSS, the ratios, and verirl's own split of a step (generation vs update).

    python benchmarks/grpo_vs_trl_realvocab.py --steps 4
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


def run_verirl(model_dir: str, a: argparse.Namespace, out: Path) -> dict[str, Any]:
    from verirl.config import validate_config
    from verirl.train.config import TrainConfig
    from verirl.train.loop import train
    from verirl.train.metrics import read_metrics

    cfg = {
        "name": "verirl", "run_dir": str(out), "model": {"path": model_dir},
        "env": {"name": AsciiWords.name},
        "rollout": {"max_new_tokens": a.new_tokens, "temperature": 1.0, "score_workers": 1},
        "algo": {"batch_size": a.prompts * a.group, "group_size": a.group, "beta": 0.0},
        "train": {"steps": a.steps, "lr": LR, "seed": SEED, "threads": a.threads},
        "log": {"progress": False, "tensorboard": False, "samples_every": 0},
    }  # fmt: skip
    rows = read_metrics(train(validate_config(TrainConfig, cfg, "benchmark")))
    return {"times": [r["step_seconds"] for r in rows], "gen": [r["gen_seconds"] for r in rows],
            "rewards": [r["reward_mean"] for r in rows]}  # fmt: skip


def run_trl(model_dir: str, a: argparse.Namespace, out: Path) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(a.threads)
    data = Dataset.from_list([{"prompt": r["prompt"]} for r in AsciiWords().rows()])
    times: list[float] = []
    rewards: list[float] = []

    def reward(completions: list[str], **_: Any) -> list[float]:
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


def measure(which: str, model_dir: str, a: argparse.Namespace, out: Path) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", which, "--model", model_dir, "--out", str(out),
           "--steps", str(a.steps), "--threads", str(a.threads), "--prompts", str(a.prompts),
           "--group", str(a.group), "--new-tokens", str(a.new_tokens)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{which} failed:\n{proc.stderr[-4000:]}")
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return dict(json.loads(line[len("RESULT ") :]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4, help="GRPO steps per run")
    p.add_argument("--rounds", type=int, default=1, help="runs of each, alternating")
    p.add_argument("--warmup", type=int, default=1, help="first steps left out of the median")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--group", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--out", help="work dir (default: a temporary one)")
    p.add_argument("--child", choices=["verirl", "trl"], help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        fn = run_verirl if a.child == "verirl" else run_trl
        res = fn(a.model, a, Path(a.out))
        res["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print("RESULT " + json.dumps(res))
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(a.out or tmp)
        model_dir = str(build_model(out / "model"))
        res: dict[str, list[dict[str, Any]]] = {"trl": [], "verirl": []}
        for r in range(a.rounds):
            for w in ("trl", "verirl"):
                res[w].append(measure(w, model_dir, a, out / f"round-{r}-{w}"))
    med = {w: statistics.median(t for x in rs for t in x["times"][a.warmup :])
           for w, rs in res.items()}  # fmt: skip
    peak = {w: max(x["peak_mib"] for x in rs) for w, rs in res.items()}
    for w in ("trl", "verirl"):
        rewards = [y for x in res[w] for y in x["rewards"]] or [float("nan")]
        print(f"{w:>7}: median step {med[w]:.2f} s, peak RSS {peak[w]:.0f} MiB, "
              f"mean reward {statistics.fmean(rewards):.3f}")  # fmt: skip
    gen = statistics.median(g for x in res["verirl"] for g in x["gen"][a.warmup :])
    print(f"verirl step split: generation {gen:.2f} s, rest (logprobs, update) {med['verirl'] - gen:.2f} s")  # fmt: skip
    print(f"ratio verirl/trl: step {med['verirl'] / med['trl']:.3f}, "
          f"peak memory {peak['verirl'] / peak['trl']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
