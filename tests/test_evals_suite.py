"""End-to-end pass@k suites on tiny models: outputs, cache, resume, config errors, prompts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from verirl.evals import run_suite, runner
from verirl.evals.suite import builtin_suites, load_suite

from verirl.cli import main

DATA = Path(__file__).parent / "data"
SUITE = DATA / "evals_tiny_suite.yaml"


def _sft_copy(base_dir: Path, out_dir: Path, steps: int) -> Path:
    """Teach the tiny model every sum a+b (a, b < 6) by teacher forcing: a model that is
    clearly better than the random one, so the suite has something to measure."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    tok = AutoTokenizer.from_pretrained(base_dir)
    pairs = [(f"{a}+{b}=", f"{a + b}") for a in range(6) for b in range(6)]
    seqs = [tok(p + t)["input_ids"] + [tok.eos_token_id] for p, t in pairs]
    width = max(map(len, seqs))
    ids = torch.tensor([s + [tok.pad_token_id] * (width - len(s)) for s in seqs])
    labels = ids.clone()
    for i, (p, _) in enumerate(pairs):
        labels[i, : len(tok(p)["input_ids"])] = -100  # loss on the answer only
        labels[i, len(seqs[i]) :] = -100
    attn = (torch.arange(width)[None] < torch.tensor([len(s) for s in seqs])[:, None]).long()
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def _models(base: Path, sft: Path) -> list[str]:
    return ["--model", f"base={base}", "--model", f"sft={sft}"]


@pytest.fixture(scope="module")
def sft_model_dir(tiny_model_dir, tmp_path_factory):
    return _sft_copy(tiny_model_dir, tmp_path_factory.mktemp("sft"), steps=60)


@pytest.fixture(scope="module")
def suite_run(tiny_model_dir, sft_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    rc = main(["eval", str(SUITE), "--out", str(out), *_models(tiny_model_dir, sft_model_dir)])
    assert rc == 0
    return out


def test_suite_writes_results_summary_plot_report(suite_run):
    summary = json.loads((suite_run / "summary.json").read_text())
    assert list(summary["models"]) == ["base", "sft"]
    assert summary["problems"] == 12
    for name, m in summary["models"].items():
        vals = [m[f"pass@{k}"] for k in (1, 2, 4, 8)]
        assert all(0.0 <= v <= 1.0 for v in vals), name
        assert np.all(np.diff(vals) >= -1e-12), f"{name}: pass@k must not fall with k"
        for k in (1, 2, 4, 8):
            lo, hi = m["ci"][f"pass@{k}"]
            assert lo - 1e-12 <= m[f"pass@{k}"] <= hi + 1e-12
        assert m["n"] == 8 and m["infra_errors"] == 0
        assert sum(m["statuses"].values()) == 12 * 8
        assert set(m["per_env"]) == {"arithmetic"}
    # The trained copy solves sums the random model cannot.
    assert summary["models"]["sft"]["pass@1"] > summary["models"]["base"]["pass@1"] + 0.2
    assert len(summary["crossovers"]) == 1

    rows = [json.loads(x) for x in (suite_run / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 12
    for r in rows:
        assert r["n"] == 8 and 0 <= r["c"] <= 8
        assert r["pass@8"] == (1.0 if r["c"] else 0.0)
    sft_rows = [r for r in rows if r["model"] == "sft"]
    assert np.mean([r["pass@1"] for r in sft_rows]) == pytest.approx(
        summary["models"]["sft"]["pass@1"]
    )

    report = (suite_run / "report.md").read_text()
    assert "| model | problems | pass@1 | pass@2 | pass@4 | pass@8 |" in report
    assert "## Where the curves cross" in report and "### arithmetic" in report
    assert summary["crossovers"][0]["text"] in report


def test_plot_is_a_non_empty_png(suite_run):
    import matplotlib.image as mpimg

    png = suite_run / "passk.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(png)
    assert img.shape[0] > 200 and img.shape[1] > 200
    # Something was drawn: many distinct colours (curves, bands, text), not a blank canvas.
    colours = np.unique((img[..., :3] * 255).astype(int).reshape(-1, 3), axis=0)
    assert len(colours) > 20


def test_rerun_is_served_from_cache(suite_run, tiny_model_dir, sft_model_dir, monkeypatch):
    before = (suite_run / "results.jsonl").read_text()

    def no_sampling(*a, **k):
        raise AssertionError("a finished suite must not sample again")

    monkeypatch.setattr(runner, "open_engine", no_sampling)
    rc = main(
        ["eval", str(SUITE), "--out", str(suite_run), *_models(tiny_model_dir, sft_model_dir)]
    )
    assert rc == 0
    assert (suite_run / "results.jsonl").read_text() == before


def _kill_after(cache: Path, keep: int) -> list[str]:
    """Cut a finished cache to `keep` records plus a torn half-line, as a kill leaves it."""
    lines = cache.read_text().splitlines(keepends=True)
    cache.write_text("".join(lines[:keep]) + lines[keep][: len(lines[keep]) // 2])
    return lines


def test_interrupted_suite_resumes_with_identical_samples(suite_run, sft_model_dir, tmp_path):
    src = next((suite_run / "cache").glob("sft-*.jsonl"))
    cache = tmp_path / "cache" / src.name
    cache.parent.mkdir()
    cache.write_bytes(src.read_bytes())
    lines = _kill_after(cache, 5)
    suite = load_suite(SUITE)
    summary = runner.evaluate_models(suite, {"sft": sft_model_dir}, tmp_path, progress=False)
    resumed = cache.read_text().splitlines(keepends=True)
    assert len(resumed) == 12
    # Problems sampled after the resume got the same seeds, hence the same completions.
    assert sorted(resumed) == sorted(lines)
    first = json.loads((suite_run / "summary.json").read_text())["models"]["sft"]
    assert summary["models"]["sft"]["pass@1"] == pytest.approx(first["pass@1"])


def test_chunked_sampling_resumes_whole_chunks(sft_model_dir, tmp_path):
    # 5 problems per generate call: chunks {0-4}, {5-9}, {10, 11}. A kill after 7 records leaves
    # chunk 2 half done; the resume samples it whole again and reproduces it exactly.
    suite = load_suite(SUITE, ["problems_per_call=5"])
    assert suite.sampling_hash() != load_suite(SUITE).sampling_hash()
    runner.evaluate_models(suite, {"sft": sft_model_dir}, tmp_path, progress=False)
    (cache,) = (tmp_path / "cache").glob("sft-*.jsonl")
    lines = _kill_after(cache, 7)
    run_suite(SUITE, {"sft": sft_model_dir}, tmp_path, ["problems_per_call=5"], progress=False)
    resumed = cache.read_text().splitlines(keepends=True)
    assert resumed[:5] == lines[:5]
    assert len(resumed) == 14  # 5 kept + 2 kept (stale duplicates, last one wins) + 7 resampled
    recs = runner.read_cache(cache)
    assert sorted(json.dumps(r, sort_keys=True) for r in recs.values()) == sorted(
        json.dumps(json.loads(x), sort_keys=True) for x in lines
    )


def test_changing_ks_reuses_the_cache_but_changing_n_does_not(suite_run):
    a, b = load_suite(SUITE), load_suite(SUITE, ["ks=[1, 8]", "bootstrap.samples=50"])
    assert a.sampling_hash() == b.sampling_hash()
    assert a.sampling_hash() != load_suite(SUITE, ["n=16"]).sampling_hash()
    assert a.sampling_hash() != load_suite(SUITE, ["sampling.temperature=0.5"]).sampling_hash()


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["ks=[1, 16]"], "ks [16] exceed n=8"),
        (["bogus=1"], "unknown key 'bogus'"),
        (["sampling.top_q=0.5"], "unknown key 'sampling.top_q'"),
        (["n=0"], "'n'"),
        (["vllm={gpu_mem: 0.5}"], "vllm: unknown key 'gpu_mem'"),
    ],
)
def test_bad_suite_exits_2_naming_the_key(extra, needle, tiny_model_dir, tmp_path, capsys):
    rc = main(["eval", str(SUITE), *extra, "--model", str(tiny_model_dir), "--out", str(tmp_path)])
    assert rc == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "summary.json").exists() and not (tmp_path / "suite.yaml").exists()


def test_cli_usage_errors_exit_2(tiny_model_dir, tmp_path, capsys):
    assert main(["eval", "no-such-suite", "--model", str(tiny_model_dir)]) == 2
    assert "built-in: " in capsys.readouterr().err
    assert main(["eval", str(SUITE)]) == 2
    assert "--model" in capsys.readouterr().err
    assert (
        main(["eval", str(SUITE), "--model", str(tmp_path / "missing"), "--out", str(tmp_path)])
        == 2
    )
    assert "could not be loaded" in capsys.readouterr().err
    too_big = str(SUITE), "envs=[{name: arithmetic, size: 50, options: {test_size: 12}}]"
    assert main(["eval", *too_big, "--model", str(tiny_model_dir), "--out", str(tmp_path)]) == 2
    assert "has 12 rows but the suite asks for size=50" in capsys.readouterr().err


def test_builtin_suites_validate():
    names = builtin_suites()
    assert {"arithmetic", "humaneval", "math"} <= set(names)
    for name in names:
        suite = load_suite(name)
        assert max(suite.ks) <= suite.n


def test_relative_paths_in_a_suite_file_resolve_against_its_folder(tmp_path, monkeypatch):
    """A copied suite keeps working from any directory: `data` and an env named by file resolve
    against the suite file's folder; overrides on the command line stay cwd-relative."""
    (tmp_path / "suites").mkdir()
    (tmp_path / "suites" / "my.yaml").write_text(
        "envs:\n  - name: my_envs.py:Echo\n    options: {data: rows.jsonl, task: keep}\n"
    )
    monkeypatch.chdir(tmp_path)
    suite = load_suite(tmp_path / "suites" / "my.yaml")
    env = suite.envs[0]
    assert env.name == f"{tmp_path / 'suites' / 'my_envs.py'}:Echo"
    assert env.options == {"data": str(tmp_path / "suites" / "rows.jsonl"), "task": "keep"}
    over = load_suite(
        tmp_path / "suites" / "my.yaml", ["envs=[{name: arithmetic, options: {data: x.jsonl}}]"]
    )
    assert over.envs[0].options["data"] == "x.jsonl"  # as typed: the user's cwd


def test_chat_prompts_use_the_template_when_there_is_one(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    msgs = [{"role": "user", "content": "What is 2+3?"}]
    assert runner.render_prompt(msgs, tok, "auto") == "What is 2+3?"
    assert runner.render_prompt("2+3=", tok, "auto") == "2+3="
    tok.chat_template = (
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    assert runner.render_prompt(msgs, tok, "auto") == "<user>What is 2+3?<assistant>"
    assert runner.render_prompt(msgs, tok, "never") == "What is 2+3?"
    assert runner.render_prompt("2+3=", tok, "always") == "<user>2+3=<assistant>"


def test_peft_adapter_directory_is_merged_and_sampled(tiny_model_dir, suite_run, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    lora.save_pretrained(tmp_path / "adapter")  # LoRA B starts at zero: merged == base
    run_suite(SUITE, {"base": tmp_path / "adapter"}, tmp_path / "out", progress=False)

    def texts(cache_dir: Path) -> list[list[str]]:
        (cache,) = cache_dir.glob("base-*.jsonl")
        return [[x["text"] for x in json.loads(line)["samples"]] for line in cache.open()]

    # Same weights and seeds, so the very same completions as the plain base model.
    assert texts(tmp_path / "out" / "cache") == texts(suite_run / "cache")
