"""Environment registry: the ``@register_env`` decorator and the ``verirl.envs`` entry points.

A separate pip package adds an environment by declaring, in its pyproject.toml::

    [project.entry-points."verirl.envs"]
    my_env = "my_pkg.envs:MyEnv"      # an Environment subclass, or a module that registers some

Nothing here imports torch: ``verirl envs list`` stays fast.
"""

from __future__ import annotations

import importlib
import inspect
import warnings
from importlib.metadata import entry_points
from typing import Any, TypeVar

from verirl.envs.base import Environment

from verirl.errors import ConfigError

ENTRY_POINT_GROUP = "verirl.envs"

# Modules of built-in environments, imported on first lookup (not at package import).
BUILTIN_MODULES: tuple[str, ...] = (
    "verirl.envs.arithmetic",
    "verirl.envs.math_envs",
    "verirl.envs.code_envs",
)

_REGISTRY: dict[str, type[Environment]] = {}
_SOURCES: dict[str, str] = {}
_loaded = False

E = TypeVar("E", bound=Environment)


def register_env(cls: type[E]) -> type[E]:
    """Class decorator: make an Environment available by its ``name``.

    >>> from verirl.envs.base import Environment
    >>> @register_env
    ... class Echo(Environment):
    ...     name = "doctest-echo"
    ...     def rows(self, split="train"): return [{"x": "hi"}]
    ...     def prompt(self, row): return row["x"]
    ...     def score(self, completion, row): ...
    >>> "doctest-echo" in available_envs()
    True
    """
    if not (inspect.isclass(cls) and issubclass(cls, Environment)):
        raise TypeError(f"@register_env expects an Environment subclass, got {cls!r}")
    _add(cls)
    return cls


def _add(cls: type[Environment]) -> None:
    if not cls.name:
        raise TypeError(f"{cls.__qualname__} has no `name`")
    prev = _REGISTRY.get(cls.name)
    if prev is not None and prev is not cls and prev.__qualname__ != cls.__qualname__:
        raise ValueError(
            f"environment name {cls.name!r} is taken by {_SOURCES.get(cls.name, prev.__module__)}"
        )
    _REGISTRY[cls.name] = cls
    _SOURCES[cls.name] = cls.__module__


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in BUILTIN_MODULES:
        importlib.import_module(mod)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as e:  # a broken plugin must not take the CLI down
            warnings.warn(f"verirl.envs entry point {ep.name!r} failed to load: {e}", stacklevel=2)
            continue
        if inspect.isclass(obj) and issubclass(obj, Environment):
            env_cls: type[Environment] = obj
            _add(env_cls)
            _SOURCES[env_cls.name] = f"{ep.value} (entry point {ep.name!r})"


def available_envs() -> dict[str, type[Environment]]:
    """All registered environments, built-in and from entry points, by name."""
    _load()
    return dict(sorted(_REGISTRY.items()))


def env_source(name: str) -> str:
    _load()
    return _SOURCES.get(name, "?")


def get_env_class(name: str) -> type[Environment]:
    envs = available_envs()
    if name not in envs:
        raise ConfigError(f"unknown environment {name!r}; registered: {', '.join(envs) or 'none'}")
    return envs[name]


def make_env(name: str, **options: Any) -> Environment:
    """Instantiate an environment; unknown or mistyped options name the option."""
    cls = get_env_class(name)
    params = inspect.signature(cls.__init__).parameters
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    if not takes_kwargs:
        allowed = [p for p in params if p != "self"]
        for key in options:
            if key not in allowed:
                raise ConfigError(
                    f"environment {name!r} has no option {key!r}; options: {', '.join(allowed) or 'none'}"
                )
    try:
        return cls(**options)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"environment {name!r}: {e}") from None
