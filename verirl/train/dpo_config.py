"""Config of ``verirl dpo``: offline preference optimisation on (prompt, chosen, rejected) rows.

The model, log and LoRA sections are ``verirl train``'s own (one definition each); the data,
algorithm and optimisation sections are DPO's.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from verirl.config import StrictModel
from verirl.train.config import LogSection, ModelSection


class DpoData(StrictModel):
    path: str | None = Field(
        default=None, description="JSONL file, one preference pair per line (or give `dataset`)"
    )
    dataset: str | None = Field(
        default=None,
        description="a 🤗 datasets source instead of `path`: a directory written by "
        "save_to_disk, a local data file/folder, or a hub id (cwd-relative, not config-relative)",
    )
    split: str = Field(default="train", description="split of `dataset`")
    prompt_field: str = Field(
        default="prompt", description="column holding the prompt (text or chat messages)"
    )
    chosen_field: str = Field(
        default="chosen", description="column holding the preferred completion"
    )
    rejected_field: str = Field(
        default="rejected", description="column holding the dispreferred completion"
    )

    @model_validator(mode="after")
    def _one_source(self) -> DpoData:
        if (self.path is None) == (self.dataset is None):
            raise ValueError("give exactly one of data.path (JSONL) and data.dataset")
        return self


class DpoAlgo(StrictModel):
    loss_type: Literal["sigmoid", "ipo"] = Field(
        default="sigmoid",
        description="sigmoid: DPO −log σ(β h); ipo: (h/|y| − 1/(2β))² per pair (Azar et al.)",
    )
    beta: float = Field(
        default=0.1, gt=0.0, description="β: strength of the implicit KL to the reference"
    )
    label_smoothing: float = Field(
        default=0.0,
        ge=0.0,
        lt=0.5,
        description="sigmoid only: assumed probability that a pair's label is flipped (cDPO)",
    )
    sft_weight: float = Field(
        default=0.0,
        ge=0.0,
        description="weight α of an SFT term, the token-mean NLL of the chosen completions, "
        "added to the loss (RPO: Pang et al. 2024, arXiv:2404.19733; TRL's loss_type "
        "[sigmoid, sft] with loss_weights [1, α]); keeps DPO from lowering the chosen "
        "answers' likelihood along with the rejected ones'",
    )
    reference: Literal["frozen", "lora_disabled"] = Field(
        default="frozen",
        description="π_ref: a frozen copy of the starting model, or (with LoRA) the same model "
        "with its adapters switched off (no second copy in memory)",
    )

    @model_validator(mode="after")
    def _smoothing_is_sigmoid_only(self) -> DpoAlgo:
        if self.label_smoothing and self.loss_type != "sigmoid":
            raise ValueError("algo.label_smoothing applies to algo.loss_type 'sigmoid' only")
        return self


class DpoTrain(StrictModel):
    steps: int = Field(default=100, ge=1, description="optimizer steps")
    batch_size: int = Field(default=8, ge=1, description="preference pairs per step")
    micro_batch_size: int | None = Field(
        default=None, ge=1, description="pairs per forward (gradient accumulation); None: all"
    )
    lr: float = Field(default=1e-6, gt=0.0, description="peak learning rate (TRL's DPO default)")
    weight_decay: float = Field(default=0.0, ge=0.0, description="AdamW weight decay")
    warmup_steps: int = Field(default=0, ge=0, description="linear warm-up steps")
    schedule: Literal["constant", "linear", "cosine"] = Field(
        default="linear", description="lr decay after warm-up"
    )
    max_grad_norm: float = Field(default=1.0, gt=0.0, description="gradient clipping norm")
    seed: int = Field(default=0, description="seeds data order and init")
    save_every: int = Field(
        default=0, ge=0, description="checkpoint every N steps (0: only at the end)"
    )
    device: str = Field(default="cpu", description="torch device: cpu, cuda, cuda:N, mps")
    threads: int | None = Field(default=None, ge=1, description="torch CPU threads (None: default)")


class DpoConfig(StrictModel):
    """``verirl dpo``: direct preference optimisation against a reference policy."""

    path_keys: ClassVar[tuple[str, ...]] = ("model.path", "data.path")

    name: str = Field(
        default="dpo",
        description="run name: the run dir is <run_dir>/<name> (see TrainConfig.name)",
    )
    run_dir: str = Field(
        default="runs/dpo", description="parent folder of run directories (cwd-relative)"
    )
    model: ModelSection
    data: DpoData
    algo: DpoAlgo = Field(default_factory=DpoAlgo)
    train: DpoTrain = Field(default_factory=DpoTrain)
    log: LogSection = Field(default_factory=LogSection)

    @model_validator(mode="after")
    def _check(self) -> DpoConfig:
        if self.algo.reference == "lora_disabled" and not self.model.lora.enabled:
            raise ValueError("algo.reference 'lora_disabled' needs model.lora.enabled: true")
        mb = self.train.micro_batch_size
        if mb is not None and self.train.batch_size % mb:
            raise ValueError(
                f"train.micro_batch_size={mb} must divide train.batch_size={self.train.batch_size}"
            )
        return self
