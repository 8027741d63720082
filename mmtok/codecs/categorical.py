"""Categorical codec: exact tokens for discrete values and class labels.

Each of the ``c`` columns of ``x: (b, c)`` becomes one token: the index of its value among that
column's categories, the distinct values seen at fit time (sorted ascending). Decoding returns
the category itself, so ``decode(encode(x)) == x`` exactly. A value not seen at fit time is an
error naming it, the sample and the known categories, never a nearest guess. An exact codec: no
network, no quantizer; `fit_statistics` (``mmtok fit-codec``) fits the category table, which
travels in ``model.safetensors``.

    encode: x (b, c) -> ids (b, c), column j in [0, categories of j) within [0, num_categories)
    decode: ids (b, c) -> x (b, c)
"""

from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor

from mmtok.codec import Codec, CodecConfig, eval_mode
from mmtok.errors import CodecError, ModalityError
from mmtok.modalities import Scalars
from mmtok.modality import Modality
from mmtok.tokens import TokenStream

__all__ = ["CategoricalCodecConfig", "CategoricalCodec"]


class CategoricalCodecConfig(CodecConfig):
    columns: int = Field(ge=1, description="number of columns")
    num_categories: int = Field(16, ge=2, description="vocabulary: the most categories one column may have")


def _listed(values: Tensor, limit: int = 12) -> str:
    shown = ", ".join(f"{v:g}" for v in values[:limit].tolist())
    return f"[{shown}{', ...' if len(values) > limit else ''}]"


class CategoricalCodec(Codec):
    """One exact token per column. Buffers: categories (c, num_categories) float64 (each row
    sorted, padded with zeros), counts (c,) the number of categories of each column, fitted."""

    config_class = CategoricalCodecConfig
    family: ClassVar[str] = "categorical"
    default_modality = Scalars

    def __init__(self, config, modality: type[Modality] | None = None, name: str | None = None):
        super().__init__(config, modality, name)
        c, k = self.config.columns, self.config.num_categories
        self.register_buffer("categories", torch.zeros(c, k, dtype=torch.float64))
        self.register_buffer("counts", torch.zeros(c, dtype=torch.long))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @property
    def grid(self) -> tuple[int, ...]:
        return (self.config.columns,)

    @property
    def vocab_size(self) -> int:
        return self.config.num_categories

    def preprocess(self, m: Modality) -> Tensor:
        return self.read_field(m, (self.config.columns,))

    def _values(self, m: Modality) -> Tensor:
        """The field (b, c) as float64: exact for every float32 value and integer up to 2**53."""
        self.read_field(m, (self.config.columns,))  # shape check
        return getattr(m, self.field).double()

    def column_categories(self, col: int) -> Tensor:
        """The sorted categories of column ``col``."""
        return self.categories[col, :int(self.counts[col])]

    def _column(self, m: Modality | None, col: int) -> str:
        names = getattr(m, "column_names", None) if m is not None else None
        return f"column {col}" + (f" ({names[col]!r})" if names and col < len(names) else "")

    @torch.no_grad()
    def fit_statistics(self, m: Modality) -> None:
        """Each column's categories: its distinct values in ``m``."""
        x, k = self._values(m), self.config.num_categories
        if not len(x):
            raise CodecError(f"{self.name}: cannot fit categories on an empty batch")
        table = torch.zeros_like(self.categories)
        counts = torch.zeros_like(self.counts)
        for col in range(x.shape[1]):
            values = torch.unique(x[:, col])
            if len(values) > k:
                raise CodecError(f"{self.name}: {self._column(m, col)} has {len(values)} distinct values "
                                 f"{_listed(values)}, more than num_categories={k}; raise num_categories, "
                                 "or use a quantile codec (scalar-quantile) for continuous values")
            table[col, :len(values)] = values
            counts[col] = len(values)
        self.categories.copy_(table)
        self.counts.copy_(counts)
        self.fitted.fill_(True)

    def _require_fitted(self) -> None:
        if not bool(self.fitted):
            raise CodecError(f"{self.name}: categories are not fitted; run mmtok fit-codec "
                             "(or codec.fit_statistics) on the training data first")

    @eval_mode
    def encode(self, m: Modality) -> TokenStream:
        self.check_input(m)
        self._require_fitted()
        x = self._values(m).to(self.categories.device)
        ids = torch.empty(x.shape, dtype=torch.long, device=x.device)
        for col in range(x.shape[1]):
            cats = self.column_categories(col)
            pos = torch.searchsorted(cats, x[:, col].contiguous()).clamp_max(len(cats) - 1)
            unknown = (cats[pos] != x[:, col]).nonzero()
            if len(unknown):
                i = int(unknown[0])
                raise ModalityError(f"{self.name}: sample {i} of the batch, {self._column(m, col)}: value "
                                    f"{float(x[i, col]):g} is not a category seen at fit time; known categories "
                                    f"are {_listed(cats)} ({len(unknown)} unknown value(s) in this batch); "
                                    "re-fit the codec on data that has it")
            ids[:, col] = pos
        return self.stream(ids=ids)

    @eval_mode
    def decode(self, stream: TokenStream, **fields) -> Modality:
        self._require_fitted()
        ids = stream.ids.to(self.categories.device)
        free = (ids >= self.counts).nonzero()  # ids within the vocabulary but past a column's categories
        if len(free):
            i, col = (int(v) for v in free[0])
            raise CodecError(f"{self.name}: sample {i}, {self._column(None, col)}: token id {int(ids[i, col])} "
                             f"names no category; the column has {int(self.counts[col])} "
                             f"{_listed(self.column_categories(col))}")
        values = self.categories.gather(1, ids.T).T.float()
        return self.modality(**{self.field: values, **fields})

    def reconstruction_loss(self, x: Tensor, x_hat: Tensor) -> Tensor:
        """Fraction of values decoded to another category (0 for this exact codec)."""
        return (x_hat != x).float().mean()
