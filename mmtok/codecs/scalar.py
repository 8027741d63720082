"""Scalar codec: quantile (CDF) binning of each column, as AION does for catalogue values.

Each of the ``c`` columns of ``x: (b, c)`` becomes one token: the index of its bin among
``num_bins`` equal-probability bins of the training distribution. Decoding returns the mean of
the training values in that bin. No neural network and no vector quantizer: the binning is the
quantizer, fitted by `fit_statistics` (``mmtok.fit_codec`` calls it).

    encode: x (b, c) -> ids (b, c) in [0, num_bins)
    decode: ids (b, c) -> x_hat (b, c)
"""

from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from mmtok.codec import Codec, CodecConfig, CodecOutput, inference
from mmtok.errors import CodecError
from mmtok.modality import Modality
from mmtok.quantize import ContinuousConfig
from mmtok.tokens import TokenStream

__all__ = ["ScalarCodecConfig", "ScalarCodec"]


class ScalarCodecConfig(CodecConfig):
    columns: int = Field(ge=1)
    num_bins: int = Field(256, ge=2)
    quantizer: ContinuousConfig = Field(default_factory=ContinuousConfig,
                                        description="unused: the quantile binning is the quantizer")


class QuantileBinning(nn.Module):
    """Per-column equal-probability bins. edges: (c, num_bins - 1), centers: (c, num_bins)."""

    depth = 1

    def __init__(self, columns: int, num_bins: int):
        super().__init__()
        self.vocab_size = num_bins
        self.is_discrete = True
        self.register_buffer("edges", torch.zeros(columns, num_bins - 1))
        self.register_buffer("centers", torch.zeros(columns, num_bins))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def fit(self, x: Tensor) -> None:
        x = x.double()
        k = self.vocab_size
        q = torch.linspace(0, 1, k + 1, dtype=x.dtype)[1:-1]
        self.edges.copy_(torch.quantile(x, q, dim=0).T)
        ids = self.bin(x.float())
        for col in range(x.shape[1]):
            sums = torch.zeros(k, dtype=x.dtype).index_add_(0, ids[:, col], x[:, col])
            counts = torch.bincount(ids[:, col], minlength=k).to(x.dtype)
            lo = torch.cat([x[:, col].min().view(1), self.edges[col].double()])
            hi = torch.cat([self.edges[col].double(), x[:, col].max().view(1)])
            self.centers[col] = torch.where(counts > 0, sums / counts.clamp_min(1), (lo + hi) / 2).float()
        self.fitted.fill_(True)

    def bin(self, x: Tensor) -> Tensor:
        edges = self.edges.to(x.dtype)
        return torch.stack([torch.bucketize(x[:, c].contiguous(), edges[c], right=True)
                            for c in range(x.shape[1])], dim=1)

    def values(self, ids: Tensor) -> Tensor:
        """ids (b, c) -> bin means (b, c)."""
        return self.centers.gather(1, ids.T).T


class ScalarCodec(Codec):
    config_class = ScalarCodecConfig
    family: ClassVar[str] = "scalar-quantile"
    trainable: ClassVar[bool] = False

    def __init__(self, config, modality: type[Modality] | None = None, name: str | None = None):
        super().__init__(config, modality, name)
        self.quantizer = QuantileBinning(self.config.columns, self.config.num_bins)

    @property
    def token_grid(self) -> tuple[int, ...]:
        return (self.config.columns,)

    def preprocess(self, m: Modality) -> Tensor:
        return self.read_field(m, (self.config.columns,))

    def fit_statistics(self, m: Modality) -> None:
        self.quantizer.fit(self.preprocess(m))

    def _require_fitted(self) -> None:
        if not bool(self.quantizer.fitted):
            raise CodecError(f"{self.name}: quantile bins are not fitted; run mmtok.fit_codec "
                             "(or codec.fit_statistics) on real data first")

    def forward(self, m: Modality) -> CodecOutput:
        self.check_input(m)
        self._require_fitted()
        x = self.preprocess(m)
        ids = self.quantizer.bin(x)
        return CodecOutput(x, self.quantizer.values(ids), ids, x.new_zeros(()))

    @inference
    def encode(self, m: Modality) -> TokenStream:
        out = self.forward(m)
        return TokenStream(grid=self.grid, present=torch.ones(len(out.ids), dtype=torch.bool),
                           ids=out.ids, vocab_size=self.vocab_size, codec=self.name,
                           fingerprint=self.fingerprint())

    @inference
    def decode(self, stream: TokenStream, **fields) -> Modality:
        self.check_stream(stream)
        self._require_fitted()
        return self.postprocess(self.quantizer.values(stream.ids), **fields)

    def reconstruction_loss(self, out: CodecOutput) -> Tensor:
        std = out.x.std(dim=0).clamp_min(1e-6)
        return (((out.x_hat - out.x) / std) ** 2).mean()
