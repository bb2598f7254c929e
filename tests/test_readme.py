"""The README's walk-through, run in order on a fresh run root, so it cannot drift from the code.

Every ``verirl`` and ``echo`` line of the README's bash blocks runs as written, in README order,
in an empty folder holding a copy of ``configs/``, after a tiny ``make demo`` (the demo at a
fraction of its budget). Budgets shrink through appended ``key=value`` overrides only
(`BUDGET`); lines that need Docker, vLLM, a GPU, torchrun or a file the README only names
(`SKIP`) are left out, and the test lists what it ran. The README's list of run-directory files
is checked against a real run."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from verirl.cli import main

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")

# Lines that need what this test does not set up (an engine, a GPU, several processes).
# The tools demo and its models need Docker; tests/test_demo_tools.py runs the demo reduced.
SKIP = ("humaneval", "vllm", "cuda", "torchrun", "sandbox ", "my_math.yaml", "cfg.yaml",
        "--task tools", "demo-tools")  # fmt: skip
TRAIN_BUDGET = ["train.steps=2", "train.save_every=1", "algo.batch_size=16", "log.samples_every=1"]
BUDGET = {
    "sft": ["train.steps=2", "train.batch_size=4"],
    "train": TRAIN_BUDGET,
    "resume": ["train.steps=3"],
    "eval": ["n=2", "ks=[1, 2]", "envs=[{name: arithmetic, split: test, size: 4}]"],
}


def readme_commands() -> list[str]:
    """The ``verirl`` / ``echo`` lines of the README's bash blocks, in order."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.replace("\\\n", " ").splitlines():  # join continued lines
            line = line.strip()
            if line.startswith(("verirl ", "echo ")) and not any(s in line for s in SKIP):
                out.append(line)
    return out


def echo_env_snippet() -> str:
    """The Python block of "Registering your own", which the README says to save as
    echo_env.py."""
    section = README.split("### Registering your own", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


def budget_for(argv: list[str]) -> list[str]:
    if argv[0] == "train":
        return BUDGET["resume"] if "--resume" in argv else BUDGET["train"]
    if argv[0] == "eval" and "--samples" not in argv:
        return BUDGET["eval"]
    return BUDGET.get(argv[0], [])


def run_dir_files() -> list[str]:
    """Names the README promises in a run directory (``A run directory holds ...``)."""
    para = README.split("A run directory holds", 1)[1].split("\n\n", 1)[0]
    return [n for n in re.findall(r"`([^`]+)`", para) if "." in n or n.endswith("/")]


@pytest.mark.slow
def test_readme_walk_through_runs_in_order(tmp_path, monkeypatch, capsys):
    from verirl.demo import main as demo

    shutil.copytree(REPO / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VERIRL_PROGRESS", "plain")
    # `make demo`, small: the models and data the README's later commands start from
    assert demo(
        "runs/demo",
        sft_overrides=["train.steps=20"],
        grpo_overrides=["train.steps=2", "train.save_every=0"],
        eval_overrides=BUDGET["eval"],
    ) == 0  # fmt: skip
    (tmp_path / "echo_env.py").write_text(echo_env_snippet())
    commands = readme_commands()
    assert len(commands) >= 12, commands
    ran: list[str] = []
    checked = False
    for line in commands:
        if line.startswith("echo "):
            subprocess.run(["bash", "-c", line], check=True, cwd=tmp_path)
            continue
        argv = shlex.split(line, comments=True)[1:]
        capsys.readouterr()
        rc = main([*argv, *budget_for(argv)])
        captured = capsys.readouterr()
        assert rc == 0, f"README line failed: {line}\n{captured.out[-2000:]}\n{captured.err}"
        ran.append(argv[0] if argv[0] != "envs" else f"envs {argv[1]}")
        progress = {"sft": "sft step 2/2 (100%)  loss ", "train": "train step ",
                    "eval": "eval base (n=2) problem 4/4 (100%)"}.get(argv[0])  # fmt: skip
        assert progress is None or progress in captured.out, (line, captured.out[-1500:])
        if argv[0] == "train" and not checked:  # the first training run
            check_run_dir(tmp_path / "runs" / "train" / "demo")
            checked = True
    # what the walk-through covers
    for needed in ("envs list", "envs show", "score", "sft", "train", "eval"):
        assert needed in ran, (needed, ran)
    assert (tmp_path / "runs" / "sft" / "demo" / "final").is_dir()
    assert len(list((tmp_path / "runs" / "train").glob("demo-*"))) == 1  # PPO moved aside
    steps = (tmp_path / "runs" / "train" / "demo" / "metrics.jsonl").read_text().splitlines()
    assert len(steps) == 3  # resumed from 2 to 3
    assert (tmp_path / "runs" / "eval" / "arithmetic" / "summary.json").is_file()
    assert (tmp_path / "runs" / "demo" / "summary.json").is_file()  # nothing clobbered the demo


def check_run_dir(run: Path) -> None:
    names = run_dir_files()
    assert "config.yaml" in names and "final/" in names, names
    for name in names:
        pattern = name.replace("<name>", run.name).replace("step-N", "step-*").rstrip("/")
        assert list(run.glob(pattern)), f"README promises {name} in {run}; it has " + ", ".join(
            sorted(p.name for p in run.iterdir())
        )
