"""Configuration of the shared model: the token streams it sees, its size, its masking budgets.

Everything is a pydantic model with ``extra="forbid"`` so a typo in a YAML file is an error, not a
silently ignored setting.
"""

import math

from pydantic import ConfigDict, Field, model_validator

from mmtok.config import StrictModel

__all__ = ["MaskingConfig", "ModelConfig", "StreamBudget", "StreamSpec"]


class _Frozen(StrictModel):
    model_config = ConfigDict(frozen=True)


class StreamSpec(_Frozen):
    """One token stream as the model sees it (read from a token folder's ``index.json``).

    vocab_size: codebook size of a discrete stream; None for a continuous one.
    grid: token grid, e.g. (7, 7) for an image, (35,) for a spectrum; prod(grid) tokens.
    dim: width of each continuous token (None for discrete streams).
    """

    vocab_size: int | None = Field(default=None, ge=2)
    grid: tuple[int, ...]
    dim: int | None = Field(default=None, ge=1)

    @property
    def num_tokens(self) -> int:
        return math.prod(self.grid)

    @property
    def is_discrete(self) -> bool:
        return self.vocab_size is not None

    @model_validator(mode="after")
    def _one_kind(self) -> "StreamSpec":
        if (self.vocab_size is None) == (self.dim is None):
            raise ValueError("a stream has either vocab_size (discrete) or dim (continuous)")
        if not self.grid or any(g < 1 for g in self.grid):
            raise ValueError(f"grid must be non-empty positive sizes, found {self.grid}")
        return self


class ModelConfig(_Frozen):
    """Size of `MultimodalMaskedTransformer` (4M-B is d_model 768, 12 + 12 layers)."""

    d_model: int = Field(default=256, ge=8, description="width of every token embedding and layer")
    num_heads: int = Field(default=4, ge=1, description="attention heads (must divide d_model)")
    encoder_depth: int = Field(default=4, ge=1, description="encoder blocks (over the input tokens)")
    decoder_depth: int = Field(default=2, ge=1, description="decoder blocks (target queries cross-attend to the encoder)")
    mlp_ratio: float = Field(default=4.0, gt=0, description="MLP hidden width / d_model")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="dropout in attention and MLP")
    #: loss of continuous targets: "mse" or "l1"
    continuous_loss: str = Field(default="mse", pattern="^(mse|l1)$", description="loss of continuous targets")

    @model_validator(mode="after")
    def _heads_divide(self) -> "ModelConfig":
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by num_heads {self.num_heads}")
        return self


class StreamBudget(_Frozen):
    """Per-stream overrides of the masking budgets."""

    alpha: float | None = Field(default=None, gt=0, description="this stream's Dirichlet concentration (default: masking.alpha)")
    min_input: int = Field(default=0, ge=0, description="at least this many of its tokens are inputs when present")
    max_input: int | None = Field(default=None, ge=0, description="at most this many of its tokens are inputs (0: never an input)")
    min_target: int = Field(default=0, ge=0, description="at least this many of its tokens are targets when present")
    max_target: int | None = Field(default=None, ge=0, description="at most this many of its tokens are targets (0: never a target)")


class MaskingConfig(_Frozen):
    """4M's multimodal masking: per sample, a Dirichlet(alpha) draw over the *present* streams
    splits ``input_budget`` visible tokens, and another draw splits ``target_budget`` target
    tokens among the tokens left. Per-stream minimum / maximum counts apply first; whatever a full
    stream cannot take goes to the other present streams. A sample always keeps at least one token
    as a target when it has two or more tokens."""

    input_budget: int = Field(default=64, ge=1, description="visible (encoder) tokens per sample")
    target_budget: int = Field(default=64, ge=1, description="predicted (decoder) tokens per sample")
    alpha: float = Field(default=1.0, gt=0, description="Dirichlet concentration: small = few streams per "
                                                          "sample take most of a budget, large = even split")
    streams: dict[str, StreamBudget] = Field(default_factory=dict, description="per-stream budget overrides")
    #: the "predict X from Y" preset: these streams are never inputs, and every one of their tokens
    #: a sample has is a target, on top of ``target_budget`` (which the other streams share)
    target_streams: list[str] = Field(default_factory=list, description="streams that are never an input and "
                                                                        "always a target")

    @model_validator(mode="after")
    def _targets_not_budgeted(self) -> "MaskingConfig":
        clash = sorted(k for k in self.target_streams
                       if k in self.streams and (self.streams[k].min_input or self.streams[k].max_input))
        if clash:
            raise ValueError(f"target_streams {clash} are never inputs, but masking.streams gives them "
                             "min_input / max_input; remove one of the two")
        if len(set(self.target_streams)) != len(self.target_streams):
            raise ValueError(f"target_streams lists a stream twice: {self.target_streams}")
        return self
