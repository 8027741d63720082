"""The training config of ``mmtok train`` (YAML file, ``--config``): model size, masking,
optimiser, streams / bundle / heads, schedule, precision."""

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from mmtok.config import StrictModel, problems
from mmtok.errors import MmtokError
from mmtok.model import MaskingConfig, ModelConfig

__all__ = ["HeadConfig", "OptimConfig", "TokenFolderConfig", "TrainConfig"]


class OptimConfig(StrictModel):
    """AdamW with linear warm-up then cosine decay to ``min_lr_ratio * lr``."""

    lr: float = Field(default=1e-3, gt=0, description="AdamW peak learning rate (cosine decay after warm-up)")
    weight_decay: float = Field(default=0.05, ge=0, description="AdamW weight decay (not on norms and biases)")
    betas: tuple[float, float] = Field(default=(0.9, 0.95), description="AdamW betas")
    warmup_steps: int = Field(default=50, ge=0, description="linear warm-up steps")
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1, description="final learning rate / lr")
    clip_grad: float | None = Field(default=1.0, gt=0, description="gradient-norm clip (null: none)")


class HeadConfig(StrictModel):
    """A head from a plugin (`mmtok.hookspecs.HeadSpec`), trained jointly: total loss =
    masked-modelling loss + weight * head loss."""

    head: str = Field(description="a HeadSpec name from a plugin")
    weight: float = Field(default=1.0, ge=0, description="its loss weight in the total")
    config: dict[str, Any] = Field(default_factory=dict, description="the head's own options")


class TokenFolderConfig(StrictModel):
    """One token folder of a run over several (``tokens:`` in the config, ``--tokens`` repeated)."""

    path: Path = Field(description="an mmtok encode output folder (relative paths: to the working directory)")
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]+$",
                             description="prefix of its sample ids and metrics (default: the folder's name, "
                                         "its parent's if it is called tokens)")
    weight: float | None = Field(default=None, gt=0, description="sampling share (default: from its size and "
                                                                  "mixture_temperature); set on all folders or none")
    val_group: str | None = Field(default=None, description="this folder's val_group (default: the run's)")

    @model_validator(mode="before")
    @classmethod
    def _from_path(cls, v):
        return {"path": v} if isinstance(v, (str, Path)) else v

    @field_validator("val_group")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        return _regex(v)

    def split(self, config: "TrainConfig") -> tuple[float, str | None]:
        """(val_fraction, val_group) of this folder's held-out split."""
        return config.val_fraction, self.val_group if self.val_group is not None else config.val_group


def _regex(v: str | None) -> str | None:
    if v is not None:
        try:
            re.compile(v)
        except re.error as err:
            raise ValueError(f"val_group {v!r} is not a regular expression ({err})") from None
    return v


class TrainConfig(StrictModel):
    model: ModelConfig = Field(default_factory=ModelConfig, description="transformer size (model.*)")
    masking: MaskingConfig = Field(default_factory=MaskingConfig, description="4M masking budgets (masking.*)")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="optimizer and schedule (optim.*)")
    #: streams to train on (default: every stream of the token folder)
    streams: list[str] | None = Field(default=None, description="streams to train on (default: every stream of the token folder)")
    #: a bundle name from a plugin: its streams and heads
    bundle: str | None = Field(default=None, description="a plugin bundle: its streams and heads")
    heads: dict[str, HeadConfig] = Field(default_factory=dict, description="plugin heads trained jointly, by name")
    #: per discrete stream, weights of its target tokens in the training loss: "balanced" is
    #: n / (k * n_c) over the k token ids seen in the training rows (scikit-learn's
    #: class_weight="balanced"), or one weight per token id; held-out metrics stay unweighted
    class_weight: dict[str, Literal["balanced"] | list[float]] = Field(
        default_factory=dict, description='per discrete stream: "balanced" or one loss weight per token id')
    #: token folders (``--tokens`` on the command line replaces this list); several are one run over
    #: the union of their streams, sampled as a mixture (`mmtok.mixture`)
    tokens: list[TokenFolderConfig] = Field(default_factory=list, description="token folders: paths, or {path, name, weight, val_group}")
    mixture_batches: Literal["mixed", "per_folder"] = Field(
        default="mixed", description="mixed: samples of every folder in each batch; per_folder: each batch from one folder")
    mixture_temperature: float = Field(default=1.0, gt=0, description="folder shares ∝ size ** (1 / T) unless weighted: 1 = by size, large = uniform")
    batch_size: int = Field(default=64, ge=1, description="global batch (all ranks together)")
    max_steps: int = Field(default=1000, ge=1, description="total optimizer steps")
    seed: int = Field(default=0, description="seed of the sample order, masks, dropout and initial weights")
    val_fraction: float = Field(default=0.1, ge=0, lt=1, description="share of samples held out (by id hash)")
    #: regular expression whose first group is hashed instead of the whole sample id, so that a whole
    #: patient / record / region is held out together (e.g. "^(p\\d+)-" for ids like "p07-beat0123")
    val_group: str | None = Field(default=None, description="regex: hash this part of the id for the split")
    eval_every: int = Field(default=100, ge=1, description="steps between held-out evaluations")
    eval_batches: int = Field(default=20, ge=1, description="held-out batches per evaluation")
    log_every: int = Field(default=10, ge=1, description="steps between metrics.jsonl lines")
    checkpoint_every: int = Field(default=100, ge=1, description="steps between checkpoints (resume points)")
    keep_checkpoints: int = Field(default=2, ge=1, description="checkpoints kept (older ones are removed)")
    precision: str = Field(default="auto", pattern="^(auto|fp32|bf16)$", description="auto: bf16 autocast on GPUs that support it, else fp32")
    compile: bool = Field(default=False, description="torch.compile the model")
    fsdp: bool = Field(default=False, description="shard parameters with FSDP2 under torchrun (default: DDP)")
    device: str | None = Field(default=None, description="cpu / cuda / cuda:1 (default: the rank's GPU if any, else cpu)")

    @field_validator("val_group")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        return _regex(v)

    @model_validator(mode="after")
    def _folders(self) -> "TrainConfig":
        weighted = [t.weight is not None for t in self.tokens]
        if any(weighted) and not all(weighted):
            raise ValueError("tokens: set weight on every folder or on none (then shares follow the "
                             "folders' sizes and mixture_temperature)")
        return self

    def folder(self, path: str | Path) -> TokenFolderConfig:
        """The ``tokens`` entry of the folder at ``path`` (matched by resolved path), else a plain one."""
        want = Path(path).resolve()
        return next((t for t in self.tokens if t.path.resolve() == want), TokenFolderConfig(path=Path(path)))

    def with_target_streams(self, keys: list[str]) -> "TrainConfig":
        """This config with ``keys`` added to ``masking.target_streams`` (`mmtok train --target-stream`)."""
        targets = list(dict.fromkeys([*self.masking.target_streams, *keys]))
        try:
            masking = MaskingConfig.model_validate({**self.masking.model_dump(), "target_streams": targets})
        except ValidationError as err:
            raise MmtokError("\n".join(f"--target-stream: {p}" for p in problems(err))) from None
        return self.model_copy(update={"masking": masking})

    @classmethod
    def load(cls, path: str | Path | None, **overrides) -> "TrainConfig":
        """The config of a YAML file (None: the defaults), with ``overrides`` that are not None."""
        data = {}
        if path is not None:
            try:
                data = yaml.safe_load(Path(path).read_text()) or {}
            except (OSError, yaml.YAMLError) as err:
                raise MmtokError(f"{path}: cannot read the training config ({err})") from None
            if not isinstance(data, dict):
                raise MmtokError(f"{path}: the training config must be a mapping of settings, "
                                 f"found a {type(data).__name__}")
        data.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise MmtokError("\n".join(f"{path or 'config'}: {p}" for p in problems(err))) from None
