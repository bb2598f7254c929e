"""``verirl eval``: run a pass@k suite on models, or score samples made elsewhere.

verirl eval arithmetic --model base=runs/demo/sft/final --model grpo=runs/demo/grpo/final
verirl eval evals/suites/math.yaml --model my/model n=64 sampling.temperature=0.8
verirl eval --samples samples.jsonl --env humaneval --out runs/he options.sandbox=docker
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from verirl.errors import UserError


def parse_models(specs: list[str]) -> dict[str, str]:
    """``--model PATH`` or ``--model NAME=PATH``; names default to the directory name.

    >>> parse_models(["base=runs/a/model", "runs/b/final"])
    {'base': 'runs/a/model', 'final': 'runs/b/final'}
    """
    models: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            path = spec
            name = Path(spec.rstrip("/")).name or spec
        if not name or not path:
            raise UserError(f"--model {spec!r}: expected PATH or NAME=PATH")
        if name in models:
            raise UserError(
                f"--model {spec!r}: two models are called {name!r}; name them with NAME=PATH"
            )
        models[name] = path
    return models


def choose_out_dir(
    out: str | None, default: str, identity: dict[str, Any], overwrite: bool
) -> Path:
    """Where an evaluation writes. A folder holding this same evaluation (same `identity`:
    suite, sampling and models, or samples file and env), or an unfinished one, is reused: its
    cache makes a re-run free and an interrupted run resume. One holding another evaluation is
    replaced only with `overwrite`; the default folder then moves aside to a timestamped name,
    an explicit ``--out`` is an error."""
    from verirl.rundir import claim_run_dir, clear_run_dir, occupied

    path = Path(out or default)
    summary = path / "summary.json"
    if not occupied(path) or not summary.is_file():
        return path
    try:
        meta = json.loads(summary.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        meta = {}

    def same(key: str, want: Any) -> bool:  # summary.json keeps model names, not paths
        got = meta.get(key)
        return sorted(got or {}) == sorted(want) if key == "models" else got == want

    if all(same(k, v) for k, v in identity.items()):
        print(f"{path} holds this evaluation already: reusing it (its cache answers)")
        return path
    if not overwrite and out is not None:
        raise UserError(
            f"--out {path} holds another evaluation ({meta.get('suite')}, models "
            f"{', '.join(meta.get('models') or {}) or '?'}): --overwrite replaces it, or give "
            "another --out"
        )
    chosen = claim_run_dir(path, overwrite=overwrite, unique=True)
    if overwrite:
        clear_run_dir(chosen)
    return chosen


def parse_ks(text: str) -> list[int]:
    """``--ks 1,4,16`` as a list of k (the same as the override ``ks=[1,4,16]``).

    >>> parse_ks("1, 4,16")
    [1, 4, 16]
    """
    try:
        ks = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(
            f"--ks {text!r}: expected comma-separated integers, e.g. --ks 1,4,16"
        ) from None
    if not ks or min(ks) < 1:
        raise UserError(f"--ks {text!r}: every k must be >= 1, e.g. --ks 1,4,16")
    return ks


def eval_command(args: argparse.Namespace) -> int:
    if getattr(args, "ks", None):  # after the other overrides: --ks wins over ks=...
        args.overrides = [*args.overrides, f"ks={parse_ks(args.ks)}"]
    if args.samples:
        return _samples(args)
    if not args.suite:
        raise UserError(
            "verirl eval: give a SUITE (name or YAML file) with --model, or --samples FILE --env ENV"
        )
    from verirl.evals.runner import evaluate_models
    from verirl.evals.suite import load_suite

    if args.env:
        raise UserError("--env is for --samples; a suite names its environments itself")
    if not args.model:
        raise UserError("verirl eval SUITE: give at least one --model PATH (repeatable)")
    suite = load_suite(args.suite, args.overrides)
    models = parse_models(args.model)
    if args.backend is not None and args.backend != suite.backend:
        suite = suite.model_copy(update={"backend": args.backend})
    identity = {
        "suite": suite.name,
        "sampling_hash": suite.sampling_hash(),
        "models": sorted(models),
    }
    out = choose_out_dir(args.out, f"runs/eval/{suite.name}", identity, args.overwrite)
    summary = evaluate_models(suite, models, out, backend=args.backend)
    _print_summary(summary, out)
    return 0


def _samples(args: argparse.Namespace) -> int:
    from verirl.evals.samples import score_samples

    if not args.env:
        raise UserError("--samples needs --env ENV (see `verirl envs list`)")
    overrides = list(args.overrides)
    if args.suite and "=" in args.suite:  # argparse hands the first key=value to SUITE
        overrides.insert(0, args.suite)
        args.suite = None
    if args.suite or args.model:
        raise UserError("--samples scores a file: give no SUITE and no --model with it")
    identity = {"samples": str(args.samples), "env": args.env}
    out = choose_out_dir(args.out, f"runs/eval/{Path(args.samples).stem}", identity, args.overwrite)
    summary = score_samples(args.samples, args.env, out, overrides)
    _print_summary(summary, out)
    return 0


def _print_summary(summary: dict[str, Any], out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    ks = summary["ks"]
    table = Table(title=f"pass@k: {summary.get('suite')} ({summary['problems']} problems)")
    table.add_column("model", style="bold")
    for k in ks:
        table.add_column(f"pass@{k}", justify="right")
    for name, e in summary["models"].items():
        table.add_row(name, *(f"{e[f'pass@{k}']:.3f}" if f"pass@{k}" in e else "–" for k in ks))
    console = Console()
    console.print(table)
    for c in summary["crossovers"]:
        console.print(c["text"])
    console.print(f"wrote {out}: results.jsonl, summary.json, passk.png, report.md")
