"""Environments: a dataset, a prompt per row, a verifiable score per completion.

Installed as ``verirl.envs``. Register one with ``@register_env`` or the ``verirl.envs``
entry-point group; list them with ``verirl envs list``.
"""

from verirl.envs.base import Environment, Prompt, Row
from verirl.envs.registry import available_envs, get_env_class, make_env, register_env

__all__ = [
    "Environment",
    "Prompt",
    "Row",
    "available_envs",
    "get_env_class",
    "make_env",
    "register_env",
]
