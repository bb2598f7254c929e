"""Resume exactness: stop a `verirl train` subprocess (SIGKILL after its first checkpoint, or
SIGINT/SIGTERM anywhere: a checkpoint at the next step boundary), resume it with
`verirl train --resume RUN` (no config: the run's own), and check metrics.jsonl equals an
unbroken run's at every step."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
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


def _config(tiny_model_dir: Path, tmp_path: Path, name: str, save_every: int = 2) -> Path:
    cfg = vr_train_envs.train_config(
        tiny_model_dir,
        tmp_path,
        name=name,
        env={"name": "test-ascii-fraction", "options": {"delay": 0.01}},
        algo={"batch_size": 16, "group_size": 4, "beta": 0.05, "reference": "ema"},
        train={"steps": 8, "lr": 2e-2, "save_every": save_every, "threads": 1,
               "micro_batch_size": 8},
    )  # fmt: skip
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def strip(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.fixture(scope="module")
def unbroken(tiny_model_dir, tmp_path_factory) -> list[dict]:
    """metrics.jsonl of the run that nothing stops, to compare the resumed ones with."""
    tmp = tmp_path_factory.mktemp("unbroken")
    run = _cli("train", str(_config(tiny_model_dir, tmp, "unbroken")))
    assert run.wait(timeout=300) == 0, run.stderr.read().decode()  # type: ignore[union-attr]
    rows = read_metrics(tmp / "unbroken")
    assert len({r["reward_mean"] for r in rows}) > 1  # the compared numbers do move
    return strip(rows)


def test_sigkilled_run_resumes_exactly(tiny_model_dir, tmp_path, unbroken):
    killed = _cli("train", str(_config(tiny_model_dir, tmp_path, "killed")))
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
    resumed = _cli("train", "--resume", str(tmp_path / "killed"))
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()  # type: ignore[union-attr]
    got = read_metrics(tmp_path / "killed")
    assert [r["step"] for r in got] == list(range(1, 9))
    assert strip(got) == unbroken


def test_sigterm_asks_for_the_same_stop_as_ctrl_c_and_a_second_ctrl_c_aborts():
    from verirl.train.loop import _StopRequest

    for signum in (signal.SIGTERM, signal.SIGINT):
        stop = _StopRequest()
        try:
            os.kill(os.getpid(), signum)
            assert stop.signum == signum  # the loop stops at the step boundary
            if signum == signal.SIGINT:
                with pytest.raises(KeyboardInterrupt):
                    os.kill(os.getpid(), signal.SIGINT)
        finally:
            stop.restore()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_interrupted_run_checkpoints_at_the_step_boundary_and_resumes_exactly(
    tiny_model_dir, tmp_path, unbroken
):
    signum = signal.SIGINT  # Ctrl-C; SIGTERM sets the same flag (test above)
    run_dir = tmp_path / "stopped"
    # save_every 0: the only checkpoint before the end is the one the signal asks for
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, "train", str(_config(tiny_model_dir, tmp_path, "stopped", 0))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        assert proc.poll() is None, proc.stderr.read().decode()  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signum)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err.decode()
    done = len(read_metrics(run_dir))
    assert 2 <= done < 8  # stopped mid-way, at a step boundary
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == [f"step-{done}"]
    assert not (run_dir / "final").exists()
    assert f"continue with: verirl train --resume {run_dir}" in err.decode()
    resumed = subprocess.run([sys.executable, "-c", LAUNCH, "train", "--resume", str(run_dir)],
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {run_dir} from step {done}" in resumed.stdout
    assert strip(read_metrics(run_dir)) == unbroken
