"""Math environments: ``math`` (any JSONL or HF dataset via a column mapping), ``gsm8k``,
``math500``, and ``reasoning_gym`` (any reasoning-gym task as an environment).

Each is a dataset plus the math reward (`verirl.rewards.math_reward`), optionally mixed with the
strict tag-format reward (`verirl.rewards.format`) as r = r_correct + format_weight · r_format.
The symbolic checks run in a `CheckerPool` owned by the environment and released by `close`.
Hub datasets load through ``datasets.load_dataset`` only when rows are asked for; tests and
offline users pass ``data=`` (a JSONL file, or ``{"train": path, "test": path}``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from verirl.envs.base import Environment, Prompt, Row
from verirl.envs.registry import register_env
from verirl.rewards.combine import combine
from verirl.rewards.format import format_reward
from verirl.rewards.math_extract import extract_answer
from verirl.rewards.math_pool import CheckerPool
from verirl.rewards.math_reward import math_reward
from verirl.rewards.result import RewardResult

from verirl.errors import ConfigError, DataError
from verirl.jsonl import read_jsonl

BOXED_PROMPT = (
    "{question}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}."
)
TAGGED_PROMPT = (
    "{question}\n\nThink inside <think></think>, then give only the final answer inside "
    "<answer></answer>."
)


@register_env
class MathEnv(Environment):
    name = "math"
    description = (
        "Math word problems from a JSONL file or HF dataset; answers checked symbolically "
        "(sympy, exact), optional strict <think>/<answer> format reward."
    )
    reward_kinds = ("math-equivalence", "format")
    fields = ("answer",)
    example_row: ClassVar[Row] = {"question": "What is 1/2 + 1/3?", "answer": "\\frac{5}{6}"}
    default_dataset: ClassVar[str | None] = None
    default_config: ClassVar[str | None] = None
    default_columns: ClassVar[Mapping[str, str]] = {}
    default_splits: ClassVar[Mapping[str, str]] = {}

    def __init__(
        self,
        data: str | Mapping[str, str] | None = None,
        dataset: str | None = None,
        dataset_config: str | None = None,
        columns: Mapping[str, str] | None = None,
        splits: Mapping[str, str] | None = None,
        prompt_template: str | None = None,
        prompt_style: str = "chat",
        format_weight: float = 0.0,
        tags: Sequence[str] = ("think", "answer"),
        last_number_fallback: bool = True,
        timeout_s: float = 0.75,
        workers: int | None = None,
    ) -> None:
        if prompt_style not in ("chat", "text"):
            raise ValueError(f"prompt_style must be 'chat' or 'text', got {prompt_style!r}")
        if format_weight < 0:
            raise ValueError(f"format_weight must be >= 0, got {format_weight}")
        self.data = data
        self.dataset = dataset or self.default_dataset
        self.dataset_config = dataset_config or self.default_config
        # columns maps our field -> the source column, e.g. {"question": "problem"}
        self.columns = {**self.default_columns, **(columns or {})}
        self.splits = {**self.default_splits, **(splits or {})}
        self.format_weight, self.tags = format_weight, tuple(tags)
        if prompt_template is None:
            prompt_template = TAGGED_PROMPT if format_weight > 0 else BOXED_PROMPT
        if "{question}" not in prompt_template:
            raise ValueError("prompt_template must contain '{question}'")
        self.prompt_template, self.prompt_style = prompt_template, prompt_style
        self.last_number_fallback = last_number_fallback
        self.pool = CheckerPool(workers=workers, timeout_s=timeout_s)
        self._rows: dict[str, list[Row]] = {}

    # ---- data ---------------------------------------------------------------------------------
    def rows(self, split: str = "train") -> Sequence[Row]:
        if split not in self._rows:
            self._rows[split] = self._load(split)
            # Asking for rows means scoring follows: start the checker's worker processes now,
            # in the background, so their sympy import overlaps model loading.
            self.pool.start()
        return self._rows[split]

    def _load(self, split: str) -> list[Row]:
        if self.data is not None:
            path = self.split_file(self.data, split)
            return self._convert(read_jsonl(path), path)
        if self.dataset is None:
            raise DataError(
                f"env {self.name!r} needs `data` (a JSONL file) or `dataset` (an HF dataset name)"
            )
        import datasets  # lazy: heavy, and only hub users need it

        hf_split = self.splits.get(split, split)
        ds = datasets.load_dataset(self.dataset, self.dataset_config, split=hf_split)
        return self._convert([dict(r) for r in ds], f"{self.dataset}[{hf_split}]")

    def _convert(self, raw: list[dict[str, Any]], source: str) -> list[Row]:
        qk, ak = self.columns.get("question", "question"), self.columns.get("answer", "answer")
        out = []
        for i, r in enumerate(raw, 1):  # rows count from 1 in messages
            for key in (qk, ak):
                if key not in r:
                    raise DataError(
                        f"{source}: row {i}: missing field {key!r} (env {self.name!r}; "
                        f"map columns with columns={{'question': ..., 'answer': ...}})"
                    )
            row = dict(r)
            row["question"], row["answer"] = str(r[qk]), self.gold_from(str(r[ak]))
            out.append(row)
        return out

    def gold_from(self, raw_answer: str) -> str:
        """The gold answer from the dataset's answer column (GSM8K overrides this)."""
        return raw_answer

    def prompt(self, row: Row) -> Prompt:
        text = self.prompt_template.format(question=row["question"])
        return text if self.prompt_style == "text" else [{"role": "user", "content": text}]

    # ---- scoring ------------------------------------------------------------------------------
    def score(self, completion: str, row: Row) -> RewardResult:
        """Math reward, plus ``format_weight`` x the strict format reward when enabled."""
        correct = math_reward(
            completion, self.gold_from(str(row["answer"])), self.pool, self.last_number_fallback
        )
        if self.format_weight == 0:
            return correct
        fmt = format_reward(completion, self.tags)
        return combine(
            {"correct": correct, "format": fmt},
            {"correct": 1.0, "format": self.format_weight},
            primary="correct",
        )

    def score_batch(
        self, completions: Sequence[str], rows: Sequence[Row], workers: int | None = None
    ) -> list[RewardResult]:
        """Threads hand symbolic checks to the pool's processes: `workers` sizes both."""
        if workers:
            self.pool.resize(workers)
        return super().score_batch(completions, rows, workers=workers or self.pool.size)

    def close(self) -> None:
        self.pool.close()


@register_env
class Gsm8kEnv(MathEnv):
    name = "gsm8k"
    description = "GSM8K grade-school math (openai/gsm8k via datasets, or a local JSONL)."
    example_row: ClassVar[Row] = {
        "question": "Tom has 3 apples and buys 4 more. How many apples does he have?",
        "answer": "3 + 4 = 7\n#### 7",
    }
    default_dataset = "openai/gsm8k"
    default_config = "main"

    def gold_from(self, raw_answer: str) -> str:
        """GSM8K's answer column ends with ``#### n``; the gold is n.

        >>> Gsm8kEnv().gold_from("48/2 = 24\\n#### 1,024")
        '1024'
        """
        _, sep, tail = raw_answer.rpartition("####")
        return (tail if sep else raw_answer).strip().replace(",", "")


@register_env
class Math500Env(MathEnv):
    name = "math500"
    description = "MATH-500 competition problems (HuggingFaceH4/MATH-500, test split only)."
    example_row: ClassVar[Row] = {
        "problem": "Compute $\\dbinom{8}{4}$.",
        "answer": "70",
    }
    default_dataset = "HuggingFaceH4/MATH-500"
    default_columns: ClassVar[Mapping[str, str]] = {"question": "problem", "answer": "answer"}
    # MATH-500 has one split; train on it only if you mean to (it is an eval set).
    default_splits: ClassVar[Mapping[str, str]] = {"train": "test", "test": "test"}

    def prompt(self, row: Row) -> Prompt:
        return super().prompt({**row, "question": row.get("question", row.get("problem", ""))})


@register_env
class ReasoningGymEnv(Environment):
    """Any reasoning-gym task (Random(seed + idx) per item, so rows are reproducible) as an env.

    The answer is extracted like the math env's (``<answer>``, ``\\boxed{}``, "the answer
    is", last number) and judged by the task's own ``score_answer``. The reward is binary: 1.0
    only when the task gives full credit. Many tasks give partial credit for an answer that
    *contains* the gold (``36 or 3`` 0.71, ``36.5`` 0.86, ``[3, 36, 7]`` 0.6 for 36), which a
    policy learns to exploit by padding and hedging; that credit is reported in the detail and
    scores 0. A hedged answer ("3 or 5", by the math reward's own check) scores 0 before the
    task sees it. Splits are disjoint by seed: test uses ``seed + 1_000_003``.
    """

    name = "reasoning_gym"
    description = "Any reasoning-gym task as an environment (task=..., seeded, offline)."
    reward_kinds = ("task-scorer",)
    fields = ("question", "answer")
    example_row: ClassVar[Row] = {"question": "Calculate 5 - 3 - 6.", "answer": "-4"}

    def __init__(
        self,
        task: str = "basic_arithmetic",
        seed: int = 0,
        train_size: int = 1000,
        test_size: int = 100,
        task_options: Mapping[str, Any] | None = None,
        prompt_style: str = "chat",
    ) -> None:
        if prompt_style not in ("chat", "text"):
            raise ValueError(f"prompt_style must be 'chat' or 'text', got {prompt_style!r}")
        self.task, self.seed, self.task_options = task, seed, dict(task_options or {})
        self.sizes = {"train": train_size, "test": test_size}
        self.prompt_style = prompt_style
        self._data: dict[str, Any] = {}

    def _dataset(self, split: str) -> Any:
        if split not in self.sizes:
            raise ValueError(f"unknown split {split!r}; reasoning_gym has 'train' and 'test'")
        if split not in self._data:
            import reasoning_gym  # lazy: an optional dependency

            seed = self.seed + (1_000_003 if split == "test" else 0)
            try:
                self._data[split] = reasoning_gym.create_dataset(
                    self.task, size=self.sizes[split], seed=seed, **self.task_options
                )
            except (KeyError, ValueError, TypeError) as e:
                raise ConfigError(f"reasoning-gym task {self.task!r}: {e}") from None
        return self._data[split]

    def rows(self, split: str = "train") -> Sequence[Row]:
        ds = self._dataset(split)
        return [
            {"id": f"{split}-{i}", "question": e["question"], "answer": str(e["answer"]),
             "split": split, "index": i}
            for i, e in enumerate(ds)
        ]  # fmt: skip

    def prompt(self, row: Row) -> Prompt:
        text = f"{row['question']}\n\nGive only the final answer inside <answer></answer>."
        return text if self.prompt_style == "text" else [{"role": "user", "content": text}]

    def score(self, completion: str, row: Row) -> RewardResult:
        """1.0 when the task's scorer gives the extracted, unhedged answer full credit, else 0."""
        found = extract_answer(completion)
        if found.answer is None:
            return RewardResult(0.0, "format_error", {"correct": 0.0}, "no final answer found")
        said = f"{found.source}: {_short(found.answer)}"
        if found.hedged:
            return RewardResult(0.0, "incorrect", {"correct": 0.0}, f"hedged answer: {said}")
        if "split" in row and "index" in row:
            entry = self._dataset(row["split"])[int(row["index"])]
        else:  # rows from a file: the task scorer still needs an entry
            entry = {"question": row.get("question", ""), "answer": row["answer"], "metadata": {}}
        credit = float(self._dataset("train").score_answer(answer=found.answer, entry=entry))
        if credit >= 1.0:
            return RewardResult(1.0, "correct", {"correct": 1.0}, said)
        return RewardResult(
            0.0, "incorrect", {"correct": 0.0}, f"{said} (task credit {credit:.3g})"
        )


def _short(s: str, n: int = 60) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."
