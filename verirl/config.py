"""Typed configs: YAML files plus ``key=value`` dotted overrides, validated by pydantic.

Every command has one config model (a ``StrictModel``), every field documented where it is
declared. Unknown keys, wrong types and missing files raise ConfigError naming the file and the
dotted key; the CLI turns that into one line on stderr and exit code 2.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from verirl.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated.

    ``path_keys`` (on a command's top-level config) are the dotted keys holding file paths. A
    relative path read from a config *file* means relative to that file's directory, so a config
    copied elsewhere with its data keeps working; on the command line it means relative to the
    current directory, as in any shell command. A key ending in ``.*`` covers every option of that
    mapping named like a path (``data``, ``path``, ``file``, ``*_path``, ``*_file``, ``*_dir``).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)
    path_keys: ClassVar[tuple[str, ...]] = ()


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
    """Read `path` (if given), resolve its relative paths against its directory, apply the
    overrides (relative to the current directory), validate into `model`."""
    source = str(path) if path is not None else "<defaults>"
    data = read_yaml(path) if path is not None else {}
    if path is not None:
        data = resolve_paths(data, getattr(model, "path_keys", ()), Path(path).resolve().parent)
    data = deep_merge(data, parse_overrides(overrides or []))
    return validate_config(model, data, source)


_PATH_OPTION = re.compile(r"^(data|path|file)$|_(path|file|dir)$")
# A hub id: `name` or `owner/name` (letters, digits, - _ .), never `./x` or `a/b/c`.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def looks_like_hub_id(value: str) -> bool:
    """True for ``Qwen/Qwen2.5-0.5B`` or ``gpt2``; False for ``runs/x/final`` or ``./model``.

    >>> [looks_like_hub_id(v) for v in ("Qwen/Qwen2.5-0.5B", "gpt2", "runs/demo/sft/final", "./m")]
    [True, True, False, False]
    """
    return bool(_HUB_ID.match(value)) and ".." not in value


def resolve_paths(data: dict[str, Any], keys: tuple[str, ...], base: Path) -> dict[str, Any]:
    """A copy of `data` with the relative paths at `keys` made absolute against `base`.

    A value that may be a hub id (``model.path``) or an environment by name (``env.name``) is
    resolved only when it names something that exists under `base`, or cannot be an id.

    >>> resolve_paths({"data": {"path": "d.jsonl"}, "run_dir": "/abs"}, ("data.path", "run_dir"),
    ...               Path("/cfg"))
    {'data': {'path': '/cfg/d.jsonl'}, 'run_dir': '/abs'}
    """
    out = deep_merge(data, {})
    for key in keys:
        *parents, last = key.split(".")
        node: Any = out
        for part in parents:
            child = node.get(part) if isinstance(node, dict) else None
            if not isinstance(child, dict):
                break
            node[part] = child = dict(child)
            node = child
        else:
            if not isinstance(node, dict):
                continue
            names = [k for k in node if _PATH_OPTION.search(str(k))] if last == "*" else [last]
            for name in names:
                if isinstance(node.get(name), str):
                    node[name] = _resolve_one(key, node[name], base)
    return out


def _resolve_one(key: str, value: str, base: Path) -> str:
    if not value or Path(value).expanduser().is_absolute() or value.startswith("~"):
        return value
    if key == "env.name":  # `my_envs.py:Echo` is a file; `echo` / `pkg.mod:Echo` are names
        file, sep, cls = value.partition(":")
        if sep and file.endswith(".py"):
            return f"{(base / file).resolve()}:{cls}"
        return value
    candidate = base / value
    if key == "model.path" and looks_like_hub_id(value) and not candidate.exists():
        return value
    return str(candidate.resolve())


def validate_config(model: type[M], data: dict[str, Any], source: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{source}: {format_validation_error(e, model)}") from None


def format_validation_error(e: ValidationError, model: type[BaseModel] | None = None) -> str:
    """One line per problem, each naming the dotted key; an unknown key gets a "did you mean"
    from the section's own keys, and a bad value is shown short (never a whole section)."""
    msgs = []
    for err in e.errors():
        loc = [str(p) for p in err["loc"]]
        key = ".".join(loc) or "<root>"
        if err["type"] == "extra_forbidden":
            known = _keys_at(model, loc[:-1]) if model is not None else []
            near = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.6)
            hint = f"; did you mean {'.'.join([*loc[:-1], near[0]])!r}?" if near else ""
            msgs.append(f"unknown key {key!r}{hint}")
        elif err["type"] == "missing":
            msgs.append(f"missing key {key!r}")
        else:
            msg = str(err["msg"]).removeprefix("Value error, ")
            msgs.append(f"key {key!r}: {msg} (got {short_repr(err.get('input'))})")
    return "; ".join(msgs)


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr`` cut to `limit` characters; a mapping is named by its keys, not dumped.

    >>> short_repr({"lr": 1, "steps": 2})
    'a mapping with keys lr, steps'
    >>> short_repr("x" * 100)[-5:]
    'xx...'
    """
    if isinstance(value, dict):
        return f"a mapping with keys {', '.join(map(str, value)) or '(none)'}"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _keys_at(model: type[BaseModel], loc: list[str]) -> list[str]:
    """The field names of the config section at `loc` (``["algo"]`` -> AlgoSection's)."""
    import typing

    current: Any = model
    for part in loc:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        subs = [a for a in (*typing.get_args(ann), ann) if isinstance(a, type)]
        current = next((a for a in subs if issubclass(a, BaseModel)), None)
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def dump_config(config: BaseModel) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def write_resolved_config(config: BaseModel, run_dir: str | os.PathLike[str]) -> Path:
    """Write the fully resolved config (defaults included) as ``config.yaml`` in the run dir."""
    p = Path(run_dir) / "config.yaml"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(dump_config(config), encoding="utf-8")
    return p
