"""Errors a user can fix. The CLI prints them in one line and exits with their code (2)."""

from __future__ import annotations


class UserError(Exception):
    """Bad input: a file, row, field, key or value the user can correct. Exit code 2."""

    exit_code = 2


class ConfigError(UserError):
    """A config file or override that does not validate; the message names the file and key."""


class DataError(UserError):
    """A dataset row that cannot be used; the message names the file, row and field."""
