"""The GPU check: one command, a few minutes on one GPU, nothing but torch/transformers/peft.

    pip install --no-deps --no-build-isolation -e .     # over the machine's own torch stack
    python benchmarks/gpu_check.py                      # --device cuda (default)
    python benchmarks/gpu_check.py --device cpu --smoke # the same checks, tiny, on CPU (CI)

Random weights on Qwen2.5-0.5B's config (24 layers, 151,936-token vocabulary; ``--smoke``: 2
layers, small widths, 4,096 words) and a word-level tokenizer: no network, no hub. Prints one
``CHECK <name> PASS|FAIL <numbers>`` line per check and exits 1 if any failed:

- install: verirl imports from this checkout (an editable install) and the versions in use;
- logprobs: the hf engine's sampled logprobs at T = 0.5 against the trainer's recomputation;
- forward: the lean forward vs transformers' (float32 and bfloat16 gaps, fwd+bwd times);
- grpo-bf16: bfloat16 GRPO steps with the hf engine (step time, peak device memory);
- lora: the same with LoRA adapters;
- resume: 2 steps straight vs 1 step + checkpoint + resume (metrics and weights);
- memory: the peak device memory of the whole check.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAILED: list[str] = []


def report(name: str, ok: bool, detail: str) -> None:
    print(f"CHECK {name:<9} {'PASS' if ok else 'FAIL'} {detail}", flush=True)
    if not ok:
        FAILED.append(name)


def check_install() -> None:
    """First: the package must be this checkout, installed without touching the torch stack."""
    try:
        import verirl
    except ImportError as e:
        report("install", False, f"import verirl failed ({e}): run "
               "`pip install --no-deps --no-build-isolation -e .` in the repository")  # fmt: skip
        raise SystemExit(1) from None
    here = Path(verirl.__file__).resolve()
    try:
        version = md.version("verirl")
    except md.PackageNotFoundError:
        version = "not installed (imported from the source tree)"
    versions = " ".join(f"{p}={md.version(p)}" for p in ("torch", "transformers", "peft"))
    ok = here.is_relative_to(ROOT)
    report("install", ok, f"verirl {version} from {here.parent}; {versions}")
    if not ok:
        raise SystemExit(1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    p.add_argument("--smoke", action="store_true", help="tiny model and budgets (CPU tests)")
    p.add_argument("--out", help="work dir (default: a temporary one)")
    a = p.parse_args()
    check_install()
    import tempfile

    import torch

    if a.device.startswith("cuda") and not torch.cuda.is_available():
        report("device", False, f"--device {a.device}: torch {torch.__version__} sees no GPU")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        run_checks(a, Path(a.out or tmp))
    print(f"SUMMARY {'FAIL: ' + ', '.join(FAILED) if FAILED else 'all checks passed'}")
    return 1 if FAILED else 0


def run_checks(a: argparse.Namespace, out: Path) -> None:
    import time

    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    import grpo_vs_trl_realvocab as rv  # the word-level tokenizer, the model, the env

    cuda = a.device.startswith("cuda")
    small = {"num_hidden_layers": 2, "hidden_size": 128, "intermediate_size": 256,
             "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 4096}  # fmt: skip
    model_dir = rv.build_model(out / "model", **(small if a.smoke else {}))
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        print(f"device: {torch.cuda.get_device_name(a.device)}", flush=True)
    new_tokens, prompts, group, steps = (8, 2, 2, 2) if a.smoke else (64, 4, 4, 3)
    check_logprobs(model_dir, a.device)
    check_forward(
        model_dir, a.device, 1 if a.smoke else 10, (12, 5) if a.smoke else (40, 25, 64, 10)
    )
    job = dict(model_dir=model_dir, device=a.device, new_tokens=new_tokens, prompts=prompts,
               group=group)  # fmt: skip
    t0 = time.perf_counter()
    _, rows = grpo_run(out / "bf16", steps=steps, dtype="bfloat16", **job)  # type: ignore[arg-type]
    med = sorted(r["step_seconds"] for r in rows[1:] or rows)[len(rows[1:] or rows) // 2]
    peak = f"{torch.cuda.max_memory_allocated(a.device) / 2**30:.2f} GiB" if cuda else "n/a (CPU)"
    ok = all(torch.isfinite(torch.tensor(r["loss"])) and r["grad_norm"] > 0 for r in rows)
    report("grpo-bf16", ok, f"{len(rows)} steps x {prompts * group} completions x {new_tokens} "
           f"tokens, median step {med:.2f} s, reward {rows[-1]['reward_mean']:.3f}, "
           f"peak {peak}, {time.perf_counter() - t0:.0f} s")  # fmt: skip
    run_dir, rows = grpo_run(out / "lora", steps=steps, dtype="bfloat16", lora=True, **job)  # type: ignore[arg-type]
    saved = (run_dir / "final" / "adapter_config.json").is_file()
    ok = saved and all(torch.isfinite(torch.tensor(r["loss"])) and r["grad_norm"] > 0 for r in rows)
    report(
        "lora", ok, f"{len(rows)} steps, last loss {rows[-1]['loss']:.4f}, adapter saved {saved}"
    )
    check_resume(out, job)
    if cuda:
        total = torch.cuda.get_device_properties(a.device).total_memory / 2**30
        peak = torch.cuda.max_memory_allocated(a.device) / 2**30
        report("memory", peak < 0.9 * total, f"peak allocated {peak:.2f} of {total:.0f} GiB")
    else:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        report("memory", True, f"peak RSS {rss:.0f} MiB (CPU)")


def check_logprobs(model_dir: Path, device: str) -> None:
    """The engine's logprobs are log softmax(z/T) of the sampling temperature: ≤ 1e-4 in fp32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from verirl.rollout.base import SamplingParams
    from verirl.rollout.hf import HFRolloutEngine
    from verirl.train.update import rollout_logprobs, sequence_logprobs, to_batch

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
    tok = AutoTokenizer.from_pretrained(model_dir)
    import grpo_vs_trl_realvocab as rv

    prompts = [str(r["prompt"]) for r in rv.AsciiWords().rows()[:4]]
    gaps = []
    for temperature in (0.5, 1.0):
        sp = SamplingParams(max_new_tokens=16, temperature=temperature, seed=0)
        groups = HFRolloutEngine(model, tok).generate(prompts, 4, sp)
        batch = to_batch(groups, tok.pad_token_id, device)
        ref, _ = sequence_logprobs(model, batch, 16, temperature=temperature,
                                   forward="transformers")  # fmt: skip
        gap = ((rollout_logprobs(groups, batch) - ref).abs() * batch.mask).max()
        gaps.append(float(gap))
    report("logprobs", max(gaps) <= 1e-4,
           f"hf engine vs trainer, fp32: max gap {gaps[0]:.2e} at T=0.5, {gaps[1]:.2e} at T=1")  # fmt: skip
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def check_forward(model_dir: Path, device: str, repeats: int, lengths: tuple[int, ...]) -> None:
    """Lean vs transformers' forward on a GRPO-shaped batch: token logprob gaps in fp32 and
    bf16, and the median forward+backward time of each (what ``model.forward: auto`` decides
    from: lean is chosen on CPU only)."""
    import time

    import torch
    from transformers import AutoModelForCausalLM

    from verirl.algos import token_logprobs
    from verirl.train.model import forward_logits, pack

    g = torch.Generator().manual_seed(0)
    rows = [(list(range(2 + 10 * i, 14 + 10 * i)), torch.randint(2, 4000, (n,), generator=g).tolist())
            for i in range(len(lengths)) for n in lengths]  # fmt: skip
    batch = pack([p for p, _ in rows], [c for _, c in rows], 0, device)
    gaps, times = {}, {}
    for dtype in (torch.float32, torch.bfloat16):
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
        lps = {}
        for forward in ("lean", "transformers"):
            ts = []
            for _ in range(repeats):
                model.zero_grad(set_to_none=True)
                if device.startswith("cuda"):
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                with torch.autocast(device.split(":")[0], torch.bfloat16,
                                    enabled=dtype == torch.bfloat16):  # fmt: skip
                    logits, _ = forward_logits(model, batch, forward=forward)
                    lp = token_logprobs(logits, batch.targets)
                (lp * batch.mask).sum().backward()
                if device.startswith("cuda"):
                    torch.cuda.synchronize(device)
                ts.append(time.perf_counter() - t0)
            lps[forward] = lp.detach()
            times[(dtype, forward)] = sorted(ts)[len(ts) // 2]
        gaps[dtype] = float(((lps["lean"] - lps["transformers"]).abs() * batch.mask).max())
        del model
    f32, b16 = torch.float32, torch.bfloat16
    ok = gaps[f32] <= 1e-4 and gaps[b16] <= 0.5
    report("forward", ok, f"lean vs transformers max logprob gap fp32 {gaps[f32]:.2e}, bf16 "
           f"{gaps[b16]:.2e}; fwd+bwd s lean/transformers fp32 {times[(f32, 'lean')]:.3f}/"
           f"{times[(f32, 'transformers')]:.3f}, bf16 {times[(b16, 'lean')]:.3f}/"
           f"{times[(b16, 'transformers')]:.3f}")  # fmt: skip


def grpo_run(
    out: Path, *, model_dir: Path, device: str, new_tokens: int, prompts: int, group: int,
    steps: int, dtype: str, lora: bool = False, save_every: int = 0, resume: bool = False,
) -> tuple[Path, list[dict[str, float]]]:  # fmt: skip
    """`verirl train` on the benchmark's ASCII-share env: (run dir, metrics rows)."""
    import grpo_vs_trl_realvocab as rv

    from verirl.config import validate_config
    from verirl.train.config import TrainConfig
    from verirl.train.loop import train
    from verirl.train.metrics import read_metrics

    model: dict[str, object] = {"path": str(model_dir), "dtype": dtype}
    if lora:
        model["lora"] = {"enabled": True, "r": 16, "target_modules": ["q_proj", "v_proj"]}
    cfg = {
        "name": "run", "run_dir": str(out), "model": model, "env": {"name": rv.AsciiWords.name},
        "rollout": {"max_new_tokens": new_tokens, "temperature": 1.0, "score_workers": 2},
        "algo": {"batch_size": prompts * group, "group_size": group, "beta": 0.0},
        "train": {"steps": steps, "lr": 1e-5, "seed": 0, "device": device,
                  "save_every": save_every},
        "log": {"progress": False, "tensorboard": False, "samples_every": 0},
    }  # fmt: skip
    config = validate_config(TrainConfig, cfg, "gpu_check")
    run_dir = train(config, resume_dir=out / "run") if resume else train(config)
    return run_dir, list(read_metrics(run_dir))


def check_resume(out: Path, job: dict[str, object]) -> None:
    """2 steps straight vs 1 step, checkpoint, resume to 2 (float32): the same metrics and
    weights (to kernel nondeterminism on GPUs)."""
    from transformers import AutoModelForCausalLM

    dir_a, straight = grpo_run(out / "straight", steps=2, dtype="float32", save_every=1, **job)  # type: ignore[arg-type]
    first, _ = grpo_run(out / "resumed", steps=1, dtype="float32", save_every=1, **job)  # type: ignore[arg-type]
    assert first == out / "resumed" / "run", first  # resume_dir below names it
    dir_b, resumed = grpo_run(out / "resumed", steps=2, dtype="float32", save_every=1,
                              resume=True, **job)  # type: ignore[arg-type]  # fmt: skip
    a = AutoModelForCausalLM.from_pretrained(dir_a / "final").state_dict()
    b = AutoModelForCausalLM.from_pretrained(dir_b / "final").state_dict()
    dw = max(float((a[k] - b[k]).abs().max()) for k in a)
    dr = abs(straight[-1]["reward_mean"] - resumed[-1]["reward_mean"])
    ok = len(resumed) == 2 and dr <= 1e-6 and dw <= 1e-4
    report("resume", ok, f"step-2 reward diff {dr:.1e}, max weight diff {dw:.1e}")


if __name__ == "__main__":
    raise SystemExit(main())
