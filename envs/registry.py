"""Environment registry: the ``@register_env`` decorator and the ``verirl.envs`` entry points.

A separate pip package adds an environment by declaring, in its pyproject.toml::

    [project.entry-points."verirl.envs"]
    my_env = "my_pkg.envs:MyEnv"      # an Environment subclass, or a module that registers some

An environment can also be named by where it lives, wherever a name is taken (``env.name`` in a
config, ``verirl score``, ``verirl eval --env``, ``verirl envs show``):

    my_envs.py:Echo            # a Python file (relative to the current directory, or to the
                               # config file that names it) and a class in it
    my_package.envs:Echo       # an importable module and a class (the current directory is
                               # searched too, as ``python -m`` does)

Nothing here imports torch: ``verirl envs list`` stays fast.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import sys
import warnings
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, TypeVar

from verirl.envs.base import Environment

from verirl.errors import ConfigError

ENTRY_POINT_GROUP = "verirl.envs"

# Modules of built-in environments, imported on first lookup (not at package import).
BUILTIN_MODULES: tuple[str, ...] = (
    "verirl.envs.arithmetic",
    "verirl.envs.math_envs",
    "verirl.envs.code_envs",
    "verirl.envs.reward_model_env",
    "verirl.envs.python_tool",
    "verirl.envs.code_feedback",
    "verirl.envs.games",
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


def env_options(cls: type[Environment]) -> list[tuple[str, str, str]]:
    """(name, type, default) of each constructor option, for ``verirl envs show``.

    >>> from verirl.envs.arithmetic import ArithmeticEnv
    >>> env_options(ArithmeticEnv)[:2]
    [('seed', 'int', '0'), ('train_size', 'int', '2000')]
    """
    out = []
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        ann = p.annotation
        kind = (
            ""
            if ann is p.empty
            else ann
            if isinstance(ann, str)
            else getattr(ann, "__name__", str(ann))
        )
        default = "(required)" if p.default is p.empty else repr(p.default)
        out.append((p.name, str(kind), default))
    return out


def env_source(name: str) -> str:
    _load()
    return _SOURCES.get(name, "?")


def get_env_class(name: str) -> type[Environment]:
    """A registered name, or ``file.py:Class`` / ``module:Class`` (see the module docstring)."""
    if ":" in name:
        return load_env_class(name)
    envs = available_envs()
    if name not in envs:
        near = difflib.get_close_matches(name, list(envs), n=1, cutoff=0.6)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise ConfigError(
            f"unknown environment {name!r}; {hint}registered: {', '.join(envs) or 'none'}; "
            "one in a file of yours: my_envs.py:ClassName (or my_package.module:ClassName)"
        )
    return envs[name]


def load_env_class(spec: str) -> type[Environment]:
    """The Environment subclass named by ``path/to/file.py:Class`` or ``pkg.module:Class``."""
    where, _, attr = spec.rpartition(":")
    if not where or not attr:
        raise ConfigError(f"environment {spec!r}: expected file.py:ClassName or module:ClassName")
    module = _import_file(spec, where) if where.endswith(".py") else _import_module(spec, where)
    obj = getattr(module, attr, None)
    if obj is None:
        found = sorted(
            n
            for n, v in vars(module).items()
            if inspect.isclass(v)
            and issubclass(v, Environment)
            and v is not Environment
            and v.__module__ == module.__name__
        )
        raise ConfigError(
            f"environment {spec!r}: {where} has no {attr!r}; its environments: "
            f"{', '.join(found) or 'none'}"
        )
    if not (inspect.isclass(obj) and issubclass(obj, Environment)):
        raise ConfigError(f"environment {spec!r}: {attr} is not an Environment subclass")
    env_cls: type[Environment] = obj
    if not env_cls.name:
        raise ConfigError(f"environment {spec!r}: {attr} has no `name`")
    _SOURCES[env_cls.name] = spec
    return env_cls


def _import_file(spec: str, file: str) -> Any:
    path = Path(file).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"environment {spec!r}: no such file {file}")
    # One module per file (by its absolute path), so a file named twice is imported once.
    mod_name = f"verirl_user_env_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    loader_spec = importlib.util.spec_from_file_location(mod_name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise ConfigError(f"environment {spec!r}: cannot import {file}")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[mod_name] = module
    try:
        loader_spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[mod_name]
        raise ConfigError(
            f"environment {spec!r}: {file} failed to import: {_where(e, path)}"
        ) from None
    return module


def _import_module(spec: str, name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        top = name.split(".")[0]
        if e.name != top or str(Path.cwd()) in sys.path:
            raise ConfigError(f"environment {spec!r}: {e}") from None
    sys.path.append(str(Path.cwd()))  # as `python -m` would find it
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        raise ConfigError(
            f"environment {spec!r}: {e} (searched the installed packages and {Path.cwd()})"
        ) from None
    except Exception as e:
        raise ConfigError(f"environment {spec!r}: {name} failed to import: {e!r}") from None


def _where(e: BaseException, path: Path) -> str:
    """``NameError: name 'x' is not defined (line 12)``: the exception and its line in `path`."""
    import traceback

    line = next((f.lineno for f in reversed(traceback.extract_tb(e.__traceback__))
                 if Path(f.filename).resolve() == path), getattr(e, "lineno", None))  # fmt: skip
    return f"{type(e).__name__}: {e}" + (f" (line {line})" if line else "")


def make_env(name: str, **options: Any) -> Environment:
    """Instantiate an environment; unknown or mistyped options name the option."""
    cls = get_env_class(name)
    params = inspect.signature(cls.__init__).parameters
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    if not takes_kwargs:
        allowed = [p for p in params if p != "self"]
        for key in options:
            if key not in allowed:
                near = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
                hint = f"did you mean {near[0]!r}? " if near else ""
                raise ConfigError(
                    f"environment {name!r} has no option {key!r}; {hint}"
                    f"options: {', '.join(allowed) or 'none'}"
                )
    try:
        return cls(**options)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"environment {name!r}: {e}") from None
