"""The ``verirl audit`` subcommand: exit 0 when the reward behaved, 1 on any finding (so it
can gate CI), 2 on bad usage (unknown env, bad option), with a one-line message."""

from __future__ import annotations

import argparse

from verirl.audit.report import print_report, write_report
from verirl.audit.runner import audit_env
from verirl.config import parse_overrides
from verirl.envs.registry import make_env
from verirl.errors import ConfigError


def audit_command(args: argparse.Namespace) -> int:
    """Audit ``args.env`` (a registered name or whatever the registry resolves)."""
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    options = parse_overrides(args.option or [])
    if args.sandbox:
        options["sandbox"] = args.sandbox
    with make_env(args.env, **options) as env:
        report = audit_env(
            env,
            rows=args.rows,
            split=args.split,
            workers=args.workers,
            progress=not args.quiet,
            gold_field=args.gold,
            exhaustive=args.exhaustive,
        )
    print_report(report)
    if args.out:
        paths = write_report(report, args.out)
        print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0 if report.ok else 1
