"""verirl.jsonl: the one JSONL writer (whole and atomic, or appended and flushed) and reader,
and the metrics logger on top of it (a resumed run's metrics read as one unbroken run)."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest

import verirl.jsonl
from verirl.errors import DataError
from verirl.jsonl import append_jsonl, atomic_writer, read_jsonl, write_jsonl


def test_write_append_read_round_trip_keeps_odd_strings(tmp_path: Path) -> None:
    rows = [{"text": "é ✓"}, {"text": "\udc80 lone surrogate"}, {"n": 1, "x": None}]
    write_jsonl(tmp_path / "a" / "rows.jsonl", rows[:2])
    append_jsonl(tmp_path / "a" / "rows.jsonl", rows[2:], fsync=True)
    append_jsonl(tmp_path / "new" / "more.jsonl", rows)  # creates the folder and the file
    assert read_jsonl(tmp_path / "a" / "rows.jsonl") == rows
    assert read_jsonl(tmp_path / "new" / "more.jsonl") == rows
    assert "é ✓" in (tmp_path / "a" / "rows.jsonl").read_text(encoding="utf-8")  # not escaped


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, [{"old": 1}])

    def rows() -> object:
        yield {"new": 1}
        raise RuntimeError("stopped mid-write")

    with pytest.raises(RuntimeError):
        write_jsonl(path, rows())  # type: ignore[arg-type]
    assert read_jsonl(path) == [{"old": 1}]
    assert [p.name for p in tmp_path.iterdir()] == ["rows.jsonl"]
    with pytest.raises(ValueError), atomic_writer(tmp_path / "other.jsonl"):
        raise ValueError
    assert not (tmp_path / "other.jsonl").exists()


def test_bad_lines_name_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n\n[1]\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:3: expected a JSON object, got list"):
        read_jsonl(tmp_path / "bad.jsonl")


def test_metrics_logger_resume_drops_the_killed_processes_rows(tmp_path: Path) -> None:
    from verirl.train.metrics import MetricsLogger, read_metrics

    log = MetricsLogger(tmp_path, tensorboard=False)
    assert read_metrics(tmp_path) == []  # the run's metrics file exists from the start
    for step in (1, 2, 3):
        log.log({"step": step, "loss": 1.0 / step})
    log.samples(3, [{"text": "a"}, {"text": "b"}])
    log.close()  # the process "dies" after step 3; its checkpoint is at step 2
    log = MetricsLogger(tmp_path, tensorboard=False, keep_upto=2)
    log.log({"step": 3, "loss": 0.25})
    log.close()
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5},
                                      {"step": 3, "loss": 0.25}]  # fmt: skip
    assert read_jsonl(tmp_path / "samples.jsonl") == [{"step": 3, "text": "a"},
                                                      {"step": 3, "text": "b"}]  # fmt: skip


def test_doctests() -> None:
    assert doctest.testmod(verirl.jsonl).failed == 0
