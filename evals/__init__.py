"""pass@k evaluation suites (``verirl eval``).

Python API (imported lazily, so ``import verirl.evals`` stays cheap)::

    from verirl.evals import evaluate_models, load_suite, pass_at_k
    suite = load_suite("arithmetic", ["n=64", "ks=[1, 8, 64]"])
    summary = evaluate_models(suite, {"base": "runs/demo/sft", "grpo": "runs/demo/grpo"},
                              "runs/demo/eval")
    summary["models"]["grpo"]["pass@1"]
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
    "score_samples": "verirl.evals.samples",
    "write_report": "verirl.evals.report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'verirl.evals' has no attribute {name!r}")
