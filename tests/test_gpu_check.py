"""benchmarks/gpu_check.py stays runnable: its CPU smoke mode runs every check and passes.

The real run (``--device cuda``) needs a GPU; this exercises the same code paths on a tiny
model so the script cannot rot between GPU sessions.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
CHECKS = ("install", "logprobs", "forward", "grpo-bf16", "lora", "resume", "memory")


@pytest.mark.slow
def test_gpu_check_smoke_on_cpu_passes_every_check(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--smoke",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)  # fmt: skip
    lines = [x for x in proc.stdout.splitlines() if x.startswith("CHECK ")]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [x.split()[1] for x in lines] == list(CHECKS)
    assert all(x.split()[2] == "PASS" for x in lines), lines
    assert proc.stdout.rstrip().endswith("SUMMARY all checks passed")


def test_gpu_check_refuses_a_missing_gpu_with_a_failed_check():
    """On a machine without CUDA the default run says so in one line and exits 1."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 1
    assert "CHECK install   PASS" in proc.stdout and "CHECK device    FAIL" in proc.stdout
