"""The ``verirl`` command. Parsing only; each subcommand's work lives in its own module and is
imported when that subcommand runs, so ``verirl --help`` and ``verirl envs list`` never import
torch or vLLM."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from verirl import __version__
from verirl.errors import UserError


def _envs_list(args: argparse.Namespace) -> int:
    from verirl.envs.registry import available_envs, env_source

    envs = available_envs()
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "name": n,
                        "description": c.description,
                        "reward_kinds": list(c.reward_kinds),
                        "fields": list(c.fields),
                        "source": env_source(n),
                    }
                    for n, c in envs.items()
                ],
                indent=2,
            )
        )
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="verirl environments")
    table.add_column("name", style="bold")
    table.add_column("description")
    table.add_column("reward kinds")
    for n, c in envs.items():
        table.add_row(n, c.description, ", ".join(c.reward_kinds))
    Console().print(table)
    return 0


def _envs_show(args: argparse.Namespace) -> int:
    from verirl.envs.registry import env_options, env_source, get_env_class

    cls = get_env_class(args.name)
    print(f"name:         {cls.name}")
    print(f"description:  {cls.description}")
    print(f"reward kinds: {', '.join(cls.reward_kinds)}")
    # The example row's columns and the required ones, in one list that agrees with the row.
    fields = list(dict.fromkeys([*cls.example_row, *cls.fields]))
    optional = [f for f in fields if f not in cls.fields]
    note = f"  (required: {', '.join(cls.fields) or 'none'})" if optional else ""
    print(f"row fields:   {', '.join(fields)}{note}")
    print(f"source:       {env_source(cls.name)}")
    # The turn protocol (verirl.envs.multiturn): the defaults; a max_turns option may change it.
    stops = ", ".join(repr(s) for s in cls.turn_stop) or "none (the engine's end of turn)"
    print(f"turns:        max_turns={cls.max_turns}; a model turn also stops at: {stops}")
    print(f"protocol:     {cls.protocol}")
    options = env_options(cls)
    if options:
        print("options (env.options.NAME in a config, --option NAME=VALUE in `verirl score`):")
        width = max(len(n) for n, _, _ in options)
        for n, kind, default in options:
            print(f"  {n:<{width}}  {kind or '?'} = {default}")
    if cls.example_row:
        env: Any = cls.__new__(cls)  # a prompt needs no dataset: skip __init__'s loading
        try:
            env.__init__()
        except Exception:
            pass
        try:
            prompt = env.prompt(dict(cls.example_row))
        except Exception as e:
            prompt = f"<needs options to build a prompt: {e}>"
        print(f"example row:  {json.dumps(cls.example_row)}")
        print("sample prompt:")
        print(prompt if isinstance(prompt, str) else json.dumps(prompt, indent=2))
    return 0


def positive_int(text: str) -> int:
    """argparse type of counts such as ``--workers``: 0 or less is refused (exit code 2)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def check_output_file(path: str, overwrite: bool, flag: str = "--output") -> None:
    """An output file goes into an existing directory and replaces a file only when asked."""
    from pathlib import Path

    p = Path(path)
    if not p.parent.is_dir():
        raise UserError(
            f"{flag} {path}: directory {p.parent} does not exist; create it (mkdir -p "
            f"{p.parent}) or write elsewhere"
        )
    if p.is_dir():
        raise UserError(f"{flag} {path}: is a directory; give a file name")
    if p.exists() and not overwrite:
        raise UserError(f"{flag} {path} exists; --overwrite replaces it")


def _score(args: argparse.Namespace) -> int:
    from verirl.config import parse_overrides
    from verirl.scoring import score_file

    check_output_file(args.output, args.overwrite)
    options = parse_overrides(args.option or [])
    if args.sandbox:
        options["sandbox"] = args.sandbox
    counts = score_file(args.env, args.input, args.output, args.workers, options, not args.quiet)
    total = sum(counts.values())
    summary = ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
    print(f"scored {total} rows: wrote {args.output} ({summary})")
    if counts.get("infra_error"):
        # The sandbox (or the scorer) failed on these rows: their reward says nothing about the
        # completions. Every row is written (see its `detail`); the exit code says it.
        from verirl.jsonl import read_jsonl

        first = next(r for r in read_jsonl(args.output) if r.get("status") == "infra_error")
        print(
            f"verirl score: {counts['infra_error']} of {total} rows are infra_error (the sandbox "
            f"failed, not the completions), e.g.: {str(first.get('detail'))[:300]}",
            file=sys.stderr,
        )
        return 1
    return 0


def _sandbox(args: argparse.Namespace) -> int:
    from verirl.sandboxes.cli import sandbox_command

    return sandbox_command(args)


def _sft(args: argparse.Namespace) -> int:
    from verirl.train.cli import sft_command

    return sft_command(args.config, args.overrides, overwrite=args.overwrite)


def _train(args: argparse.Namespace) -> int:
    from verirl.train.cli import train_command

    return train_command(args.config, args.overrides, resume=args.resume, overwrite=args.overwrite)


def _dpo(args: argparse.Namespace) -> int:
    from verirl.train.dpo import dpo_command

    return dpo_command(args.config, args.overrides, resume=args.resume, overwrite=args.overwrite)


def _rm(args: argparse.Namespace) -> int:
    from verirl.train.rm import rm_command

    return rm_command(args.config, args.overrides, resume=args.resume, overwrite=args.overwrite)


def _curate(args: argparse.Namespace) -> int:
    from verirl.curate import curate_command

    return curate_command(args)


def _demo(args: argparse.Namespace) -> int:
    if args.compare:  # GRPO, PPO, online DPO, RFT, DPO side by side (verirl/compare.py)
        if args.task != "math":
            raise UserError("demo: --compare runs on the math task; drop --task")
        from verirl.compare import main as compare_main

        return compare_main(args.out or "runs/compare")
    from verirl.demo import run_task

    return run_task(args.task, args.out)


def _eval(args: argparse.Namespace) -> int:
    from verirl.evals.cli import eval_command

    return eval_command(args)


def _audit(args: argparse.Namespace) -> int:
    from verirl.audit.cli import audit_command

    return audit_command(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="verirl",
        description="Reinforcement learning from verifiable rewards for reasoning LMs.",
    )
    p.add_argument("--version", action="version", version=f"verirl {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    envs = sub.add_parser("envs", help="list and inspect environments")
    envs_sub = envs.add_subparsers(dest="envs_command", required=True, metavar="ACTION")
    el = envs_sub.add_parser("list", help="registered environments")
    el.add_argument("--json", action="store_true", help="machine-readable output")
    el.set_defaults(func=_envs_list)
    es = envs_sub.add_parser("show", help="fields a row needs and a sample prompt")
    es.add_argument("name")
    es.set_defaults(func=_envs_show)

    sc = sub.add_parser("score", help="score completions in a JSONL file")
    sc.add_argument("env", help="environment name (see `verirl envs list`)")
    sc.add_argument(
        "--input", required=True, help="JSONL rows with `completion` and the env's fields"
    )
    sc.add_argument(
        "--output", required=True, help="JSONL output: input rows + reward/status/detail"
    )
    sc.add_argument("--sandbox", choices=["docker", "process", "auto"], help="code envs only")
    sc.add_argument("--workers", type=positive_int, default=None, help="concurrent checks (>= 1)")
    sc.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    sc.add_argument("--option", action="append", metavar="KEY=VALUE", help="environment option")
    sc.add_argument("--quiet", action="store_true", help="no progress bar")
    sc.set_defaults(func=_score)

    sb = sub.add_parser("sandbox", help="build the sandbox image, check the engine")
    sb.add_argument("action", choices=["build", "doctor"])
    sb.add_argument("--force", action="store_true", help="rebuild the image even if up to date")
    sb.set_defaults(func=_sandbox)

    for name, func, what in (
        ("sft", _sft, "supervised warm start"),
        ("train", _train, "RL training (GRPO/PPO)"),
        ("dpo", _dpo, "preference optimisation on chosen/rejected pairs (DPO, IPO)"),
        ("rm", _rm, "Bradley-Terry reward model on chosen/rejected pairs (not a verifier)"),
    ):
        resumable = name in ("train", "dpo", "rm")
        t = sub.add_parser(name, help=what)
        t.add_argument(
            "config",
            nargs="?" if resumable else None,
            help="YAML config file" + (" (not needed with --resume)" if resumable else ""),
        )
        t.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides")
        t.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
        if resumable:
            t.add_argument(
                "--resume",
                metavar="RUN_DIR",
                help="continue a run from its last checkpoint, with its own config",
            )
        t.set_defaults(func=func)

    from verirl.curate import add_parser as add_curate_parser  # no torch at import

    add_curate_parser(sub, _curate)

    de = sub.add_parser("demo", help="the built-in tiny end-to-end job (what `make demo` runs)")
    de.add_argument(
        "--out",
        help="output directory, runs/demo or runs/compare (re-runs replace only their own files)",
    )
    de.add_argument(
        "--compare", action="store_true",
        help="compare GRPO, PPO, online DPO, RFT and DPO from the demo's SFT base",
    )  # fmt: skip
    de.add_argument(
        "--task", choices=("math", "tools"), default="math",
        help="math: addition (runs/demo); tools: learn to call a sandboxed Python tool "
        "(runs/demo-tools; needs Docker)",
    )  # fmt: skip
    de.set_defaults(func=_demo)

    ev = sub.add_parser("eval", help="pass@k suites; or score samples made elsewhere")
    ev.add_argument("suite", nargs="?", help="suite name or YAML file (see evals/suites)")
    ev.add_argument("--model", action="append", default=[], help="model path or id (repeatable)")
    ev.add_argument("--samples", help="JSONL completions to score instead of sampling")
    ev.add_argument("--env", help="environment for --samples")
    ev.add_argument("--out", help="output directory")
    ev.add_argument("--backend", choices=["hf", "vllm"], help="rollout engine (default: suite's)")
    ev.add_argument("--ks", help="k values for pass@k and maj@k, e.g. 1,4,16 (same as ks=[1,4,16])")
    ev.add_argument(
        "--overwrite", action="store_true", help="replace an --out holding another evaluation"
    )
    ev.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE", help="suite overrides")
    ev.set_defaults(func=_eval)

    au = sub.add_parser("audit", help="probe an environment's reward for hacks before training")
    au.add_argument("env", help="environment name, or file.py:Class / module:Class")
    au.add_argument("--rows", type=int, default=50, help="audit the first N rows (default 50)")
    au.add_argument("--split", default="train", help="dataset split (default train)")
    au.add_argument("--option", action="append", metavar="KEY=VALUE", help="environment option")
    au.add_argument("--sandbox", choices=["docker", "process", "auto"], help="code envs only")
    au.add_argument("--workers", type=int, default=None, help="concurrent checks")
    au.add_argument("--gold", metavar="FIELD", help="row field with the gold (default answer)")
    au.add_argument("--out", metavar="DIR", help="write audit.json and report.md here")
    au.add_argument("--exhaustive", action="store_true", help="every candidate on every row")
    au.add_argument("--quiet", action="store_true", help="no progress bar")
    au.set_defaults(func=_audit)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # Overrides (key=value) may follow options too: `verirl eval SUITE --model X n=8`.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
