"""Table codec: several numeric columns of one table row -> a few tokens.

    x: (b, c) --ChannelNorm--> MLP --> z: (b, num_tokens, latent_dim) --quantizer--> z_q
    z_q --> MLP --> x_hat: (b, c)

Columns are encoded jointly, so the tokens can exploit correlations between them (e.g. the six
serum measurements of a lab panel); use `ScalarCodec` for one independent token per column.
"""

from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from mmtok.codec import ChannelNorm, NeuralCodec, NeuralCodecConfig
from mmtok.modalities import Scalars
from mmtok.modality import Modality
from mmtok.quantize import build_quantizer

__all__ = ["TableCodecConfig", "TableCodec"]


class TableCodecConfig(NeuralCodecConfig):
    columns: int = Field(ge=1, description="number of columns")
    num_tokens: int = Field(2, ge=1, description="tokens per row")
    hidden: int = Field(128, ge=1, description="MLP width")
    latent_dim: int = Field(4, ge=1, description="width of each latent before quantization")
    norm: str = Field("standard", pattern="^(standard|none)$", description="per-column z-score fitted on the data, or none")


def _mlp(i: int, h: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, h), nn.GELU(), nn.Linear(h, h), nn.GELU(), nn.Linear(h, o))


class TableCodec(NeuralCodec):
    """x: (b, columns) -> num_tokens tokens."""

    config_class = TableCodecConfig
    family: ClassVar[str] = "table-mlp"
    default_modality = Scalars

    def __init__(self, config, modality: type[Modality] | None = None, name: str | None = None):
        super().__init__(config, modality, name)
        cfg: TableCodecConfig = self.config
        self.norm = ChannelNorm(cfg.columns, cfg.norm)
        n, d = cfg.num_tokens, cfg.latent_dim
        self.encoder = nn.Sequential(_mlp(cfg.columns, cfg.hidden, n * d), nn.Unflatten(1, (n, d)))
        self.quantizer = build_quantizer(cfg.quantizer, d)
        self.decoder = nn.Sequential(nn.Flatten(1), _mlp(n * d, cfg.hidden, cfg.columns))

    @property
    def token_grid(self) -> tuple[int, ...]:
        return (self.config.num_tokens,)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.config.columns,)
