"""pass@k evaluation suites (``verirl eval``).

Python API (imported lazily, so ``import verirl.evals`` stays cheap)::

    from verirl.evals import run_suite
    summary = run_suite("arithmetic", {"base": "runs/demo/sft/final", "grpo": "runs/demo/grpo/final"},
                        "runs/demo/eval", overrides=["n=64", "ks=[1, 8, 64]"])
    summary["models"]["grpo"]["pass@1"]      # also results.jsonl, passk.png, report.md

``evaluate_models(load_suite(...), models, out_dir)`` does the same from a loaded suite;
``write_report(records, out_dir, ks)`` writes the outputs for counts made elsewhere.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "pass_at_k": "verirl.evals.passk",
    "pass_at_k_array": "verirl.evals.passk",
    "pass_at_k_curve": "verirl.evals.passk",
    "bootstrap_ci": "verirl.evals.passk",
    "SuiteConfig": "verirl.evals.suite",
    "load_suite": "verirl.evals.suite",
    "evaluate_models": "verirl.evals.runner",
    "run_suite": "verirl.evals.runner",
    "score_samples": "verirl.evals.samples",
    "write_report": "verirl.evals.report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'verirl.evals' has no attribute {name!r}")
