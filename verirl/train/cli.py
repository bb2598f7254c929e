"""Entry points of ``verirl sft CONFIG`` and ``verirl train CONFIG [--resume RUN_DIR]``."""

from __future__ import annotations

from pathlib import Path

from verirl.config import deep_merge, load_config, parse_overrides, read_yaml, validate_config
from verirl.errors import ConfigError
from verirl.train.config import SftConfig, TrainConfig


def sft_command(config: str, overrides: list[str]) -> int:
    from verirl.train.sft import sft

    cfg = load_config(SftConfig, config, overrides)
    run_dir = sft(cfg)
    print(f"sft done: {run_dir}/final")
    return 0


def train_command(config: str | None, overrides: list[str], resume: str | None = None) -> int:
    """With --resume, the run's own resolved config.yaml is used (CONFIG is ignored) with
    `overrides` on top, e.g. ``train.steps=200`` to extend a finished run."""
    from verirl.train.loop import train

    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"--resume {resume}: no config.yaml there; not a run directory")
        data = deep_merge(read_yaml(run_dir / "config.yaml"), parse_overrides(overrides))
        cfg = validate_config(TrainConfig, data, str(run_dir / "config.yaml"))
        out = train(cfg, resume_dir=run_dir)
    else:
        cfg = load_config(TrainConfig, config, overrides)
        out = train(cfg)
    print(f"train done: {out}")
    return 0
