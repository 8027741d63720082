"""The training config of ``mmtok train`` (YAML file, ``--config``): model size, masking,
optimiser, streams / bundle / heads, schedule, precision."""

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator

from mmtok.config import StrictModel, problems
from mmtok.errors import MmtokError
from mmtok.model import MaskingConfig, ModelConfig

__all__ = ["HeadConfig", "OptimConfig", "TrainConfig"]


class OptimConfig(StrictModel):
    """AdamW with linear warm-up then cosine decay to ``min_lr_ratio * lr``."""

    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.05, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = Field(default=50, ge=0)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    clip_grad: float | None = Field(default=1.0, gt=0)


class HeadConfig(StrictModel):
    """A head from a plugin (`mmtok.hookspecs.HeadSpec`), trained jointly: total loss =
    masked-modelling loss + weight * head loss."""

    head: str
    weight: float = Field(default=1.0, ge=0)
    config: dict[str, Any] = Field(default_factory=dict)


class TrainConfig(StrictModel):
    model: ModelConfig = Field(default_factory=ModelConfig)
    masking: MaskingConfig = Field(default_factory=MaskingConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    #: streams to train on (default: every stream of the token folder)
    streams: list[str] | None = None
    #: a bundle name from a plugin: its streams and heads
    bundle: str | None = None
    heads: dict[str, HeadConfig] = Field(default_factory=dict)
    batch_size: int = Field(default=64, ge=1, description="global batch (all ranks together)")
    max_steps: int = Field(default=1000, ge=1)
    seed: int = 0
    val_fraction: float = Field(default=0.1, ge=0, lt=1, description="share of samples held out (by id hash)")
    #: regular expression whose first group is hashed instead of the whole sample id, so that a whole
    #: patient / record / region is held out together (e.g. "^(p\\d+)-" for ids like "p07-beat0123")
    val_group: str | None = Field(default=None, description="regex: hash this part of the id for the split")
    eval_every: int = Field(default=100, ge=1)
    eval_batches: int = Field(default=20, ge=1)
    log_every: int = Field(default=10, ge=1)
    checkpoint_every: int = Field(default=100, ge=1)
    keep_checkpoints: int = Field(default=2, ge=1)
    precision: str = Field(default="auto", pattern="^(auto|fp32|bf16)$")
    compile: bool = False
    fsdp: bool = False
    device: str | None = None

    @field_validator("val_group")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as err:
                raise ValueError(f"val_group {v!r} is not a regular expression ({err})") from None
        return v

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
