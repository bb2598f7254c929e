"""The math reward on other people's labelled cases (`tests/data/math_corpus/`, one file per
source grader's test suite), with agreement reported per source.

The floor is what this checker reaches today; the rows where it disagrees are listed (and
explained in the corpus README): SkyRL's strict scorer labels 0.5 wrong for 1/2,
hendrycks/math's string comparison calls a reordered list of solutions different, and NeMo-Skills
accepts ``C. x = 42`` for a bare ``C`` (text a bare-letter gold cannot vouch for).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest
from verirl.rewards.math_corpus import load_corpus
from verirl.rewards.math_pool import CheckerPool
from verirl.rewards.math_reward import math_reward_batch

from verirl.errors import DataError

CORPUS = Path(__file__).parent / "data" / "math_corpus"
# (source, completion) pairs where verirl disagrees with the source's label on purpose
DELIBERATE = {
    ("skyrl", r"Answer: \boxed{0.5}"),  # 0.5 = 1/2; SkyRL's AIME scorer is a string match
    ("hendrycks_math", r"\boxed{10, 4, -2 }"),  # a list of solutions has no order
    ("hendrycks_math", r"\boxed{0.1, 4, 2 }"),
    # a bare-letter gold cannot vouch for text after the letter ("(B) 3" states two answers)
    ("nemo_skills", r"\boxed{C. x = 42 }"),
}


@pytest.fixture(scope="module")
def scored():
    rows = load_corpus(CORPUS)
    with CheckerPool(workers=2, timeout_s=5.0) as pool:
        results = math_reward_batch(
            [r["completion"] for r in rows], [r["gold"] for r in rows], pool
        )
    return rows, results


def test_corpus_is_large_and_cites_every_source():
    rows = load_corpus(CORPUS)
    sources = {r["source"] for r in rows}
    assert len(rows) >= 150 and len(sources) >= 8
    readme = (CORPUS / "README.md").read_text()
    assert all(f"`{s}.jsonl`" in readme for s in sources)
    assert 0.2 < sum(r["expected"] for r in rows) / len(rows) < 0.9  # both labels appear


def test_agreement_per_source(scored, capsys):
    rows, results = scored
    per: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    wrong = []
    for row, res in zip(rows, results, strict=True):
        per[row["source"]][0] += 1
        if res.ok == row["expected"]:
            per[row["source"]][1] += 1
        else:
            wrong.append((row["source"], row["completion"]))
    with capsys.disabled():
        for source, (n, agree) in sorted(per.items()):
            print(f"\n  corpus {source:24s} {agree:3d}/{n:3d} = {agree / n:.3f}", end="")
        total = sum(a for _, a in per.values()) / len(rows)
        print(f"\n  corpus overall {total:.3f} ({len(rows)} rows)")
    assert set(wrong) == DELIBERATE, set(wrong) ^ DELIBERATE
    assert total >= 0.975  # 171/175: the four deliberate rows above
    assert all(agree / n >= 0.8 for n, agree in per.values())


def test_a_malformed_corpus_row_names_its_file_and_line(tmp_path):
    (tmp_path / "x.jsonl").write_text(
        '{"answer": "1", "gold": "1", "expected": true}\n{"gold": "1"}\n'
    )
    with pytest.raises(DataError, match=r"x\.jsonl: line 2"):
        load_corpus(tmp_path)
