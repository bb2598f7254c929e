"""Resume exactness: SIGKILL a `verirl train` subprocess after its first checkpoint, resume it
with --resume, and check metrics.jsonl equals an unbroken run's at every step."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import vr_train_envs
import yaml

from verirl.train.metrics import read_metrics

TESTS = Path(__file__).resolve().parent
# The toy env lives in the tests folder: register it, then run the real CLI.
LAUNCH = (
    f"import sys; sys.path.insert(0, {str(TESTS)!r}); import vr_train_envs; "
    "from verirl.cli import main; sys.exit(main(sys.argv[1:]))"
)
TIMING = {"step_seconds", "gen_seconds", "sync_seconds", "tokens_per_s"}


def _cli(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", LAUNCH, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def _config(tiny_model_dir: Path, tmp_path: Path, name: str) -> Path:
    cfg = vr_train_envs.train_config(
        tiny_model_dir,
        tmp_path,
        name=name,
        env={"name": "test-ascii-fraction", "options": {"delay": 0.01}},
        algo={"batch_size": 16, "group_size": 4, "beta": 0.05, "reference": "ema"},
        train={"steps": 8, "lr": 2e-2, "save_every": 2, "threads": 1, "micro_batch_size": 8},
    )
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_sigkilled_run_resumes_exactly(tiny_model_dir, tmp_path):
    killed = _cli("train", str(_config(tiny_model_dir, tmp_path, "killed")))
    unbroken = _cli("train", str(_config(tiny_model_dir, tmp_path, "unbroken")))
    first_ckpt = tmp_path / "killed" / "checkpoints" / "step-2"
    deadline = time.monotonic() + 300
    while not first_ckpt.exists():
        assert killed.poll() is None, killed.stderr.read().decode() if killed.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(killed.pid, signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    partial = read_metrics(tmp_path / "killed")
    assert len(partial) < 8  # it really died mid-way
    resumed = _cli("train", "unused.yaml", "--resume", str(tmp_path / "killed"))
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()  # type: ignore[union-attr]
    assert unbroken.wait(timeout=300) == 0, unbroken.stderr.read().decode()  # type: ignore[union-attr]
    got = read_metrics(tmp_path / "killed")
    want = read_metrics(tmp_path / "unbroken")
    assert [r["step"] for r in got] == list(range(1, 9))

    def strip(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]

    assert strip(got) == strip(want)
    assert len({r["reward_mean"] for r in want}) > 1  # the compared numbers do move
