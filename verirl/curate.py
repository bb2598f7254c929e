"""``verirl curate``: best-of-K curation and rejection-sampling fine-tuning (RFT).

Sample K completions per prompt from a model with the rollout engine, score them with the
environment's verifier, and keep the verified-correct ones (deduplicated, at most
``--max-per-prompt`` per prompt, the shortest first if asked) as SFT rows that ``verirl sft``
reads (``prompt``/``completion`` columns, the prompt as the environment gives it). With a
verifier the filtered data costs no labelling: this is rejection sampling (Touvron et al. 2023,
Llama 2 §3.2.3), RFT (Yuan et al. 2023, arXiv:2308.01825) and, iterated, expert iteration /
STaR (Zelikman et al. 2022) / ReST-EM (Singh et al. 2023, arXiv:2312.06585).

``--sft CONFIG`` fine-tunes on each round's rows; ``--rounds N`` repeats sample → filter → SFT,
each round sampling from the previous round's model and, as in STaR and ReST-EM, fine-tuning the
*starting* model on the new rows (so errors of one round's model are not compounded).
``--pairs-out`` also writes each group's best- vs worst-scored completion as DPO rows.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from verirl.errors import ConfigError


def keep_correct(
    texts: Sequence[str],
    statuses: Sequence[str],
    max_per_prompt: int | None = None,
    shortest_first: bool = False,
) -> list[int]:
    """Indices of one prompt's completions to keep: verified correct, deduplicated (two texts
    that differ only in surrounding whitespace are one), in sample order or the shortest first
    (stable), at most `max_per_prompt`.

    >>> keep_correct(["12", " 12", "13", "012", "12 "], ["correct"] * 2 + ["incorrect"] + ["correct"] * 2)
    [0, 3]
    >>> keep_correct(["1111", "11", "111"], ["correct"] * 3, max_per_prompt=2, shortest_first=True)
    [1, 2]
    """
    seen: set[str] = set()
    keep = []
    for i, (text, status) in enumerate(zip(texts, statuses, strict=True)):
        key = text.strip()
        if status == "correct" and key not in seen:
            seen.add(key)
            keep.append(i)
    if shortest_first:
        keep.sort(key=lambda i: len(texts[i]))
    return keep[:max_per_prompt] if max_per_prompt is not None else keep


def curate_round(
    engine: Any,
    tok: Any,
    env: Any,
    rows: Sequence[dict[str, Any]],
    k: int,
    sampling: Any,
    max_per_prompt: int | None = None,
    shortest_first: bool = False,
    workers: int | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, float]]:
    """One sample → score → filter pass: (SFT rows, DPO pair rows, stats)."""
    import torch

    from verirl.algos.preference import best_worst_pairs
    from verirl.prompts import render_prompt

    t0 = time.perf_counter()
    prompts = [env.prompt(r) for r in rows]
    texts = [render_prompt(p, tok, "auto") for p in prompts]
    groups = engine.generate(texts, k, sampling)
    flat = [c for g in groups for c in g]
    results = env.score_batch([c.text for c in flat], [r for r in rows for _ in range(k)], workers)
    rewards = torch.tensor([r.reward for r in results], dtype=torch.float32).view(len(rows), k)
    valid = torch.tensor([r.counts_for_training for r in results]).view(len(rows), k)
    best, worst, has_pair = best_worst_pairs(rewards, valid)
    sft_rows: list[dict[str, Any]] = []
    pair_rows: list[dict[str, Any]] = []
    prompts_kept = 0
    for i, (row, prompt, group) in enumerate(zip(rows, prompts, groups, strict=True)):
        res = results[i * k : (i + 1) * k]
        keep = keep_correct([c.text for c in group], [r.status for r in res], max_per_prompt,
                            shortest_first)  # fmt: skip
        prompts_kept += bool(keep)
        for j in keep:
            sft_rows.append({"prompt": prompt, "completion": group[j].text, "id": row.get("id"),
                             "reward": res[j].reward})  # fmt: skip
        if has_pair[i]:
            b, w = int(best[i]), int(worst[i])
            pair_rows.append({"prompt": prompt, "chosen": group[b].text,
                              "rejected": group[w].text, "id": row.get("id"),
                              "chosen_reward": res[b].reward,
                              "rejected_reward": res[w].reward})  # fmt: skip
    n = len(results)
    correct = sum(r.ok for r in results)
    stats = {
        "prompts": len(rows),
        "samples": n,
        "pass_rate": correct / max(n, 1),
        "infra_errors": sum(not r.counts_for_training for r in results),
        "kept": len(sft_rows),
        "prompts_kept": prompts_kept,
        "pairs": len(pair_rows),
        "groups_without_pair": len(rows) - len(pair_rows),
        "seconds": time.perf_counter() - t0,
    }
    return sft_rows, pair_rows, stats


def round_path(out: Path, r: int, rounds: int) -> Path:
    """Where round `r`'s rows go: `out` itself for a single round, else ``<stem>.round<r>``."""
    return out if rounds == 1 else out.with_name(f"{out.stem}.round{r}{out.suffix}")


def summary_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}.summary.json")


def curate(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``--rounds`` rounds; returns the summary written to ``<out stem>.summary.json``."""
    from verirl.cli import check_output_file
    from verirl.config import parse_overrides
    from verirl.evals.models import load_model
    from verirl.jsonl import write_jsonl
    from verirl.rollout import SamplingParams, make_engine
    from verirl.train.run import load_env

    out = Path(args.out)
    rounds = args.rounds
    if rounds > 1 and not args.sft:
        raise ConfigError("--rounds > 1 needs --sft CONFIG: without fine-tuning, every round "
                          "would sample from the same model")  # fmt: skip
    for r in range(1, rounds + 1):
        check_output_file(str(round_path(out, r, rounds)), args.overwrite, "--out")
    if args.pairs_out:
        check_output_file(args.pairs_out, args.overwrite, "--pairs-out")
    check_output_file(str(summary_path(out)), args.overwrite, "--out (its summary)")
    env_cfg = argparse.Namespace(name=args.env, options=parse_overrides(args.option or []),
                                 split=args.split)  # fmt: skip
    env, rows = load_env(argparse.Namespace(env=env_cfg))
    rows = list(rows)[: args.rows] if args.rows else list(rows)
    sft_cfg = _sft_config(args, out) if args.sft else None  # checked before any sampling
    model_path = args.model
    summary: dict[str, Any] = {"env": args.env, "model": args.model, "k": args.k, "rounds": []}
    for r in range(1, rounds + 1):
        model, tok = load_model(model_path)
        engine = make_engine("hf", model=model, tokenizer=tok, batch_size=args.batch_size)
        sampling = SamplingParams(args.max_new_tokens, args.temperature, seed=args.seed + r)
        try:
            sft_rows, pairs, stats = curate_round(engine, tok, env, rows, args.k, sampling,
                                                  args.max_per_prompt, args.shortest_first,
                                                  args.workers)  # fmt: skip
        finally:
            engine.close()
        if not sft_rows:
            raise ConfigError(f"round {r}: no verified-correct completion among "
                              f"{stats['samples']} samples of {model_path}; raise --k, "
                              "--temperature or start from a better model")  # fmt: skip
        data = round_path(out, r, rounds)
        write_jsonl(data, sft_rows)
        if args.pairs_out and r == 1:  # pairs from the starting model's samples (offline DPO)
            write_jsonl(args.pairs_out, pairs)
        record: dict[str, Any] = {"round": r, "model": str(model_path), "data": str(data),
                                  **stats}  # fmt: skip
        print(f"round {r}: {stats['kept']} rows from {stats['prompts_kept']} of "
              f"{stats['prompts']} prompts (pass rate {stats['pass_rate']:.3f}) -> {data}")  # fmt: skip
        if sft_cfg is not None:
            model_path = str(_fine_tune(sft_cfg, data, r) / "final")
            record["sft_model"] = model_path
        summary["rounds"].append(record)
    summary["final_model"] = model_path
    summary_path(out).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _sft_config(args: argparse.Namespace, out: Path) -> Any:
    """The SFT config of every round: ``--sft`` with ``--sft-set`` overrides; the model is the
    starting one and the data this round's rows (set per round by ``_fine_tune``)."""
    from verirl.config import load_config
    from verirl.train.config import SftConfig

    overrides = [*(args.sft_set or []), f"model.path={args.model}", f"env.name={args.env}",
                 f"data.path={out}", "data.prompt_field=prompt",
                 "data.completion_field=completion"]  # fmt: skip
    return load_config(SftConfig, args.sft, overrides)


def _fine_tune(cfg: Any, data: Path, r: int) -> Path:
    from verirl.train.sft import sft

    data_cfg = cfg.data.model_copy(update={"path": str(data)})
    return sft(cfg.model_copy(update={"name": f"{cfg.name}-round{r}", "data": data_cfg}),
               unique=True)  # fmt: skip


def add_parser(sub: Any, func: Any) -> None:
    """``verirl curate``'s arguments (called by ``verirl.cli.build_parser``)."""
    from verirl.cli import positive_int

    cu = sub.add_parser("curate", help="best-of-K: keep verified-correct samples as SFT rows")
    cu.add_argument("env", help="environment name (see `verirl envs list`)")
    cu.add_argument("--model", required=True, help="model directory or hub id to sample from")
    cu.add_argument("--k", type=positive_int, required=True, help="samples per prompt")
    cu.add_argument("--out", required=True, help="JSONL of SFT rows (prompt, completion)")
    cu.add_argument("--max-per-prompt", type=positive_int, help="keep at most N per prompt")
    cu.add_argument("--shortest-first", action="store_true", help="keep the shortest first")
    cu.add_argument("--rounds", type=positive_int, default=1, help="sample→filter→SFT rounds")
    cu.add_argument("--sft", metavar="CONFIG", help="fine-tune on each round's rows (sft config)")
    cu.add_argument("--sft-set", action="append", metavar="KEY=VALUE", help="--sft override")
    cu.add_argument("--pairs-out", help="also write best-vs-worst DPO pairs (round 1) here")
    cu.add_argument("--split", default="train", help="dataset split (default train)")
    cu.add_argument("--rows", type=positive_int, help="use the first N rows of the split")
    cu.add_argument("--option", action="append", metavar="KEY=VALUE", help="environment option")
    cu.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    cu.add_argument("--max-new-tokens", type=positive_int, default=64, help="completion cap")
    cu.add_argument("--batch-size", type=positive_int, help="sequences per generate call")
    cu.add_argument("--workers", type=positive_int, help="concurrent reward checks")
    cu.add_argument("--seed", type=int, default=0, help="sampling seed (round r: seed + r)")
    cu.add_argument("--overwrite", action="store_true", help="replace existing output files")
    cu.set_defaults(func=func)


def curate_command(args: argparse.Namespace) -> int:
    summary = curate(args)
    print(f"curate done: {summary['rounds'][-1]['data']} (model {summary['final_model']})")
    return 0
