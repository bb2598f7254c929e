"""`verirl demo` end to end at a tenth of its size: SFT, GRPO, the pass@k suite, the report.

The full demo (what `make demo` runs) takes about a minute and a half; its numbers are in the
README. This checks that every stage runs and writes what the README says it writes."""

from __future__ import annotations

import json
from pathlib import Path

from verirl.demo import main


def test_demo_runs_every_stage_and_writes_its_outputs(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    (out / "beta").mkdir(parents=True)  # a run of the user's under runs/demo: it must survive
    (out / "beta" / "config.yaml").write_text("name: beta\n")
    rc = main(
        str(out),
        sft_overrides=["train.steps=30"],
        grpo_overrides=["train.steps=3", "train.save_every=0", "log.progress=false"],
        eval_overrides=[
            "envs=[{name: arithmetic, split: test, size: 12}]",
            "n=4",
            "ks=[1, 2, 4]",
            "problems_per_call=12",
        ],
    )
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval_problems"] == 12 and summary["eval_samples_per_problem"] == 4
    for who in ("base", "trained"):
        curve = summary[f"pass@k_{who}"]
        assert list(curve) == ["1", "2", "4"]
        assert 0.0 <= curve["1"] <= curve["2"] <= curve["4"] <= 1.0  # pass@k never falls with k
        for k in (1, 2, 4):
            assert summary[f"pass@{k}_{who}"] == curve[str(k)]
    ev = json.loads((out / "eval" / "summary.json").read_text())
    assert set(ev["models"]) == {"base", "grpo"}
    assert ev["models"]["grpo"]["pass@1"] == summary["pass@1_trained"]
    for f in ("eval/passk.png", "eval/report.md", "eval/results.jsonl", "grpo/grpo_curves.png"):
        assert (out / f).stat().st_size > 0, f
    report = (out / "report.md").read_text()
    assert "| GRPO |" in report and "eval/passk.png" in report and "pass@4" in report
    assert (out / "beta" / "config.yaml").read_text() == "name: beta\n"
    steps = (out / "grpo" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in steps] == [1, 2, 3]
