"""Scalar codec: quantile (CDF) binning of each column, as AION does for catalogue values.

Each of the ``c`` columns of ``x: (b, c)`` becomes one token: the index of its bin among
``num_bins`` equal-probability bins of the training distribution. Decoding returns the mean of
the training values in that bin. An exact codec: no network, no quantizer; the bin tables are
fitted by `fit_statistics` (``mmtok.fit_codec`` calls it).

    encode: x (b, c) -> ids (b, c) in [0, num_bins)
    decode: ids (b, c) -> x_hat (b, c)
"""

from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor

from mmtok.codec import Codec, CodecConfig, eval_mode
from mmtok.errors import CodecError
from mmtok.modalities import Scalars
from mmtok.modality import Modality
from mmtok.tokens import TokenStream

__all__ = ["ScalarCodecConfig", "ScalarCodec"]


class ScalarCodecConfig(CodecConfig):
    columns: int = Field(ge=1)
    num_bins: int = Field(256, ge=2)


class ScalarCodec(Codec):
    """Per-column equal-probability bins. Buffers: edges (c, num_bins - 1), centers (c, num_bins)."""

    config_class = ScalarCodecConfig
    family: ClassVar[str] = "scalar-quantile"
    default_modality = Scalars

    def __init__(self, config, modality: type[Modality] | None = None, name: str | None = None):
        super().__init__(config, modality, name)
        c, k = self.config.columns, self.config.num_bins
        self.register_buffer("edges", torch.zeros(c, k - 1))
        self.register_buffer("centers", torch.zeros(c, k))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @property
    def grid(self) -> tuple[int, ...]:
        return (self.config.columns,)

    @property
    def vocab_size(self) -> int:
        return self.config.num_bins

    def preprocess(self, m: Modality) -> Tensor:
        return self.read_field(m, (self.config.columns,))

    @torch.no_grad()
    def fit_statistics(self, m: Modality) -> None:
        x = self.preprocess(m).double()
        k = self.config.num_bins
        q = torch.linspace(0, 1, k + 1, dtype=x.dtype)[1:-1]
        self.edges.copy_(torch.quantile(x, q, dim=0).T)
        ids = self.bins(x.float())
        for col in range(x.shape[1]):
            sums = torch.zeros(k, dtype=x.dtype).index_add_(0, ids[:, col], x[:, col])
            counts = torch.bincount(ids[:, col], minlength=k).to(x.dtype)
            lo = torch.cat([x[:, col].min().view(1), self.edges[col].double()])
            hi = torch.cat([self.edges[col].double(), x[:, col].max().view(1)])
            self.centers[col] = torch.where(counts > 0, sums / counts.clamp_min(1), (lo + hi) / 2).float()
        self.fitted.fill_(True)

    def _require_fitted(self) -> None:
        if not bool(self.fitted):
            raise CodecError(f"{self.name}: quantile bins are not fitted; run mmtok.fit_codec "
                             "(or codec.fit_statistics) on real data first")

    def bins(self, x: Tensor) -> Tensor:
        """x (b, c) -> bin ids (b, c)."""
        edges = self.edges.to(x.dtype)
        return torch.stack([torch.bucketize(x[:, c].contiguous(), edges[c], right=True)
                            for c in range(x.shape[1])], dim=1)

    def values(self, ids: Tensor) -> Tensor:
        """ids (b, c) -> bin means (b, c)."""
        return self.centers.gather(1, ids.T).T

    @eval_mode
    def encode(self, m: Modality) -> TokenStream:
        self.check_input(m)
        self._require_fitted()
        return self.stream(ids=self.bins(self.preprocess(m)))

    @eval_mode
    def decode(self, stream: TokenStream, **fields) -> Modality:
        self.check_stream(stream)
        self._require_fitted()
        return self.modality(**{self.field: self.values(stream.ids), **fields})

    def reconstruction_loss(self, x: Tensor, x_hat: Tensor) -> Tensor:
        """Mean squared error in units of each column's standard deviation over the batch."""
        std = x.std(dim=0).clamp_min(1e-6)
        return (((x_hat - x) / std) ** 2).mean()
