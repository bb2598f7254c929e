"""Entry points of ``verirl sft CONFIG`` and ``verirl train CONFIG | --resume RUN_DIR``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from verirl.config import deep_merge, load_config, parse_overrides, read_yaml, validate_config
from verirl.errors import ConfigError
from verirl.train.config import SftConfig, TrainConfig

# Keys that say where a run lives, not what it computes: a CONFIG given with --resume may differ.
WHERE = ("name", "run_dir")


def _name_given(overrides: list[str]) -> bool:
    """A run name chosen on the command line is kept as is (an existing one is an error);
    any other name moves aside to a timestamped one (see ``verirl.rundir``)."""
    return any(o.split("=", 1)[0] == "name" for o in overrides)


def sft_command(config: str, overrides: list[str], overwrite: bool = False) -> int:
    from verirl.train.sft import sft

    cfg = load_config(SftConfig, config, overrides)
    run_dir = sft(cfg, overwrite=overwrite, unique=not _name_given(overrides))
    print(f"sft done: wrote {run_dir} (model in {run_dir / 'final'})")
    return 0


def split_config_arg(config: str | None, overrides: list[str]) -> tuple[str | None, list[str]]:
    """``verirl train --resume RUN train.steps=300``: argparse hands the first override to
    CONFIG; give it back.

    >>> split_config_arg("train.steps=300", ["log.progress=false"])
    (None, ['train.steps=300', 'log.progress=false'])
    """
    if config is not None and "=" in config and not Path(config).is_file():
        return None, [config, *overrides]
    return config, overrides


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(a: TrainConfig, b: TrainConfig) -> list[str]:
    """``key: a_value != b_value`` for each dotted key (but name/run_dir) where they differ."""
    fa, fb = _flat(a.model_dump(mode="json")), _flat(b.model_dump(mode="json"))
    keys = sorted(k for k in fa.keys() | fb.keys() if k not in WHERE and fa.get(k) != fb.get(k))
    return [f"{k}: {fa.get(k)!r} != {fb.get(k)!r}" for k in keys]


def train_command(
    config: str | None,
    overrides: list[str],
    resume: str | None = None,
    overwrite: bool = False,
) -> int:
    """With --resume, the run's own resolved config.yaml is used, with `overrides` on top (e.g.
    ``train.steps=300`` to extend a finished run); a CONFIG given too must match it."""
    from verirl.train.loop import train

    config, overrides = split_config_arg(config, overrides)
    if resume is None:
        if config is None:
            raise ConfigError("verirl train: give a CONFIG file, or --resume RUN_DIR")
        cfg = load_config(TrainConfig, config, overrides)
        out = train(cfg, overwrite=overwrite, unique=not _name_given(overrides))
        print(f"train done: wrote {out} (model in {out / 'final'})")
        return 0
    if overwrite:
        raise ConfigError(
            "--overwrite starts a run over and --resume continues one: give one of them"
        )
    run_dir = Path(resume)
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise ConfigError(f"--resume {resume}: no config.yaml there; not a run directory")
    data = deep_merge(read_yaml(saved), parse_overrides(overrides))
    cfg = validate_config(TrainConfig, data, str(saved))
    if config is not None:
        diff = config_differences(load_config(TrainConfig, config, overrides), cfg)
        if diff:
            more = f" (and {len(diff) - 3} more)" if len(diff) > 3 else ""
            raise ConfigError(
                f"{config} differs from {saved}: {'; '.join(diff[:3])}{more}. Resume with the "
                f"run's own config (`verirl train --resume {resume}`, key=value to change a "
                "setting), or start a new run from CONFIG without --resume"
            )
    if overrides:
        print(f"resume overrides: {', '.join(overrides)}")
    out = train(cfg, resume_dir=run_dir)
    print(f"train done: wrote {out} (model in {out / 'final'})")
    return 0
