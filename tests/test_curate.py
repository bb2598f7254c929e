"""``verirl curate``: best-of-K rows are verified-correct, deduplicated and capped; ``verirl sft``
and ``verirl dpo`` read what it writes; rounds of sample → filter → SFT raise the pass rate;
bad input exits 2 with nothing written."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import yaml
from verirl.envs.registry import make_env

from verirl.cli import main
from verirl.curate import keep_correct
from verirl.jsonl import read_jsonl

ENV_OPTIONS = {"max_operand": 5, "train_size": 60}
OPTION_ARGS = [x for k, v in ENV_OPTIONS.items() for x in ("--option", f"{k}={v}")]
LOG = {"progress": False, "tensorboard": False}


@pytest.fixture(scope="module")
def warm(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    """The tiny model after a short SFT on imperfect arithmetic targets (the demo's recipe,
    40 % right): it samples a right sum a few times in 8, so best-of-K has rows to keep."""
    from verirl.config import validate_config
    from verirl.demo import write_sft_data
    from verirl.train.config import SftConfig
    from verirl.train.sft import sft

    root = tmp_path_factory.mktemp("curate")
    data = write_sft_data(make_env("arithmetic", **ENV_OPTIONS), root / "sft.jsonl", 0.4)
    base = {"model": {"path": str(tiny_model_dir)}, "env": {"name": "arithmetic"},
            "train": {"steps": 40, "batch_size": 16, "lr": 3e-3, "threads": 1}, "log": LOG}  # fmt: skip
    cfg = validate_config(SftConfig, {**base, "name": "warm", "run_dir": str(root / "runs"),
                                      "data": {"path": str(data)}}, "test")  # fmt: skip
    sft_yaml = root / "rft.yaml"  # the RFT step's config: from the same tiny base
    sft_yaml.write_text(yaml.safe_dump({**base, "name": "rft", "run_dir": str(root / "runs")}))
    return {"model": sft(cfg) / "final", "sft_yaml": sft_yaml}


@pytest.mark.parametrize(
    ("texts", "statuses", "cap", "shortest", "want"),
    [
        (["7", "7 ", "8", "7\n"], ["correct", "correct", "incorrect", "correct"], None, False, [0]),
        (["7", "8"], ["incorrect", "format_error"], None, False, []),
        (["777", "7", "77"], ["correct"] * 3, None, True, [1, 2, 0]),
        (["777", "7", "77"], ["correct"] * 3, 2, False, [0, 1]),
        (["7", "x"], ["correct", "infra_error"], None, False, [0]),  # infra errors never kept
    ],
)
def test_keep_correct(texts, statuses, cap, shortest, want):
    assert keep_correct(texts, statuses, cap, shortest) == want


def test_curate_rows_are_verified_and_feed_sft_and_dpo(warm, tmp_path):
    out, pairs = tmp_path / "rft.jsonl", tmp_path / "pairs.jsonl"
    args = ["curate", "arithmetic", "--model", str(warm["model"]), "--k", "8", "--out", str(out),
            "--rows", "24", "--max-per-prompt", "2", "--max-new-tokens", "4",
            "--pairs-out", str(pairs), *OPTION_ARGS]  # fmt: skip
    assert main(args) == 0
    rows = read_jsonl(out)
    env = make_env("arithmetic", **ENV_OPTIONS)
    by_id = {r["id"]: r for r in env.rows("train")}
    assert rows and all(env.score(r["completion"], by_id[r["id"]]).ok for r in rows)
    assert max(Counter(r["id"] for r in rows).values()) <= 2
    assert len({(r["id"], r["completion"].strip()) for r in rows}) == len(rows)  # no repeats
    assert all(r["prompt"] == env.prompt(by_id[r["id"]]) for r in rows)
    summary = json.loads((tmp_path / "rft.summary.json").read_text())["rounds"][0]
    assert summary["kept"] == len(rows) and summary["samples"] == 24 * 8
    pair_rows = read_jsonl(pairs)
    assert pair_rows and summary["pairs"] + summary["groups_without_pair"] == 24
    assert all(p["chosen_reward"] > p["rejected_reward"] for p in pair_rows)
    # the files are what `verirl sft` and `verirl dpo` read
    sft_cfg = yaml.safe_load(warm["sft_yaml"].read_text())
    sft_cfg |= {"run_dir": str(tmp_path / "runs"), "data": {"path": str(out)},
                "train": {**sft_cfg["train"], "steps": 2}}  # fmt: skip
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(sft_cfg))
    assert main(["sft", str(tmp_path / "sft.yaml")]) == 0
    dpo_cfg = {"run_dir": str(tmp_path / "runs"), "model": {"path": str(warm["model"])},
               "data": {"path": str(pairs)}, "train": {"steps": 2, "batch_size": 4}, "log": LOG}  # fmt: skip
    (tmp_path / "dpo.yaml").write_text(yaml.safe_dump(dpo_cfg))
    assert main(["dpo", str(tmp_path / "dpo.yaml")]) == 0


def test_rounds_of_rejection_sampling_raise_the_pass_rate(warm, tmp_path):
    out = tmp_path / "ei.jsonl"
    args = ["curate", "arithmetic", "--model", str(warm["model"]), "--k", "8", "--out", str(out),
            "--rows", "24", "--max-new-tokens", "4", "--rounds", "2", "--sft",
            str(warm["sft_yaml"]), "--sft-set", f"run_dir={tmp_path / 'runs'}",
            "--shortest-first", *OPTION_ARGS]  # fmt: skip
    assert main(args) == 0
    summary = json.loads((tmp_path / "ei.summary.json").read_text())
    first, second = summary["rounds"]
    assert second["model"] == first["sft_model"]  # round 2 samples from round 1's model
    assert second["pass_rate"] > first["pass_rate"] + 0.05
    assert (tmp_path / "ei.round1.jsonl").is_file() and (tmp_path / "ei.round2.jsonl").is_file()
    assert Path(summary["final_model"], "config.json").is_file()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--rounds", "2"], "--rounds > 1 needs --sft"),
        (["--k", "0"], "must be >= 1"),
        (["--option", "ops=/"], "ops must be a string"),
        (["--out", "/nonexistent-dir/x.jsonl"], "does not exist"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tiny_model_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "x.jsonl"
    args = ["curate", "arithmetic", "--model", str(tiny_model_dir), "--k", "2", "--out",
            str(out), "--rows", "2", *extra]  # fmt: skip
    assert _exit_code(args) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_overwrite(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "x.jsonl"
    out.write_text("keep me\n")
    args = ["curate", "arithmetic", "--model", str(tiny_model_dir), "--k", "2", "--out", str(out)]
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_text() == "keep me\n"


def _exit_code(args: list[str]) -> int:
    """main's return value, or argparse's exit code (it exits 2 on a bad argument)."""
    try:
        return main(args)
    except SystemExit as e:
        return int(e.code or 0)
