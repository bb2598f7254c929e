"""Evaluation suites: what to sample, how often, and which k to report.

A suite is a YAML file validated by :class:`SuiteConfig` (unknown keys exit 2 naming the key).
Built-in suites live in ``evals/suites/<name>.yaml`` and are found by name; anything else is a
path. ``key=value`` overrides apply on top (``n=64 sampling.temperature=0.8``).

The suite hash covers every field that changes which completions are sampled or how they are
scored, and nothing else: changing ``ks`` or the bootstrap re-uses every cached completion.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from verirl.config import (
    StrictModel,
    deep_merge,
    parse_overrides,
    read_yaml,
    resolve_paths,
    validate_config,
)
from verirl.errors import ConfigError

SUITES_DIR = Path(__file__).resolve().parent / "suites"


class EnvSpec(StrictModel):
    """One environment of a suite and the slice of its dataset to evaluate."""

    name: str
    """Registered environment name (``verirl envs list``)."""
    label: str | None = None
    """Name in reports and results; defaults to ``name`` (set it to use one env twice)."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Keyword options for the environment (e.g. ``data: my_problems.jsonl``, ``sandbox: docker``)."""
    split: str = "test"
    """Dataset split whose rows are evaluated."""
    size: int | None = Field(default=None, ge=1)
    """Evaluate the first ``size`` rows of the split (None: all of them)."""

    @property
    def key(self) -> str:
        return self.label or self.name


class SamplingSpec(StrictModel):
    """How each of the n completions is sampled."""

    temperature: float = Field(default=1.0, ge=0.0)
    """Softmax temperature; pass@k at large k needs diversity, so 0.6-1.0 is usual (0: greedy)."""
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    """Nucleus sampling mass (1.0: off)."""
    top_k: int = Field(default=0, ge=0)
    """Keep the k most likely tokens (0: off)."""
    max_tokens: int = Field(default=256, ge=1)
    """Most new tokens per completion."""
    stop: list[str] = Field(default_factory=list)
    """Stop strings: generation ends at the first one."""
    strip_stop: bool = False
    """Cut a trailing stop string before scoring (code: a dangling ``def`` is a syntax
    error; answer tags such as ``</answer>`` want it kept). Engines differ on keeping it."""


class BootstrapSpec(StrictModel):
    """Confidence intervals over problems (percentile bootstrap)."""

    samples: int = Field(default=1000, ge=10)
    """Bootstrap resamples of the problem set."""
    confidence: float = Field(default=0.95, gt=0.0, lt=1.0)
    """Two-sided coverage of the interval."""


class SuiteConfig(StrictModel):
    """A pass@k evaluation suite (Chen et al. 2021; curves as in Yue et al. 2025)."""

    name: str = "suite"
    """Suite name, used in cache file names and reports."""
    description: str = ""
    """One line for the report."""
    envs: list[EnvSpec] = Field(min_length=1)
    """Environments and their dataset slices; problems are their rows."""
    n: int = Field(default=16, ge=1)
    """Completions sampled per problem (the estimator needs n >= max(ks))."""
    ks: list[int] = Field(default_factory=lambda: [1, 2, 4, 8, 16])
    """k values reported in summary.json and report.md (the plot shows every k <= n)."""
    sampling: SamplingSpec = Field(default_factory=SamplingSpec)
    """Sampling parameters shared by every problem."""
    seed: int = 0
    """Problem i of env e is sampled with a seed derived from (seed, e, i): reproducible alone."""
    backend: Literal["hf", "vllm"] = "hf"
    """Rollout engine; ``verirl eval --backend`` overrides it."""
    chat_template: Literal["auto", "always", "never"] = "auto"
    """Apply the tokenizer's chat template: auto = when the tokenizer has one."""
    problems_per_call: int = Field(default=1, ge=1)
    """Problems sampled together in one ``generate`` call (n completions each). Chunks are a
    fixed partition of each env's rows and each gets a seed from its first row, so results are
    reproducible for a given value; raise it for vLLM, which batches far better than hf."""
    batch_size: int | None = Field(default=None, ge=1)
    """Most sequences per forward pass of the hf engine (None: the whole call at once)."""
    vllm: dict[str, Any] = Field(default_factory=dict)
    """Settings of the vllm engine (``verirl.rollout.vllm.VLLMOptions``), e.g.
    ``gpu_memory_utilization: 0.85`` (an eval shares the GPU with no trainer)."""
    bootstrap: BootstrapSpec = Field(default_factory=BootstrapSpec)
    """Confidence intervals."""

    @field_validator("ks")
    @classmethod
    def _ks_positive(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("ks must list at least one k")
        if any(k < 1 for k in v):
            raise ValueError(f"every k must be >= 1, got {v}")
        return sorted(set(v))

    @model_validator(mode="after")
    def _ks_within_n(self) -> SuiteConfig:
        too_big = [k for k in self.ks if k > self.n]
        if too_big:
            raise ValueError(
                f"ks {too_big} exceed n={self.n}: the unbiased pass@k estimator needs k <= n "
                "samples per problem; raise n or drop those k"
            )
        labels = [e.key for e in self.envs]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ValueError(f"envs {dup} appear twice; give each a distinct `label`")
        return self

    def sampling_hash(self) -> str:
        """Hash of what decides the sampled completions and their scores (not ks/bootstrap)."""
        relevant = self.model_dump(
            mode="json",
            include={
                "envs",
                "n",
                "sampling",
                "seed",
                "backend",
                "chat_template",
                "problems_per_call",
                "batch_size",
                "vllm",
            },
        )
        blob = json.dumps(relevant, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()


def builtin_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def resolve_suite_path(suite: str | Path) -> Path:
    """A built-in name (``arithmetic``) or a YAML path; ConfigError lists the built-ins."""
    p = Path(suite)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise ConfigError(f"{p}: suite file not found")
        return p
    builtin = SUITES_DIR / f"{suite}.yaml"
    if builtin.is_file():
        return builtin
    raise ConfigError(
        f"unknown suite {str(suite)!r}: not a file, and no built-in suite has that name "
        f"(built-in: {', '.join(builtin_suites()) or 'none'})"
    )


def load_suite(suite: str | Path, overrides: list[str] | None = None) -> SuiteConfig:
    """Read a suite by name or path, apply ``key=value`` overrides, validate."""
    path = resolve_suite_path(suite)
    data = read_yaml(path)
    if isinstance(data.get("envs"), list):  # relative paths in the file: against its folder
        base = path.resolve().parent
        data["envs"] = [
            resolve_paths({"env": e}, ("env.name", "env.options.*"), base)["env"]
            if isinstance(e, dict) else e
            for e in data["envs"]
        ]  # fmt: skip
    data = deep_merge(data, parse_overrides(overrides or []))
    data.setdefault("name", path.stem)
    config = validate_config(SuiteConfig, data, str(path))
    if config.vllm:  # fail at load, naming the key, not minutes later when the engine starts
        from verirl.rollout.vllm import VLLMOptions

        validate_config(VLLMOptions, config.vllm, f"{path}: vllm")
    return config
