"""Load the conformance corpus (``tests/data/math_corpus/*.jsonl``): other graders' labelled
cases, one file per source (origins and licences in that folder's README.md).

Shared by ``tests/test_math_corpus.py`` and ``benchmarks/math_vs_mathverify.py`` so that both
score exactly the same rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from verirl.errors import DataError


def answer_completion(answer: str) -> str:
    """The completion that states a bare answer: ``\\boxed{A }`` (the space keeps a trailing
    backslash, as in NeMo-Skills' ``185\\``, from escaping the closing brace).

    >>> answer_completion("1/2")
    '\\\\boxed{1/2 }'
    """
    return "\\boxed{" + answer + " }"


def load_corpus(folder: str | Path) -> list[dict[str, Any]]:
    """Every row of every source file, with ``source`` (the file stem) and ``completion`` set;
    a malformed row is a `DataError` naming its file and line."""
    rows: list[dict[str, Any]] = []
    files = sorted(Path(folder).glob("*.jsonl"))
    if not files:
        raise DataError(f"{folder}: no corpus files (*.jsonl)")
    for path in files:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {n}: not JSON ({e.msg})") from None
            missing = [k for k in ("gold", "expected") if k not in row]
            if missing or ("answer" in row) == ("completion" in row):
                raise DataError(
                    f"{path}: line {n}: needs gold, expected and exactly one of answer/completion"
                )
            text = row["completion"] if "completion" in row else answer_completion(row["answer"])
            rows.append({**row, "source": path.stem, "completion": text})
    return rows
