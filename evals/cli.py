"""``verirl eval``: run a pass@k suite on models, or score samples made elsewhere.

verirl eval arithmetic --model runs/demo/base --model runs/demo/grpo --out runs/eval
verirl eval evals/suites/math.yaml --model my/model n=64 sampling.temperature=0.8
verirl eval --samples samples.jsonl --env humaneval --out runs/he options.sandbox=docker
"""

from __future__ import annotations

import argparse
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


def eval_command(args: argparse.Namespace) -> int:
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
    out = Path(args.out or f"runs/eval/{suite.name}")
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
    out = Path(args.out or f"runs/eval/{Path(args.samples).stem}")
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
    console.print(f"wrote {out}/results.jsonl, summary.json, passk.png, report.md")
