"""`verirl demo --task tools`: the demonstrations, their SFT layout against the RL driver's, and
the whole pipeline at a fraction of its size with real tool calls in the Docker sandbox.

The full demo (its numbers are in the README) is not run here."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from verirl.envs.registry import make_env

from verirl.cli import main as cli
from verirl.config import validate_config
from verirl.demo_tools import main, tool_demo, write_tool_demos
from verirl.errors import DataError
from verirl.rollout.base import Completion, RolloutEngine, SamplingParams
from verirl.tiny import build_tokenizer
from verirl.train.config import SftConfig
from verirl.train.sft import encode_turns, load_examples

ENV_OPTIONS = {"tasks": "mul", "prompt_style": "text", "prompt_template": "{question}\n",
               "train_size": 200, "test_size": 20, "sandbox": "docker"}  # fmt: skip


def test_demos_are_deterministic_right_when_they_call_the_tool_and_wrong_otherwise(tmp_path):
    env = make_env("python_tool", **ENV_OPTIONS)
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    counts = write_tool_demos(env, a, p_tool=0.4, seed=1)
    assert counts == write_tool_demos(env, b, p_tool=0.4, seed=1)
    assert a.read_text() == b.read_text()
    rows = [json.loads(x) for x in a.read_text().splitlines()]
    assert counts["demos"] == len(rows) == 200 and 60 <= counts["tool_demos"] <= 100
    for demo, row in zip(rows, env.rows("train"), strict=True):
        assert demo["prompt"] == env.prompt(row)
        turns = demo["messages"]
        final = env.score(turns[-1]["content"], row)
        if len(turns) == 3:  # tool call, the tool's output, the copy: right
            call = turns[0]["content"]
            assert call.startswith("<python>print(") and call.endswith(")</python>")
            assert turns[1] == {"role": "tool", "content": row["answer"]}
            assert final.reward == 1.0
        else:  # from the head: a near miss, never the answer
            assert len(turns) == 1 and final.status == "incorrect"
    with pytest.raises(ValueError, match="no 'a \\* b'"):
        tool_demo({"question": "What is six times seven?", "answer": "42"}, True, random.Random())


class Replay(RolloutEngine):
    """Plays each row's scripted assistant turns, in order, as the engine's samples: the final
    turn ends with the end token, a tool call on its stop string."""

    def __init__(self, tok: Any, scripts: list[tuple[list[int], list[str]]]) -> None:
        self.tok, self.scripts, self.end_ids = tok, scripts, [tok.eos_token_id]
        self.turn = [0] * len(scripts)

    def generate(self, prompts: list[str], n: int, sampling: SamplingParams) -> Any:
        raise NotImplementedError

    def generate_ids(self, prompt_ids, n, sampling, max_new_tokens=None):  # type: ignore[no-untyped-def]
        out = []
        for i, ids in enumerate(prompt_ids):
            r = next(k for k, (p, _) in enumerate(self.scripts) if ids[: len(p)] == p)
            turns = self.scripts[r][1]
            text, self.turn[r] = turns[self.turn[r]], self.turn[r] + 1
            tokens = self.tok(text, add_special_tokens=False)["input_ids"]
            tokens += [self.tok.eos_token_id] if self.turn[r] == len(turns) else []
            out.append([Completion(i, 0, text, ids, tokens, [0.0] * len(tokens), "stop")])
        return out

    def update_weights(self, model: Any) -> float:
        return 0.0


@pytest.mark.docker
def test_sft_lays_out_a_demo_token_for_token_as_the_rl_driver_with_the_real_tool(tmp_path):
    """The SFT layout of a demonstration is the trajectory the driver builds when the policy
    plays the demo's turns against the real env and sandbox: same tokens, same loss mask."""
    from verirl.rollout.episodes import run_episodes

    tok = build_tokenizer()
    env = make_env("python_tool", **ENV_OPTIONS)
    rows = list(env.rows("train")[:2])
    rng = random.Random(0)
    demos = [tool_demo(rows[0], True, rng), tool_demo(rows[1], False, rng)]
    prompts = [tok(env.prompt(r), add_special_tokens=False)["input_ids"] for r in rows]
    scripts = [(p, [m["content"] for m in d if m["role"] == "assistant"])
               for p, d in zip(prompts, demos, strict=True)]  # fmt: skip
    try:
        got = run_episodes(Replay(tok, scripts), env, rows, 1, SamplingParams(max_new_tokens=40),
                           tok, "auto", max_turns=2, max_tokens=96, batch_frac=1.0)  # fmt: skip
    finally:
        env.close()
    for demo, group in zip(demos, got.completions, strict=True):
        ids, mask = encode_turns(demo, tok, False, tok.eos_token_id, env.turn_stop)
        assert group[0].token_ids == ids and group[0].mask == mask
    tool_ep, head_ep = got.episodes
    assert (tool_ep.tool_calls, tool_ep.tool_errors, head_ep.tool_calls) == (1, 0, 0)
    assert [r[0].reward for r in got.rewards] == [1.0, 0.0]  # the sandbox printed the product


def test_sft_rejects_a_malformed_demonstration_naming_file_and_row(tmp_path):
    data = tmp_path / "demos.jsonl"
    ok = {"prompt": "What is 2 * 3?\n", "messages": [{"role": "assistant", "content": "6"}]}
    bad = {"prompt": "x", "messages": [{"role": "tool", "content": "6"}]}
    data.write_text(json.dumps(ok) + "\n" + json.dumps(bad) + "\n")
    cfg = validate_config(SftConfig, {"model": {"path": str(tmp_path)}, "data": {"path": str(data)},
                                      "env": {"name": "python_tool"}}, "test")  # fmt: skip
    tok = build_tokenizer()
    with pytest.raises(DataError, match=r"demos.jsonl:2: field 'messages' must start and end"):
        load_examples(cfg, tok, tok.eos_token_id)


def test_demo_task_flag_is_checked():
    assert cli(["demo", "--compare", "--task", "tools"]) == 2
    with pytest.raises(SystemExit) as e:
        cli(["demo", "--task", "chess"])
    assert e.value.code == 2


@pytest.mark.docker
def test_tools_demo_runs_every_stage_with_tool_calls_in_the_sandbox(tmp_path: Path) -> None:
    out = tmp_path / "demo-tools"
    (out / "mine").mkdir(parents=True)  # a run of the user's beside the demo: it must survive
    rc = main(
        str(out),
        sft_overrides=["train.steps=80", "train.batch_size=16", "log.progress=false",
                       "env.options.train_size=64"],
        grpo_overrides=["train.steps=2", "algo.batch_size=16", "algo.group_size=4",
                        "log.progress=false", "log.tensorboard=false",
                        "env.options.train_size=64"],
        eval_problems=4,
        eval_samples=2,
        p_tool=1.0,  # every demo calls the tool: the base surely calls it too
    )  # fmt: skip
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    for key in ("pass@1_base", "pass@1_trained", "tool_calls_base", "tool_calls_trained",
                "seconds_total"):  # fmt: skip
        assert key in s, key
    assert 0.0 <= s["pass@1_base"] <= 1.0 and 0.0 <= s["pass@1_trained"] <= 1.0
    assert s["eval_episodes"] == 8 and s["infra_errors"] == 0
    assert s["tool_calls_base"] > 0  # run in the sandbox: a call that did not run is infra
    base = [json.loads(x) for x in (out / "eval" / "samples_base.jsonl").read_text().splitlines()]
    tools = [m for ep in base for m in ep["messages"] if m["role"] == "tool"]
    assert len(tools) == s["tool_calls_base"]
    steps = [json.loads(x) for x in (out / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps] == [1, 2] and all("tool_calls_mean" in r for r in steps)
    for f in ("grpo/tools_curves.png", "sft/final/config.json", "grpo/final/config.json",
              "report.md"):  # fmt: skip
        assert (out / f).stat().st_size > 0, f
    assert (out / "mine").is_dir()
