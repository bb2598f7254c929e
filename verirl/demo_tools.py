"""``verirl demo --task tools``: a tiny model learns to call a sandboxed Python tool, from nothing.

1. build a tiny Qwen2 and byte-level tokenizer (``verirl.tiny``), offline;
2. ``verirl sft configs/demo_tools_sft.yaml``: a warm start on imperfect multi-turn
   demonstrations of ``python_tool``'s 3-digit multiplications (``write_tool_demos``): a share
   ``p_tool`` of them call the tool, ``<python>print(a * b)</python>``, and copy what it printed
   into ``\\boxed{}``; the rest answer "from the head" with a near miss. A byte-level model of
   ~0.5 M parameters cannot multiply 3-digit numbers in its head, but it can copy digits, so the
   base is right about as often as it calls the tool;
3. ``verirl train configs/demo_tools_grpo.yaml``: GRPO on the train split, every tool call run in
   the Docker sandbox, reward = the math reward on the final answer (tool output is never
   scored). The only way to more reward is to call the tool more often and to copy better;
4. held-out evaluation (``evaluate``): every test problem's episodes through the same driver
   as training (``verirl.rollout.episodes.run_episodes``), base vs trained: pass@1 (the mean of
   n sampled episodes per problem, temperature 1) and the tool calls made;
5. ``summary.json`` (``pass@1_base``, ``pass@1_trained``, ``tool_calls_base``,
   ``tool_calls_trained``, ``seconds_total`` and more), ``report.md`` and the curves
   (``grpo/tools_curves.png``: reward and tool calls per episode by GRPO step).

A re-run replaces only what the demo wrote (``OUTPUTS``); anything else in the folder stays.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from verirl.demo import config_path, start_demo_dir

OUTPUTS = ("tiny-model", "sft_data.jsonl", "sft", "grpo", "eval", "summary.json", "report.md")
_OPERANDS = re.compile(r"(\d+) \* (\d+)")
# Near misses of a product "from the head": one digit place off by 1-9 units of it.
_PLACES = (10, 100, 1000, 10000)


def tool_demo(row: dict[str, Any], use_tool: bool, rng: random.Random) -> list[dict[str, str]]:
    """The turns after the prompt of one demonstration: the tool call, the tool's message (as
    the env words it: ``tool_result`` of the run that prints the product) and the boxed copy;
    or a single boxed near miss (never the answer).

    >>> r = random.Random(0)
    >>> [m["content"] for m in tool_demo({"question": "What is 12 * 34?", "answer": "408"}, True, r)]
    ['<python>print(12 * 34)</python>', '408', '\\\\boxed{408}']
    >>> tool_demo({"question": "What is 12 * 34?", "answer": "408"}, False, r)[0]["content"] != "408"
    True
    """
    from verirl.envs.python_tool import tool_result
    from verirl.sandboxes.sandbox import RunResult

    m = _OPERANDS.search(str(row["question"]))
    if m is None:
        raise ValueError(f"row {row.get('id', '?')}: no 'a * b' in {row['question']!r}")
    answer = int(row["answer"])
    if not use_tool:
        guess = answer + rng.choice((-1, 1)) * rng.randint(1, 9) * rng.choice(_PLACES)
        return [{"role": "assistant", "content": f"\\boxed{{{guess}}}"}]
    output, _ = tool_result(RunResult(exit=0, stdout=f"{answer}\n"), 1000)
    return [
        {"role": "assistant", "content": f"<python>print({m[1]} * {m[2]})</python>"},
        {"role": "tool", "content": output},
        {"role": "assistant", "content": f"\\boxed{{{output}}}"},
    ]


def write_tool_demos(env: Any, path: Path, p_tool: float = 0.4, seed: int = 0) -> dict[str, int]:
    """Imperfect demonstrations, one per train problem: with probability `p_tool` the tool is
    called and its output copied (right), else a near miss from the head (wrong). SFT on them
    gives a base that calls the tool on about `p_tool` of its samples: right when it does,
    wrong when it does not, the headroom GRPO with the answer's reward can take. Rows are
    ``{prompt, messages}``, the multi-turn form ``verirl sft`` reads."""
    from verirl.jsonl import write_jsonl

    rng = random.Random(seed)
    rows, tool = [], 0
    for row in env.rows("train"):
        use = rng.random() < p_tool
        tool += use
        rows.append({"prompt": env.prompt(row), "messages": tool_demo(row, use, rng)})
    write_jsonl(path, rows)
    return {"demos": len(rows), "tool_demos": tool}


def evaluate(
    model_dir: Path, env: Any, rows: Sequence[Any], n: int, max_new_tokens: int, max_turns: int,
    max_tokens: int, seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """pass@1 (mean reward of `n` sampled episodes per row, temperature 1) and tool use of one
    model on `rows`, through the training driver; infra errors are counted, not scored 0."""
    import torch

    from verirl.rollout.base import SamplingParams
    from verirl.rollout.episodes import run_episodes
    from verirl.rollout.hf import HFRolloutEngine
    from verirl.train.config import ModelSection
    from verirl.train.model import load_policy

    model, tok = load_policy(ModelSection(path=str(model_dir)))
    model.eval()
    torch.manual_seed(seed)
    sampling = SamplingParams(max_new_tokens=max_new_tokens, temperature=1.0, seed=seed)
    batch = run_episodes(HFRolloutEngine(model, tok), env, rows, n, sampling, tok,
                         max_turns=max_turns, max_tokens=max_tokens, batch_frac=1.0)  # fmt: skip
    results = [r for group in batch.rewards for r in group]
    episodes = batch.episodes
    scored = [r for r in results if r.status != "infra_error"]
    return {
        "pass@1": sum(r.reward for r in scored) / max(len(scored), 1),
        "tool_calls": sum(e.tool_calls for e in episodes),
        "tool_errors": sum(e.tool_errors for e in episodes),
        "episodes_with_tool": sum(e.tool_calls > 0 for e in episodes),
        "episodes": len(episodes),
        "infra_errors": len(results) - len(scored),
        "samples": [
            {"question": e.row["question"], "answer": e.row["answer"], "reward": r.reward,
             "status": r.status, "messages": e.messages[1:]}
            for e, r in zip(episodes, results, strict=True)
        ],
    }  # fmt: skip


def main(
    out_dir: str = "runs/demo-tools",
    sft_overrides: Sequence[str] = (),
    grpo_overrides: Sequence[str] = (),
    eval_problems: int = 100,
    eval_samples: int = 4,
    p_tool: float = 0.4,
) -> int:
    """Run the demo into `out_dir` (an earlier run's outputs there are replaced; nothing else
    is touched). The overrides (``key=value``) go to the SFT and GRPO configs; tests use them
    and the eval sizes to shrink the job."""
    from verirl.config import load_config
    from verirl.envs.registry import make_env
    from verirl.tiny import build_tiny_model
    from verirl.train.config import SftConfig, TrainConfig
    from verirl.train.loop import train
    from verirl.train.metrics import plot_curves
    from verirl.train.sft import sft

    t0 = time.perf_counter()
    out = Path(out_dir)
    start_demo_dir(out, OUTPUTS)
    print(f"[1/4] building a tiny Qwen2 in {out / 'tiny-model'}")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    build_tiny_model(out / "tiny-model", hidden_size=128, num_layers=2, intermediate_size=256,
                     seed=0)  # fmt: skip
    common = [f"run_dir={out}"]
    print(f"[2/4] SFT on imperfect tool-use demonstrations ({p_tool:.0%} call the tool)")
    sft_cfg = load_config(SftConfig, config_path("demo_tools_sft.yaml"), [
        *common, "name=sft", f"model.path={out / 'tiny-model'}",
        f"data.path={out / 'sft_data.jsonl'}", *sft_overrides])  # fmt: skip
    env = make_env(sft_cfg.env.name, **sft_cfg.env.options)
    _check_sandbox(str(sft_cfg.env.options.get("sandbox", "auto")))
    demos = write_tool_demos(env, out / "sft_data.jsonl", p_tool)
    sft(sft_cfg)
    t_sft = time.perf_counter() - t0
    print("[3/4] GRPO against the answer, tool calls in the sandbox (configs/demo_tools_grpo.yaml)")
    grpo_cfg = load_config(TrainConfig, config_path("demo_tools_grpo.yaml"),
                           [*common, "name=grpo", f"model.path={out / 'sft/final'}",
                            *grpo_overrides])  # fmt: skip
    train(grpo_cfg)
    plot_curves(out / "grpo", ("reward_mean", "tool_calls_mean", "tool_errors_mean", "entropy"),
                "tools_curves", "GRPO with a Python tool")  # fmt: skip
    t_grpo = time.perf_counter() - t0 - t_sft
    print(f"[4/4] held-out: {eval_problems} test problems x {eval_samples} episodes, base vs GRPO")
    ro = grpo_cfg.rollout
    test = env.rows("test")[:eval_problems]
    args = (eval_samples, ro.max_new_tokens, ro.max_turns or env.max_turns,
            ro.max_tokens or ro.max_new_tokens)  # fmt: skip
    try:
        ev = {"base": evaluate(out / "sft/final", env, test, *args),
              "trained": evaluate(out / "grpo/final", env, test, *args)}  # fmt: skip
    finally:
        env.close()
    _write_eval(out / "eval", ev)
    base, trained = ev["base"], ev["trained"]
    summary: dict[str, Any] = {
        "pass@1_base": round(base["pass@1"], 4),
        "pass@1_trained": round(trained["pass@1"], 4),
        "tool_calls_base": base["tool_calls"],
        "tool_calls_trained": trained["tool_calls"],
        "tool_call_rate_base": round(base["episodes_with_tool"] / base["episodes"], 4),
        "tool_call_rate_trained": round(trained["episodes_with_tool"] / trained["episodes"], 4),
        "eval_problems": len(test),
        "eval_samples_per_problem": eval_samples,
        "eval_episodes": base["episodes"],
        "infra_errors": base["infra_errors"] + trained["infra_errors"],
        "sft_demos": demos["demos"],
        "sft_tool_demos": demos["tool_demos"],
        "seconds_sft": round(t_sft, 1),
        "seconds_grpo": round(t_grpo, 1),
        "seconds_total": round(time.perf_counter() - t0, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _report(out, summary)
    for key in ("pass@1_base", "pass@1_trained", "tool_calls_base", "tool_calls_trained"):
        print(f"{key:>18}: {summary[key]}")
    print(f"{'seconds_total':>18}: {summary['seconds_total']:.0f}")
    print(f"wrote {out}: summary.json, report.md, sft/, grpo/ (tools_curves.png), eval/")
    return 0


def _check_sandbox(kind: str) -> None:
    """Fail before training when the tool's sandbox cannot start: every tool call would be an
    infra_error, masked from the loss, and the demo would train on nothing."""
    from verirl.errors import UserError
    from verirl.sandboxes.sandbox import make_sandbox

    try:
        make_sandbox(kind, workers=1).close()  # type: ignore[arg-type]
    except Exception as e:
        raise UserError(f"demo --task tools: the {kind} sandbox does not start ({e}); see "
                        "`verirl sandbox doctor`") from None  # fmt: skip


def _write_eval(folder: Path, ev: dict[str, Any]) -> None:
    """eval/summary.json (the numbers) and eval/samples_<who>.jsonl (whole episodes)."""
    from verirl.jsonl import write_jsonl

    folder.mkdir(parents=True, exist_ok=True)
    for who, r in ev.items():
        write_jsonl(folder / f"samples_{who}.jsonl", r["samples"])
    numbers = {who: {k: v for k, v in r.items() if k != "samples"} for who, r in ev.items()}
    (folder / "summary.json").write_text(json.dumps(numbers, indent=2) + "\n")


def _report(out: Path, s: dict[str, Any]) -> None:
    n = s["eval_episodes"]
    lines = [
        "# verirl demo --task tools",
        "",
        f"Tiny Qwen2 (byte tokenizer): SFT on imperfect tool-use demonstrations "
        f"({s['sft_tool_demos']} of {s['sft_demos']} call the Python tool, the rest guess), "
        "then GRPO against the final answer with every tool call run in the sandbox, on "
        "3-digit multiplications; held-out: "
        f"{s['eval_problems']} test problems x {s['eval_samples_per_problem']} episodes.",
        "",
        "| | pass@1 | tool calls | episodes calling the tool |",
        "|---|---|---|---|",
        f"| base (SFT) | {s['pass@1_base']:.3f} | {s['tool_calls_base']} / {n} episodes "
        f"| {s['tool_call_rate_base']:.0%} |",
        f"| GRPO | {s['pass@1_trained']:.3f} | {s['tool_calls_trained']} / {n} episodes "
        f"| {s['tool_call_rate_trained']:.0%} |",
        "",
        f"Time: SFT {s['seconds_sft']} s, GRPO {s['seconds_grpo']} s, "
        f"total {s['seconds_total']} s. Infra errors: {s['infra_errors']}.",
        "",
        "Episodes: [eval/samples_base.jsonl](eval/samples_base.jsonl), "
        "[eval/samples_trained.jsonl](eval/samples_trained.jsonl).",
        "",
        "![GRPO curves](grpo/tools_curves.png)",
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
