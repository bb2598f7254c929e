"""``verirl demo``: the main job on the built-in tiny default.

Until the trainer lands this runs the largest real job that exists: generate procedural
arithmetic problems and score reference and corrupted completions through `verirl score`.
"""

from __future__ import annotations

import json
from pathlib import Path

from verirl.envs.registry import make_env
from verirl.jsonl import write_jsonl
from verirl.scoring import score_file


def main(out_dir: str = "runs/demo") -> int:
    out = Path(out_dir)
    env = make_env("arithmetic", test_size=200)
    rows = []
    for i, row in enumerate(env.rows("test")):
        answer = int(row["answer"]) + (0 if i % 2 == 0 else 1)
        rows.append({**row, "completion": str(answer)})
    write_jsonl(out / "completions.jsonl", rows)
    counts = score_file("arithmetic", out / "completions.jsonl", out / "scored.jsonl")
    summary = {"rows": len(rows), "statuses": dict(counts)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return 0
