"""``verirl demo --compare`` end to end at a tiny size: every method trains from the same base
on the same sampling budget, and summary.json has the contract's shape (ARCHITECTURE.md:
``{"base": {pass@1, pass@16}, "methods": {grpo, ppo, online_dpo, rft, dpo: {pass@1, pass@16,
seconds}}}``). The full run's numbers are in the README."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from verirl.compare import METHODS, main


@pytest.mark.slow
def test_compare_runs_every_method_and_writes_the_summary(tmp_path: Path) -> None:
    out = tmp_path / "compare"
    envs = "envs=[{name: arithmetic, split: test, size: 6, options: {max_operand: 30, test_size: 200}}]"
    # 200 SFT steps: a base that is right sometimes, so best-of-K has rows to keep
    rc = main(str(out), steps=1, sft_steps=2, sft_overrides=["train.steps=200", "log.progress=false"],
              eval_overrides=[envs, "n=16", "ks=[1, 16]", "problems_per_call=6"])  # fmt: skip
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    assert set(s["base"]) == {"pass@1", "pass@16"}
    assert list(s["methods"]) == list(METHODS)
    for m, r in s["methods"].items():
        assert set(r) == {"pass@1", "pass@16", "seconds"}, m
        assert 0.0 <= r["pass@1"] <= r["pass@16"] <= 1.0 and r["seconds"] > 0
        assert (out / m / "final" / "config.json").is_file(), m
    assert s["samples_per_method"] == 128 and s["curate"]["k"] * s["curate"]["prompts"] == 128
    assert s["curate"]["kept"] > 0 and s["eval_problems"] == 6
    assert (out / "compare.png").stat().st_size > 0 and "| dpo |" in (out / "report.md").read_text()
