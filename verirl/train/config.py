"""Configs of ``verirl sft`` and ``verirl train``: one StrictModel per command, every field
documented where it is declared; cross-field rules are checked here with messages naming keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from verirl.config import StrictModel, looks_like_hub_id
from verirl.errors import ConfigError

# Inputs named in a config file resolve against the file's directory (see StrictModel); the
# output folder `run_dir` is, like every output, relative to the current directory.
PATH_KEYS = ("model.path", "env.name", "env.options.*")


class LoraSection(StrictModel):
    enabled: bool = Field(
        default=False, description="train LoRA adapters (peft) instead of all weights"
    )
    r: int = Field(default=8, ge=1, description="LoRA rank")
    alpha: int = Field(default=16, ge=1, description="LoRA scaling numerator (scale = alpha / r)")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="dropout on the LoRA input")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="module names that receive adapters",
    )


class ModelSection(StrictModel):
    path: str = Field(description="local HF model directory or hub id (owner/name)")
    dtype: Literal["float32", "bfloat16"] = Field(
        default="float32", description="weight dtype; bfloat16 also turns on autocast"
    )
    lora: LoraSection = Field(default_factory=LoraSection, description="LoRA adapters")
    chat_template: Literal["auto", "never"] = Field(
        default="auto",
        description="auto: apply the tokenizer's chat template to chat-message prompts",
    )
    forward: Literal["auto", "transformers", "lean"] = Field(
        default="auto",
        description="how logits are computed for training and hf-engine decoding: the model's "
        "own forward (transformers: SDPA/flash attention), verirl's lean re-implementation "
        "(verirl.lean_model: plain Qwen2/Qwen3/Llama, faster on CPU), or auto: lean on CPU "
        "in float32/bfloat16 for those architectures outside torchrun, transformers elsewhere",
    )

    @field_validator("path")
    @classmethod
    def _local_or_hub_id(cls, v: str) -> str:
        """A path that cannot be a hub id must exist: otherwise transformers' "Repo id must be
        in the form ..." is all the user would see."""
        p = Path(v).expanduser()
        if p.exists() and not p.is_dir():
            raise ValueError(f"{v!r} is a file; give the model's directory (with config.json)")
        if not p.exists() and not looks_like_hub_id(v):
            raise ValueError(
                f"{v!r}: no such model directory (and not a hub id like owner/name); "
                "build one first (`make demo` writes runs/demo/sft/final) or fix the path"
            )
        return v


class EnvSection(StrictModel):
    name: str = Field(description="registered environment (see `verirl envs list`)")
    options: dict[str, Any] = Field(default_factory=dict, description="passed to make_env")
    split: str = Field(default="train", description="dataset split to train on")


class RolloutSection(StrictModel):
    backend: Literal["hf", "vllm"] = Field(default="hf", description="rollout engine")
    max_new_tokens: int = Field(
        default=32, ge=1, description="completion length cap (multi-turn: per model turn)"
    )
    max_turns: int | None = Field(
        default=None,
        ge=1,
        description="multi-turn envs: model turns per episode; None: the env's max_turns (a "
        "larger value is an error)",
    )
    max_tokens: int | None = Field(
        default=None,
        ge=1,
        description="multi-turn envs: a trajectory's token budget after the prompt, model and "
        "environment tokens together (the episode ends truncated when it is spent; length "
        "shaping's L_max); None: max_turns x max_new_tokens. Single-turn envs: unused",
    )
    temperature: float = Field(default=1.0, ge=0.0, description="sampling temperature")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="nucleus sampling (1: off)")
    top_k: int = Field(default=0, ge=0, description="top-k sampling (0: off)")
    stop: list[str] = Field(default_factory=list, description="stop strings")
    turn_batch_frac: float = Field(
        default=0.5,
        gt=0.0,
        le=1.0,
        description="multi-turn envs: the next turn is generated once this share of the running "
        "episodes has its environment answer (others' tool calls overlap with it); 1.0: all "
        "episodes in lockstep, so a run is reproducible whatever the tools' timing",
    )
    batch_size: int | None = Field(
        default=None, ge=1, description="max sequences per generate call"
    )
    vllm: dict[str, Any] = Field(
        default_factory=dict,
        description="vllm backend settings (VLLMOptions fields, e.g. gpu_memory_utilization)",
    )
    score_workers: int = Field(default=4, ge=1, description="threads scoring completions")


class AlgoSection(StrictModel):
    name: Literal["grpo", "ppo", "online_dpo"] = Field(
        default="grpo",
        description="preset: grpo (no critic; advantage defaults to grpo) or ppo (value head; "
        "advantage gae); online_dpo: each group's best- vs worst-rewarded sample is a DPO pair, "
        "loss against π_ref with β = beta (verirl.train.online_dpo)",
    )
    dpo_loss: Literal["sigmoid", "ipo"] = Field(
        default="sigmoid", description="online_dpo: the preference loss (DPO sigmoid or IPO)"
    )
    advantage: Literal["grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "gae"] = Field(
        default="grpo",
        description="advantage estimator (verirl.algos ADVANTAGE_ESTIMATORS): grpo (group mean/std; "
        "Dr. GRPO with scale_rewards: false), rloo (leave-one-out mean), reinforce_pp (batch-"
        "whitened, no baseline), reinforce_pp_baseline (group mean, then batch-whitened), gae "
        "(PPO critic); unset: the preset's (gae for name: ppo)",
    )
    policy_loss: Literal["ppo_clip", "gspo", "cispo", "dual_clip"] = Field(
        default="ppo_clip",
        description="per-token policy loss (verirl.algos POLICY_LOSSES): ppo_clip (PPO/GRPO/DAPO), "
        "gspo (one clipped ratio per sequence; use loss_agg seq-mean-token-mean and clips ~3e-4), "
        "cispo (clipped stop-gradient IS weight × log π), dual_clip (PPO with the loss of "
        "negative advantages capped at dual_clip_c·|A|)",
    )
    dual_clip_c: float = Field(default=3.0, gt=1.0, description="dual_clip: the cap c > 1")
    cispo_max: float = Field(
        default=5.0, gt=0.0, description="cispo: IS weight cap ε_max (ScaleRL/TRL: 5.0)"
    )
    overlong_cache: int | None = Field(
        default=None,
        ge=1,
        description="DAPO soft overlong punishment: reward += a ramp from 0 to -1 over the last "
        "N tokens before rollout.max_new_tokens; None: off",
    )
    mask_truncated: bool = Field(
        default=False,
        description="DAPO overlong filtering: completions cut by max_new_tokens leave the loss "
        "(they still count in their group's baseline, as in TRL)",
    )
    length_penalty: float = Field(
        default=0.0,
        ge=0.0,
        description="reward -= length_penalty × completion_tokens / max_new_tokens (verbosity "
        "control; 0: off)",
    )
    batch_size: int = Field(
        default=64, ge=1, description="completions per generation batch (prompts x group_size)"
    )
    group_size: int = Field(default=8, ge=1, description="completions per prompt (GRPO: G >= 2)")
    epochs: int = Field(
        default=1, ge=1, description="optimisation epochs over each generation batch"
    )
    clip_low: float = Field(
        default=0.2, ge=0.0, description="PPO/GRPO ε_low: ratio floor 1 - ε_low"
    )
    clip_high: float = Field(default=0.2, ge=0.0, description="ε_high (DAPO clip-higher: 0.28)")
    tis_cap: float | None = Field(
        default=None,
        gt=0.0,
        description="truncated importance sampling for the rollout engine's logprob mismatch: "
        "each token's policy loss × min(π_trainer/π_rollout, tis_cap) (TRL's "
        "vllm_importance_sampling_cap, verl's TIS; 2.0 is usual); None: off",
    )
    loss_agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = Field(
        default="token-mean",
        description="how per-token losses become one number (Dr. GRPO: sum-norm)",
    )
    scale_rewards: bool = Field(
        default=True, description="GRPO: divide by group std (Dr. GRPO: false)"
    )
    filter_zero_variance: bool = Field(
        default=False, description="DAPO: drop groups whose rewards are all equal before the update"
    )
    skip_zero_grad_rows: bool = Field(
        default=True,
        description="skip the forward/backward of rows whose gradient is exactly 0: masked out "
        "(infra error, filtered group), or zero advantage with no KL in the loss and no critic "
        "(a GRPO group whose rewards are all equal); the update is unchanged, the entropy "
        "metric is then over the rows trained on",
    )
    beta: float = Field(default=0.0, ge=0.0, description="KL coefficient β (0: no reference model)")
    kl_estimator: Literal["k1", "k2", "k3"] = Field(
        default="k3", description="per-token KL estimator"
    )
    kl_in: Literal["loss", "reward"] = Field(
        default="loss", description="PPO: KL in the loss or reward"
    )
    reference: Literal["frozen", "lora_disabled", "ema"] = Field(
        default="frozen", description="π_ref: frozen copy, base with LoRA off, or EMA of the policy"
    )
    ema_decay: float = Field(default=0.99, gt=0.0, lt=1.0, description="EMA reference decay")
    gamma: float = Field(default=1.0, ge=0.0, le=1.0, description="PPO discount γ")
    lam: float = Field(default=0.95, ge=0.0, le=1.0, description="PPO GAE λ")
    vf_coef: float = Field(default=0.5, ge=0.0, description="PPO value-loss weight")
    value_clip: float = Field(default=0.2, ge=0.0, description="PPO value clipping range")
    value_lr: float = Field(default=1e-3, gt=0.0, description="PPO value-head learning rate")

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        """``name`` is a preset: an unset ``advantage`` is its estimator."""
        if isinstance(data, dict) and "advantage" not in data and data.get("name") == "ppo":
            return {**data, "advantage": "gae"}
        return data

    @property
    def kl_in_loss(self) -> bool:
        """Whether β·KL is a term of the loss (else, PPO only, it is in the reward)."""
        return self.name == "grpo" or self.kl_in == "loss"

    @model_validator(mode="after")
    def _check(self) -> AlgoSection:
        if (self.advantage == "gae") != (self.name == "ppo"):
            raise ValueError(
                f"algo.advantage={self.advantage!r} with algo.name={self.name!r}: gae needs the "
                "ppo preset's critic, and the ppo preset trains its critic for gae only"
            )
        if self.name == "online_dpo" and (self.beta <= 0 or self.group_size < 2):
            raise ValueError("algo.name 'online_dpo' needs algo.beta > 0 (DPO's β) and "
                             "algo.group_size >= 2 (a pair per group)")  # fmt: skip
        grouped = self.advantage in ("grpo", "rloo", "reinforce_pp_baseline")
        if (grouped or self.filter_zero_variance) and self.group_size < 2:
            what = "filter_zero_variance" if not grouped else f"advantage {self.advantage!r}"
            raise ValueError(f"algo.group_size must be >= 2 for {what}, got {self.group_size}")
        if self.batch_size % self.group_size:
            raise ValueError(
                f"algo.batch_size={self.batch_size} must be divisible by "
                f"algo.group_size={self.group_size}"
            )
        return self


class TrainSection(StrictModel):
    steps: int = Field(default=10, ge=1, description="generation batches (each: `epochs` updates)")
    lr: float = Field(default=1e-5, gt=0.0, description="peak learning rate (AdamW)")
    weight_decay: float = Field(default=0.0, ge=0.0, description="AdamW weight decay")
    warmup_steps: int = Field(default=0, ge=0, description="linear warm-up optimizer steps")
    schedule: Literal["constant", "linear", "cosine"] = Field(
        default="constant", description="lr decay"
    )
    micro_batch_size: int | None = Field(
        default=None, ge=1, description="sequences per forward (gradient accumulation); None: all"
    )
    max_grad_norm: float = Field(default=1.0, gt=0.0, description="gradient clipping norm")
    seed: int = Field(default=0, description="seeds data order, init and sampling")
    save_every: int = Field(
        default=0, ge=0, description="checkpoint every N steps (0: only at the end)"
    )
    device: str = Field(default="cpu", description="torch device: cpu, cuda, cuda:N, mps")
    threads: int | None = Field(default=None, ge=1, description="torch CPU threads (None: default)")


class LogSection(StrictModel):
    tensorboard: bool = Field(default=True, description="write TensorBoard events")
    progress: bool = Field(default=True, description="rich progress bar")
    samples_every: int = Field(default=1, ge=0, description="log sample completions every N steps")
    num_samples: int = Field(default=4, ge=0, description="completions written per sample dump")


class DistributedSection(StrictModel):
    """Used only when launched by ``torchrun`` (one process per device); ignored otherwise."""

    backend: Literal["auto", "gloo", "nccl"] = Field(
        default="auto", description="process-group backend (auto: nccl for cuda, else gloo)"
    )
    strategy: Literal["ddp", "fsdp2"] = Field(
        default="ddp",
        description="model wrapping: DistributedDataParallel (a full replica per rank), or "
        "FSDP2 fully_shard (parameters, gradients and optimizer state sharded over ranks)",
    )
    timeout_s: float = Field(default=1800.0, gt=0.0, description="collective timeout")


class TrainConfig(StrictModel):
    """``verirl train``: RL from verifiable rewards."""

    path_keys: ClassVar[tuple[str, ...]] = PATH_KEYS

    name: str = Field(
        default="train",
        description="run name: the run dir is <run_dir>/<name>; when it exists and the name "
        "was not given on the command line, <name>-<timestamp> is used instead",
    )
    run_dir: str = Field(
        default="runs/train", description="parent folder of run directories (cwd-relative)"
    )
    model: ModelSection
    env: EnvSection
    rollout: RolloutSection = Field(default_factory=RolloutSection)
    algo: AlgoSection = Field(default_factory=AlgoSection)
    train: TrainSection = Field(default_factory=TrainSection)
    log: LogSection = Field(default_factory=LogSection)
    distributed: DistributedSection = Field(default_factory=DistributedSection)

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        mb = self.train.micro_batch_size
        batch = self.algo.batch_size
        if mb is not None and batch % mb:
            raise ValueError(f"train.micro_batch_size={mb} must divide algo.batch_size={batch}")
        cache = self.algo.overlong_cache
        budget = self.rollout.max_tokens or self.rollout.max_new_tokens
        if cache is not None and cache > budget:
            key = "max_tokens" if self.rollout.max_tokens else "max_new_tokens"
            raise ValueError(f"algo.overlong_cache={cache} must be <= rollout.{key}={budget}")
        if (
            self.algo.reference == "lora_disabled"
            and self.algo.beta > 0
            and not (self.model.lora.enabled)
        ):
            raise ValueError("algo.reference 'lora_disabled' needs model.lora.enabled: true")
        if self.distributed.strategy == "fsdp2" and self.algo.name == "ppo":
            raise ValueError(
                "distributed.strategy 'fsdp2' supports algo.name 'grpo' only (the PPO value head"
                " would need its own sharded optimizer); use strategy 'ddp' for PPO"
            )
        return self


class SftData(StrictModel):
    path: str | None = Field(
        default=None, description="JSONL with prompt/completion columns; None: the env's rows"
    )
    prompt_field: str = Field(default="prompt", description="JSONL column holding the prompt")
    completion_field: str = Field(
        default="completion", description="JSONL column holding the target"
    )
    target_field: str = Field(
        default="answer", description="env rows: the field used as the target"
    )


class SftTrain(StrictModel):
    steps: int = Field(default=100, ge=1, description="optimizer steps")
    batch_size: int = Field(default=32, ge=1, description="sequences per step")
    lr: float = Field(default=1e-3, gt=0.0, description="peak learning rate")
    weight_decay: float = Field(default=0.0, ge=0.0, description="AdamW weight decay")
    warmup_steps: int = Field(default=0, ge=0, description="linear warm-up steps")
    schedule: Literal["constant", "linear", "cosine"] = Field(
        default="cosine", description="lr decay"
    )
    max_grad_norm: float = Field(default=1.0, gt=0.0, description="gradient clipping norm")
    seed: int = Field(default=0, description="data order and init")
    device: str = Field(default="cpu", description="torch device")
    threads: int | None = Field(default=None, ge=1, description="torch CPU threads")


class SftConfig(StrictModel):
    """``verirl sft``: supervised warm start with the prompt masked out of the loss."""

    path_keys: ClassVar[tuple[str, ...]] = (*PATH_KEYS, "data.path")

    name: str = Field(
        default="sft",
        description="run name: the run dir is <run_dir>/<name> (see TrainConfig.name)",
    )
    run_dir: str = Field(
        default="runs/sft", description="parent folder of run directories (cwd-relative)"
    )
    model: ModelSection
    env: EnvSection
    data: SftData = Field(default_factory=SftData)
    train: SftTrain = Field(default_factory=SftTrain)
    log: LogSection = Field(default_factory=LogSection)


def check_device(device: str, key: str = "train.device") -> None:
    """A device this machine has, else ConfigError naming the key (not torch's AssertionError
    deep inside model loading)."""
    import torch

    kind, _, index = device.partition(":")
    if kind == "cpu" and not index:
        return
    if kind == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            build = "a CPU-only build" if torch.version.cuda is None else "no visible GPU"
            raise ConfigError(
                f"{key}={device}: no CUDA device here (torch {torch.__version__}, {build}); "
                f"use {key}=cpu, or install a CUDA build of torch"
            )
        if index and (not index.isdigit() or int(index) >= n):
            raise ConfigError(f"{key}={device}: this machine has cuda:0..cuda:{n - 1}")
        return
    if kind == "mps" and not index:
        if not torch.backends.mps.is_available():
            raise ConfigError(f"{key}={device}: MPS is not available here; use {key}=cpu")
        return
    raise ConfigError(f"{key}={device!r}: not a device; use cpu, cuda, cuda:N or mps")
