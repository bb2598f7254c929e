"""The one JSON-lines reader and writer: every ``.jsonl`` the project writes (scored rows,
metrics, samples, curated data, eval results) goes through ``jsonl_line``, written whole and
atomically (``write_jsonl``) or appended a row at a time and flushed (``append_jsonl``), and is
read back by ``read_jsonl``, whose errors name the file and line."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from verirl.errors import DataError


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read every row; a missing file or a bad line raises DataError naming it."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    rows: list[dict[str, Any]] = []
    with p.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{p}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{p}:{lineno}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


@contextmanager
def atomic_writer(path: str | os.PathLike[str]) -> Iterator[TextIO]:
    """Write to a temporary file beside `path` and rename it into place only on success,
    so an error or Ctrl-C never leaves a half-written output."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
        # mkstemp creates 0600; give the output the mode an ordinary open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def jsonl_line(row: dict[str, Any]) -> str:
    """One output line, UTF-8 as is. A row that UTF-8 cannot hold as is (a lone surrogate in a
    completion) is written with JSON escapes instead, which read back as the same string: one
    odd row never costs the file.

    >>> jsonl_line({"c": "\\udc80", "d": "é"}), jsonl_line({"d": "é"})
    ('{"c": "\\\\udc80", "d": "\\\\u00e9"}\\n', '{"d": "é"}\\n')
    """
    text = json.dumps(row, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(row)
    return text + "\n"


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> None:
    """Write every row (``atomic_writer``: the file appears whole or not at all)."""
    with atomic_writer(path) as f:
        f.writelines(jsonl_line(row) for row in rows)


def append_jsonl(
    path: str | os.PathLike[str], rows: Iterable[dict[str, Any]], fsync: bool = False
) -> None:
    """Append rows to `path` (created with its folder if missing) and flush, so a killed
    process keeps every row it appended; `fsync` also survives a crash of the machine."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("a", encoding="utf-8") as f:
        f.writelines(jsonl_line(row) for row in rows)
        f.flush()
        if fsync:
            os.fsync(f.fileno())
