"""Errors a user can fix. The CLI prints them in one line and exits with their code (2).

Messages name the file, key or field and what to do. Rows and lines count from 1 everywhere
(``rows.jsonl:3``, ``row 3``), as editors and ``sed -n 3p`` do."""

from __future__ import annotations


class UserError(Exception):
    """Bad input: a file, row, field, key or value the user can correct. Exit code 2."""

    exit_code = 2


class ConfigError(UserError):
    """A config file or override that does not validate; the message names the file and key."""


class DataError(UserError):
    """A dataset row that cannot be used; the message names the file, row and field."""


class Interrupted(UserError):
    """SIGINT/SIGTERM stopped a run at a step boundary, after writing a checkpoint there; the
    message says how to continue. Exit code 130, as for any shell command stopped by Ctrl-C."""

    exit_code = 130
