"""A clean install prints no warning flood: the wheel builds without setuptools' warnings
(`project.license` as a table, data folders missing from `packages`) and carries its data."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_builds_without_warnings_and_ships_its_data(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
         str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    log = r.stdout + r.stderr
    assert "Warning" not in log and "deprecated" not in log, log[-3000:]
    (wheel,) = tmp_path.glob("verirl-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for data in ("verirl/evals/suites/arithmetic.yaml", "verirl/sandboxes/image/manifest.txt",
                 "verirl/configs/demo_grpo.yaml"):  # fmt: skip
        assert data in names
    meta = next(n for n in names if n.endswith("METADATA"))
    assert "License-Expression: Apache-2.0" in zipfile.ZipFile(wheel).read(meta).decode()
