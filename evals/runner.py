"""Sample n completions per problem with a rollout engine, score them, cache them.

Reproducibility: problems are sampled in fixed chunks of ``problems_per_call`` consecutive rows
of one environment (default 1: each problem alone), one ``generate`` call per chunk, seeded with
``derive_seed(suite.seed, env, first row)``. A problem's completions therefore depend only on the
suite, not on what ran before or on what was cached, and base and trained models see the same
seeds (common random numbers make their difference less noisy).

Cache and resume: each (model fingerprint, suite sampling hash, seed) has one JSONL file under
``<out>/cache/``; a problem's record is appended (and fsynced) as soon as it is sampled and
scored. A re-run reads the file and samples only the chunks it lacks, so an interrupted suite
resumes where it stopped and a finished one costs nothing but the report. A record whose prompt
differs from the current one (the dataset changed under the same options) is sampled again.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from verirl.envs.base import Environment, Prompt, Row
from verirl.envs.registry import make_env
from verirl.evals.models import model_fingerprint, open_engine
from verirl.evals.report import problem_record, write_outputs
from verirl.evals.suite import SuiteConfig
from verirl.evals.vote import clusters_of_record

from verirl.config import dump_config
from verirl.errors import ConfigError, DataError, UserError
from verirl.jsonl import append_jsonl, atomic_writer
from verirl.progress import Progress
from verirl.prompts import render_prompt

CACHE_VERSION = 1


@dataclass
class Problem:
    """One dataset row of one environment of the suite."""

    env_key: str
    index: int
    problem_id: str
    row: Row
    prompt: Prompt


def derive_seed(seed: int, env_key: str, index: int) -> int:
    """A 31-bit seed that depends only on (suite seed, environment label, problem index).

    >>> derive_seed(0, "arithmetic", 3) == derive_seed(0, "arithmetic", 3)
    True
    >>> derive_seed(0, "arithmetic", 3) != derive_seed(1, "arithmetic", 3)
    True
    """
    h = hashlib.sha256(f"{seed}:{env_key}:{index}".encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


def problem_id_of(row: Row, index: int) -> str:
    """The row's own id (``task_id``, ``id`` or ``problem_id``), else its index."""
    for key in ("task_id", "id", "problem_id"):
        if key in row and row[key] is not None:
            return str(row[key])
    return str(index)


def load_problems(suite: SuiteConfig, envs: Mapping[str, Environment]) -> list[Problem]:
    problems: list[Problem] = []
    for spec in suite.envs:
        env = envs[spec.key]
        try:
            rows = list(env.rows(spec.split))
        except (ValueError, KeyError) as e:
            raise ConfigError(f"suite {suite.name!r}: env {spec.key!r}: {e}") from None
        if spec.size is not None:
            if spec.size > len(rows):
                raise ConfigError(
                    f"suite {suite.name!r}: env {spec.key!r} split {spec.split!r} has "
                    f"{len(rows)} rows but the suite asks for size={spec.size}"
                )
            rows = rows[: spec.size]
        if not rows:
            raise ConfigError(f"suite {suite.name!r}: env {spec.key!r} has no rows to evaluate")
        env.validate_rows(rows, f"env {spec.key!r} split {spec.split!r}")
        for i, row in enumerate(rows):
            problems.append(Problem(spec.key, i, problem_id_of(row, i), row, env.prompt(row)))
    return problems


def open_envs(suite: SuiteConfig) -> dict[str, Environment]:
    return {spec.key: make_env(spec.name, **spec.options) for spec in suite.envs}


# ---- the cache --------------------------------------------------------------------------------


def cache_path(out_dir: Path, model_name: str, fingerprint: str, suite: SuiteConfig) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", model_name)[:40]
    return (
        out_dir
        / "cache"
        / f"{safe}-{fingerprint[:12]}-{suite.name}-{suite.sampling_hash()[:12]}-seed{suite.seed}.jsonl"
    )


def read_cache(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """Records by (env, problem_id). A torn last line (killed mid-write) is dropped; a bad line
    anywhere else is a DataError naming it."""
    if not path.is_file():
        return {}
    lines = path.read_text(encoding="utf-8").splitlines()
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if lineno == len(lines):
                break
            raise DataError(f"{path}:{lineno}: corrupt cache line; delete the file") from None
        if rec.get("version") != CACHE_VERSION:
            continue
        out[(rec["env"], rec["problem_id"])] = rec
    return out


def _append(path: Path, record: dict[str, Any]) -> None:
    append_jsonl(path, [record], fsync=True)  # a killed eval keeps every sample it wrote


def _repair_torn_tail(path: Path) -> None:
    """Cut a partial last line so that appends start on a fresh line."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


# ---- sampling --------------------------------------------------------------------------------


def chunks_of(problems: Sequence[Problem], size: int) -> list[list[Problem]]:
    """A fixed partition of each environment's problems into runs of ``size`` consecutive rows.

    The partition depends only on the suite, never on what is cached, so a chunk sampled after a
    resume holds the same problems, gets the same seed and yields the same completions.

    >>> ps = [Problem("a", i, str(i), {}, "") for i in range(3)] + [Problem("b", 0, "0", {}, "")]
    >>> [[(p.env_key, p.index) for p in c] for c in chunks_of(ps, 2)]
    [[('a', 0), ('a', 1)], [('a', 2)], [('b', 0)]]
    """
    out: list[list[Problem]] = []
    for p in problems:
        if out and out[-1][0].env_key == p.env_key and len(out[-1]) < size:
            out[-1].append(p)
        else:
            out.append([p])
    return out


def sample_model(
    name: str,
    model_path: str | Path,
    suite: SuiteConfig,
    problems: Sequence[Problem],
    envs: Mapping[str, Environment],
    out_dir: Path,
    backend: str,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Per-problem records for one model, sampling only the chunks its cache lacks."""
    fp = model_fingerprint(model_path)
    path = cache_path(out_dir, name, fp, suite)
    cached = read_cache(path)

    def fresh(p: Problem) -> bool:
        rec = cached.get((p.env_key, p.problem_id))
        return rec is not None and rec.get("prompt_raw") == _prompt_key(p.prompt)

    todo = [c for c in chunks_of(problems, suite.problems_per_call) if not all(map(fresh, c))]
    if todo:
        _repair_torn_tail(path)
        engine, tok = open_engine(backend, model_path, suite, out_dir)
        try:
            check_context(name, model_path, [p for c in todo for p in c], tok, suite, envs)
            n_todo = sum(map(len, todo))
            title = f"eval {name} (n={suite.n})"
            correct = samples = 0
            with Progress(title, n_todo, unit="problem", enabled=progress) as bar:
                for chunk in todo:
                    for rec in _sample_chunk(chunk, engine, tok, suite, envs):
                        _append(path, rec)
                        cached[(rec["env"], rec["problem_id"])] = rec
                        correct += sum(s["status"] == "correct" for s in rec["samples"])
                        samples += len(rec["samples"])
                    bar.update(len(chunk), f"correct {correct / max(samples, 1):.3f}")
        finally:
            engine.close()
    records = []
    for p in problems:
        rec = cached[(p.env_key, p.problem_id)]
        votes = clusters_of_record(envs[p.env_key], rec["samples"], p.row)  # maj@k's answers
        statuses = [s["status"] for s in rec["samples"]]
        records.append(problem_record(name, p.env_key, p.problem_id, statuses, votes))
    return records


def context_length(model_path: str | Path, suite: SuiteConfig) -> int | None:
    """Tokens the engine holds: the suite's ``vllm.max_model_len`` when set (vllm backend),
    else the model config's ``max_position_embeddings``; None when neither is known."""
    if suite.backend == "vllm" and suite.vllm.get("max_model_len"):
        return int(suite.vllm["max_model_len"])
    cfg_file = Path(model_path) / "config.json"
    if cfg_file.is_file():
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
        n = cfg.get("max_position_embeddings") or cfg.get("text_config", {}).get(
            "max_position_embeddings"
        )
        return int(n) if n else None
    return None


def check_context(
    name: str,
    model_path: str | Path,
    problems: Sequence[Problem],
    tok: Any,
    suite: SuiteConfig,
    envs: Mapping[str, Environment] | None = None,
) -> None:
    """Prompts plus ``sampling.max_tokens`` (a multi-turn env's: the trajectory's budget,
    ``turn_budget``) longer than the model's context. vLLM refuses them
    mid-run (a raw VLLMValidationError): that backend stops here, before sampling, naming the
    keys to change (skipping would change pass@k's denominator). The hf backend runs past
    ``max_position_embeddings`` (rotary models degrade, they do not fail): a warning counts them.
    """
    context = context_length(model_path, suite)
    if not context:
        return
    long = []
    for p in problems:
        text = render_prompt(p.prompt, tok, suite.chat_template)
        n = len(tok(text, add_special_tokens=False)["input_ids"])
        env = envs.get(p.env_key) if envs else None
        tokens = turn_budget(env, suite.sampling.max_tokens) if env else suite.sampling.max_tokens
        if n > context - tokens:
            long.append((p, n))
    if not long:
        return
    p, n = max(long, key=lambda x: x[1])
    what = (
        f"model {name!r}: {len(long)} of {len(problems)} prompts plus sampling.max_tokens="
        f"{suite.sampling.max_tokens} exceed its context of {context} tokens (longest: "
        f"{p.env_key} {p.problem_id}, {n} prompt tokens)"
    )
    if suite.backend == "vllm":
        raise ConfigError(
            f"{what}; lower sampling.max_tokens=N, set a size= without the long problems, "
            "or use a model with a longer context"
        )
    print(f"warning: {what}; the hf backend runs them past the context", flush=True)


def _sample_chunk(
    chunk: Sequence[Problem],
    engine: Any,
    tok: Any,
    suite: SuiteConfig,
    envs: Mapping[str, Environment],
) -> list[dict[str, Any]]:
    """Sample and score one chunk in one ``generate`` call; one cache record per problem."""
    from verirl.rollout.base import SamplingParams

    s = suite.sampling
    seed = derive_seed(suite.seed, chunk[0].env_key, chunk[0].index)
    params = SamplingParams(
        max_new_tokens=s.max_tokens,
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=s.top_k,
        stop=tuple(s.stop),
        seed=seed,
    )
    env = envs[chunk[0].env_key]
    if env.multi_turn:
        per_problem = _episode_samples(chunk, engine, tok, suite, env, params)
    else:
        texts = [render_prompt(p.prompt, tok, suite.chat_template) for p in chunk]
        groups = engine.generate(texts, suite.n, params)
        flat = [c for g in groups for c in g]
        to_score = [_strip_stop(c.text, s.stop) if s.strip_stop else c.text for c in flat]
        rows = [p.row for p, g in zip(chunk, groups, strict=True) for _ in g]
        results = iter(env.score_batch(to_score, rows))
        per_problem = [[_sample(c, next(results)) for c in group] for group in groups]
    records = []
    for p, samples in zip(chunk, per_problem, strict=True):
        records.append(
            {
                "version": CACHE_VERSION,
                "env": p.env_key,
                "problem_id": p.problem_id,
                "index": p.index,
                "seed": seed,
                "prompt_raw": _prompt_key(p.prompt),
                "samples": samples,
            }
        )
    return records


def _sample(c: Any, r: Any) -> dict[str, Any]:
    return {"text": c.text, "status": r.status, "reward": r.reward, "detail": r.detail[:200],
            "finish_reason": c.finish_reason, "num_tokens": len(c.token_ids)}  # fmt: skip


def turn_budget(env: Environment, max_tokens: int) -> int:
    """Tokens after the prompt a sample may take: ``sampling.max_tokens`` for a single-turn env;
    for a multi-turn one that per model turn and ``max_turns`` × it for the whole trajectory
    (model and environment tokens), the trainer's default (``rollout.max_tokens``)."""
    return env.max_turns * max_tokens if env.multi_turn else max_tokens


def _episode_samples(
    chunk: Sequence[Problem],
    engine: Any,
    tok: Any,
    suite: SuiteConfig,
    env: Environment,
    params: Any,
) -> list[list[dict[str, Any]]]:
    """``suite.n`` episodes of each problem of a multi-turn env (``run_episodes``), each sample
    scored on its whole trajectory (``score_episode``: by default the final submission).
    ``text`` is the final model turn (what maj@k votes on), ``messages`` the conversation
    with roles. Episodes advance in lockstep (``batch_frac=1``) so a seeded chunk's samples
    do not depend on tool timing: the cache's reproducibility holds."""
    from verirl.rollout.episodes import run_episodes

    out = run_episodes(engine, env, [p.row for p in chunk], suite.n, params, tok,
                       suite.chat_template, max_tokens=turn_budget(env, suite.sampling.max_tokens),
                       batch_frac=1.0)  # fmt: skip
    per_problem = []
    for group, results in zip(out.completions, out.rewards, strict=True):
        samples = []
        for c, r in zip(group, results, strict=True):
            ep = c.extra["episode"]
            samples.append(_sample(c, r) | {
                "text": ep.final_text, "messages": ep.messages, "turns": ep.turns,
                "tool_calls": ep.tool_calls, "tool_errors": ep.tool_errors,
                "truncated": ep.truncated})  # fmt: skip
        per_problem.append(samples)
    return per_problem


def _strip_stop(text: str, stops: Sequence[str]) -> str:
    r"""``text`` without a trailing stop string.

    >>> _strip_stop("    return 1\ndef ", ["\ndef ", "\nclass "])
    '    return 1'
    """
    for s in stops:
        if s and text.endswith(s):
            return text[: -len(s)]
    return text


def _prompt_key(prompt: Prompt) -> str:
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)


def evaluate_models(
    suite: SuiteConfig,
    models: Mapping[str, str | Path],
    out_dir: str | Path,
    backend: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run ``suite`` for each named model and write results.jsonl, summary.json, passk.png and
    report.md under ``out_dir``; returns the summary (see ``verirl.evals.report``)."""
    if not models:
        raise UserError("evaluate: give at least one model (--model PATH)")
    if backend is not None and backend != suite.backend:
        # The backend decides the random streams, so it is part of the cache key.
        suite = suite.model_copy(update={"backend": backend})
    out = Path(out_dir)
    envs = open_envs(suite)
    try:
        problems = load_problems(suite, envs)
        records: list[dict[str, Any]] = []
        for name, path in models.items():
            records += sample_model(name, path, suite, problems, envs, out, suite.backend, progress)
    finally:
        for env in envs.values():
            env.close()
    meta = {
        "suite": suite.name,
        "description": suite.description,
        "sampling_hash": suite.sampling_hash(),
        "seed": suite.seed,
        "n": suite.n,
        "sampling": suite.sampling.model_dump(),
        "models": {k: str(v) for k, v in models.items()},
        "status_counts": _status_counts(records),
    }
    summary = write_outputs(records, suite.ks, suite.bootstrap, out, meta)
    with atomic_writer(out / "suite.yaml") as f:  # the resolved suite, overrides applied
        f.write(dump_config(suite))
    return summary


def _status_counts(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, int]]:
    by_model: dict[str, Counter[str]] = {}
    for r in records:
        by_model.setdefault(r["model"], Counter()).update(r["statuses"])
    return {m: dict(sorted(c.items())) for m, c in by_model.items()}


def run_suite(
    suite: str | Path,
    models: Mapping[str, str | Path],
    out_dir: str | Path,
    overrides: Sequence[str] = (),
    backend: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """``verirl eval`` as a function: load a suite by name or path (with ``key=value``
    overrides) and evaluate the models; returns the summary.

    ``run_suite("arithmetic", {"base": "runs/demo/sft/final", "grpo": "runs/demo/grpo/final"},
    "runs/demo/eval")`` is what ``verirl demo`` ends with.
    """
    from verirl.evals.suite import load_suite

    return evaluate_models(load_suite(suite, list(overrides)), models, out_dir, backend, progress)
