"""Scalar codec: quantile (CDF) binning of each column, as AION does for catalogue values.

Each of the ``c`` columns of ``x: (b, c)`` becomes one token: the index of its bin among
``num_bins`` equal-probability bins of the training distribution. Decoding returns the mean of
the training values in that bin. An exact codec: no network, no quantizer; the bin tables are
fitted by `fit_statistics` (``mmtok.fit_codec`` calls it), which refuses tied values that would
merge bins of a discrete column (use `CategoricalCodec` for discrete values and class labels)
and warns when ties leave many bins of a continuous column unused.

    encode: x (b, c) -> ids (b, c) in [0, num_bins)
    decode: ids (b, c) -> x_hat (b, c)
"""

import warnings
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
    columns: int = Field(ge=1, description="number of columns")
    num_bins: int = Field(256, ge=2, description="equal-probability bins per column (the vocabulary)")


class ScalarCodec(Codec):
    """Per-column equal-probability bins. Buffers: edges (c, num_bins - 1), centers (c, num_bins)."""

    config_class = ScalarCodecConfig
    family: ClassVar[str] = "scalar-quantile"
    tokenwise: ClassVar[bool] = True
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
        """Fit each column's bin edges (quantiles) and bin means. Refuses tied values that would
        merge distinct training values into one token although bins were free for them (a
        discrete column or class label: use the exact ``categorical`` codec); warns when ties leave
        more than a tenth of the bins of a continuous column unused."""
        x = self.preprocess(m).double()
        k = self.config.num_bins
        q = torch.linspace(0, 1, k + 1, dtype=x.dtype)[1:-1]
        edges = torch.quantile(x, q, dim=0).T
        # float32 edges rounded up, never down: an edge between two values stays above the lower one
        low = edges.float()
        edges = torch.where(low.double() < edges, torch.nextafter(low, torch.tensor(float("inf"))), low)
        ids = self.bins(x.float(), edges)
        self.check_merged_bins(x, ids, getattr(m, "column_names", None))
        centers = torch.empty(x.shape[1], k)
        for col in range(x.shape[1]):
            sums = torch.zeros(k, dtype=x.dtype).index_add_(0, ids[:, col], x[:, col])
            counts = torch.bincount(ids[:, col], minlength=k).to(x.dtype)
            lo = torch.cat([x[:, col].min().view(1), edges[col].double()])
            hi = torch.cat([edges[col].double(), x[:, col].max().view(1)])
            centers[col] = torch.where(counts > 0, sums / counts.clamp_min(1), (lo + hi) / 2).float()
        self.edges.copy_(edges)
        self.centers.copy_(centers)
        self.fitted.fill_(True)

    def check_merged_bins(self, x: Tensor, ids: Tensor, names: tuple[str, ...] | None = None) -> None:
        """x (b, c) training values, ids (b, c) their bins. Per column, with ``d`` distinct values
        and ``u`` bins used of ``num_bins``: ``u < min(d, num_bins)`` means tied values merged
        bins. That is an error when the column is discrete (``d <= num_bins``: every value could
        have had its own token) or collapses to one token; otherwise a warning when more than a
        tenth of the bins are lost (fewer are visible in the fit report's codes used)."""
        k = self.config.num_bins
        for col in range(x.shape[1]):
            values = torch.unique(x[:, col])
            d, u = len(values), len(torch.unique(ids[:, col]))
            if u >= min(d, k):
                continue
            what = f"{self.name}: column {col}" + (f" ({names[col]!r})" if names and col < len(names) else "")
            shown = ", ".join(f"{v:g}" for v in values[:8].tolist()) + (", ..." if d > 8 else "")
            if d <= k or u == 1:
                raise CodecError(
                    f"{what} has {d} distinct training values ({shown}) but tied values merge its "
                    f"quantile bins: they get only {u} of {k} tokens, so different values would share a "
                    "token; use the exact 'categorical' codec for discrete values and class labels")
            if u < 0.9 * k:
                warnings.warn(f"{what}: tied training values merge quantile bins; its {d} distinct values "
                              f"use only {u} of {k} tokens (tokens stay valid but coarser than "
                              f"num_bins={k} suggests)", stacklevel=2)

    def _require_fitted(self) -> None:
        if not bool(self.fitted):
            raise CodecError(f"{self.name}: quantile bins are not fitted; run mmtok.fit_codec "
                             "(or codec.fit_statistics) on real data first")

    def bins(self, x: Tensor, edges: Tensor | None = None) -> Tensor:
        """x (b, c) -> bin ids (b, c) (with the fitted edges, or ``edges`` (c, num_bins - 1))."""
        edges = (self.edges if edges is None else edges).to(x.dtype)
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
        self._require_fitted()
        return self.modality(**{self.field: self.values(stream.ids), **fields})

    def reconstruction_loss(self, x: Tensor, x_hat: Tensor) -> Tensor:
        """Mean squared error in units of each column's standard deviation over the batch."""
        std = x.std(dim=0).clamp_min(1e-6)
        return (((x_hat - x) / std) ** 2).mean()
