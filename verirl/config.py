"""Typed configs: YAML files plus ``key=value`` dotted overrides, validated by pydantic.

Every command has one config model (a ``StrictModel``), every field documented where it is
declared. Unknown keys, wrong types and missing files raise ConfigError naming the file and the
dotted key; the CLI turns that into one line on stderr and exit code 2.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from verirl.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=[x, y]"]`` into a nested dict; values are parsed as YAML.

    >>> parse_overrides(["train.lr=1e-4", "env.name=arithmetic", "algo.clip=[0.2, 0.28]"])
    {'train': {'lr': '1e-4'}, 'env': {'name': 'arithmetic'}, 'algo': {'clip': [0.2, 0.28]}}
    """
    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r}: expected key=value, e.g. train.lr=1e-4")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({e})") from None
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is set to a value above")
            node = child
        node[parts[-1]] = value
    return out


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping, got {type(data).__name__}")
    return data


def load_config(
    model: type[M], path: str | os.PathLike[str] | None, overrides: list[str] | None = None
) -> M:
    """Read `path` (if given), apply overrides, validate into `model`."""
    source = str(path) if path is not None else "<defaults>"
    data = read_yaml(path) if path is not None else {}
    data = deep_merge(data, parse_overrides(overrides or []))
    return validate_config(model, data, source)


def validate_config(model: type[M], data: dict[str, Any], source: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{source}: {format_validation_error(e)}") from None


def format_validation_error(e: ValidationError) -> str:
    msgs = []
    for err in e.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            msgs.append(f"unknown key {key!r}")
        elif err["type"] == "missing":
            msgs.append(f"missing key {key!r}")
        else:
            msgs.append(f"key {key!r}: {err['msg']} (got {err.get('input')!r})")
    return "; ".join(msgs)


def dump_config(config: BaseModel) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def write_resolved_config(config: BaseModel, run_dir: str | os.PathLike[str]) -> Path:
    """Write the fully resolved config (defaults included) as ``config.yaml`` in the run dir."""
    p = Path(run_dir) / "config.yaml"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(dump_config(config), encoding="utf-8")
    return p
