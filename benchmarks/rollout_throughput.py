"""Rollout throughput of the vllm and hf backends, and the weight-sync share of a training step.

Both backends sample the same prompts with the same settings from the same ~30 M-parameter
random Qwen2 (built offline with verirl.tiny unless --model is given); generated tokens per
second of wall time are compared after one warm-up call each. Then a few RL-like steps run with
the vllm backend — generate, one AdamW step on the samples' log-likelihood (a full-model
backward pass, as in GRPO), ``update_weights`` — and the sync's share of the step is reported.

    python benchmarks/rollout_throughput.py [--model DIR] [--prompts 16] [--n 8] [--max-new-tokens 64]

Prints a table and writes the numbers as JSON (``--out``). One run: timings on a shared
machine are noisy, so read ratios, not absolute values.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from verirl.rollout.base import SamplingParams

console = Console()


def build_model(out: Path) -> Path:
    from verirl.tiny import build_tiny_model

    # 10 layers x (attention 0.66 M + MLP 2.36 M) + embeddings: ~30 M parameters; head_dim 64.
    return build_tiny_model(
        out,
        hidden_size=512,
        num_layers=10,
        num_attention_heads=8,
        num_key_value_heads=2,
        intermediate_size=1536,
        max_position_embeddings=512,
        seed=0,
    )


def timed_generate(engine: Any, prompts: list[str], n: int, sp: SamplingParams) -> dict[str, float]:
    engine.generate(prompts[:2], n=2, sampling=SamplingParams(max_new_tokens=4, seed=1))  # warm-up
    t0 = time.perf_counter()
    groups = engine.generate(prompts, n=n, sampling=sp)
    seconds = time.perf_counter() - t0
    tokens = sum(len(c.token_ids) for g in groups for c in g)
    return {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds}


def train_step(model: Any, groups: list[list[Any]], opt: torch.optim.Optimizer) -> None:
    """One optimizer step on the samples' mean token log-likelihood (unit advantages)."""
    seqs = [c.prompt_token_ids + c.token_ids for g in groups for c in g]
    starts = [len(c.prompt_token_ids) for g in groups for c in g]
    width = max(map(len, seqs))
    ids = torch.tensor([s + [0] * (width - len(s)) for s in seqs])  # [B, T], right-padded
    mask = torch.zeros_like(ids, dtype=torch.float32)
    for b, (s, start) in enumerate(zip(seqs, starts, strict=True)):
        mask[b, start : len(s)] = 1.0
    logits = model(ids).logits[:, :-1].float()  # [B, T-1, V]
    logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    loss = -(logp * mask[:, 1:]).sum() / mask[:, 1:].sum()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="HF model dir (default: build a ~30 M-parameter tiny Qwen2)")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--n", type=int, default=8, help="samples per prompt")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--steps", type=int, default=3, help="RL-like steps for the sync share")
    p.add_argument("--out", default="runs/bench/rollout_throughput.json")
    a = p.parse_args(argv)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from verirl.rollout.hf import HFRolloutEngine
    from verirl.rollout.vllm import VLLMRolloutEngine

    tmp = tempfile.TemporaryDirectory()
    model_dir = Path(a.model) if a.model else build_model(Path(tmp.name) / "model")
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    params = sum(x.numel() for x in model.parameters())
    prompts = [f"{i}+{3 * i % 17}=" for i in range(a.prompts)]
    sp = SamplingParams(max_new_tokens=a.max_new_tokens, temperature=1.0, seed=0)
    res: dict[str, Any] = {"params": params, "prompts": a.prompts, "n": a.n}
    res["threads"] = torch.get_num_threads()

    with console.status("hf backend: generating"):
        res["hf"] = timed_generate(HFRolloutEngine(model, tok), prompts, a.n, sp)
    with console.status("vllm backend: starting the engine"):
        engine = VLLMRolloutEngine(model_dir, tokenizer=tok, kv_cache_gib=0.5)
    res["vllm_start_seconds"] = engine.start_seconds
    with console.status("vllm backend: generating"):
        res["vllm"] = timed_generate(engine, prompts, a.n, sp)
    res["speedup"] = res["vllm"]["tokens_per_s"] / res["hf"]["tokens_per_s"]

    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    steps = []
    for s in range(a.steps):
        with console.status(f"vllm RL step {s + 1}/{a.steps}"):
            t0 = time.perf_counter()
            groups = engine.generate(prompts, n=a.n, sampling=sp)
            t1 = time.perf_counter()
            train_step(model, groups, opt)
            t2 = time.perf_counter()
            sync = engine.update_weights(model)
            t3 = time.perf_counter()
        tokens = sum(len(c.token_ids) for g in groups for c in g)
        times = {"gen": t1 - t0, "train": t2 - t1, "sync": sync, "step": t3 - t0}
        steps.append({**times, "gen_tokens_per_s": tokens / (t1 - t0)})
    engine.close()
    res["steps"] = steps
    res["sync_share"] = sum(x["sync"] for x in steps) / sum(x["step"] for x in steps)

    table = Table(title=f"rollouts: {params / 1e6:.1f} M params, {a.prompts} prompts x {a.n}")
    for col in ("backend", "tokens", "seconds", "tokens/s"):
        table.add_column(col, justify="right")
    for b in ("hf", "vllm"):
        r = res[b]
        table.add_row(b, str(r["tokens"]), f"{r['seconds']:.2f}", f"{r['tokens_per_s']:.0f}")
    console.print(table)
    console.print(f"vllm / hf tokens/s: {res['speedup']:.2f}x")
    console.print(f"vllm engine start: {res['vllm_start_seconds']:.1f} s")
    mean = {k: sum(x[k] for x in steps) / len(steps) for k in ("gen", "train", "sync", "step")}
    console.print(
        f"RL step (mean of {len(steps)}): gen {mean['gen']:.2f} s "
        f"({sum(x['gen_tokens_per_s'] for x in steps) / len(steps):.0f} tokens/s), "
        f"train {mean['train']:.2f} s, "
        f"sync {mean['sync']:.3f} s = {100 * res['sync_share']:.1f}% of the step"
    )
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    console.print(f"wrote {out}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
