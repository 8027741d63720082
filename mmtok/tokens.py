"""`TokenStream` (what a codec emits for one batch) and `TokenBatch` (token key -> stream).

A stream is either discrete (``ids: (b, n)`` int64 in ``[0, vocab_size)``) or continuous
(``values: (b, n, d)`` float). ``grid`` is the token grid (its product is ``n``), used for
positional encodings: ``(16, 16)`` for a 2D patch grid, ``(n_positions, depth)`` for a residual
quantizer. ``present: (b,)`` says which samples really have this modality; a missing modality is
``present=False`` with zero-filled tokens, never a shorter Python list.
"""

import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import Tensor

from mmtok.errors import CodecError

__all__ = ["TokenStream", "TokenBatch"]


@dataclasses.dataclass(frozen=True, eq=False)
class TokenStream:
    """Tokens of one stream for a batch of ``b`` samples.

    ids: (b, n) int64 or None; values: (b, n, d) float or None (exactly one is set).
    vocab_size: size of the discrete vocabulary (None for continuous streams).
    grid: token grid, ``math.prod(grid) == n``.
    present: (b,) bool.
    codec: name of the codec that produced it; fingerprint: that codec's fingerprint.
    """

    grid: tuple[int, ...]
    present: Tensor
    ids: Tensor | None = None
    values: Tensor | None = None
    vocab_size: int | None = None
    codec: str | None = None
    fingerprint: str | None = None

    def __post_init__(self) -> None:
        if (self.ids is None) == (self.values is None):
            raise CodecError("TokenStream needs exactly one of `ids` (discrete) or `values` (continuous)")
        tokens = self.ids if self.ids is not None else self.values
        want_ndim = 2 if self.ids is not None else 3
        if tokens.ndim != want_ndim:
            raise CodecError(f"TokenStream.{'ids' if self.ids is not None else 'values'}: expected "
                             f"{want_ndim} dims, found shape {tuple(tokens.shape)}")
        b, n = tokens.shape[:2]
        if math.prod(self.grid) != n:
            raise CodecError(f"TokenStream: grid {self.grid} has {math.prod(self.grid)} cells "
                             f"but there are {n} tokens")
        if self.present.dtype != torch.bool or tuple(self.present.shape) != (b,):
            raise CodecError(f"TokenStream.present: expected bool of shape ({b},), found "
                             f"{self.present.dtype} {tuple(self.present.shape)}")
        if self.ids is not None:
            if self.ids.dtype != torch.long:
                raise CodecError(f"TokenStream.ids: expected int64, found {self.ids.dtype}")
            if self.vocab_size is None or self.vocab_size < 1:
                raise CodecError("TokenStream: discrete ids need a positive vocab_size")
        elif not self.values.is_floating_point():
            raise CodecError(f"TokenStream.values: expected float, found {self.values.dtype}")

    @property
    def is_discrete(self) -> bool:
        return self.ids is not None

    @property
    def tokens(self) -> Tensor:
        """ids (b, n) or values (b, n, d)."""
        return self.ids if self.ids is not None else self.values

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[1])

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def __getitem__(self, index: int | slice | Tensor) -> "TokenStream":
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return dataclasses.replace(
            self,
            present=self.present[index],
            ids=None if self.ids is None else self.ids[index],
            values=None if self.values is None else self.values[index],
        )

    def to(self, device: torch.device | str) -> "TokenStream":
        return dataclasses.replace(
            self,
            present=self.present.to(device),
            ids=None if self.ids is None else self.ids.to(device),
            values=None if self.values is None else self.values.to(device),
        )

    @classmethod
    def absent(cls, like: "TokenStream", batch_size: int) -> "TokenStream":
        """A stream of ``batch_size`` samples that all lack this modality (zero tokens)."""
        shape = (batch_size, *like.tokens.shape[1:])
        zeros = torch.zeros(shape, dtype=like.tokens.dtype, device=like.tokens.device)
        return dataclasses.replace(
            like,
            present=torch.zeros(batch_size, dtype=torch.bool, device=zeros.device),
            ids=zeros if like.is_discrete else None,
            values=None if like.is_discrete else zeros,
        )

    @classmethod
    def cat(cls, streams: Sequence["TokenStream"]) -> "TokenStream":
        """Concatenate batches of the same stream."""
        first = streams[0]
        for s in streams[1:]:
            if (s.grid, s.vocab_size, s.is_discrete) != (first.grid, first.vocab_size, first.is_discrete):
                raise CodecError("TokenStream.cat: streams differ in grid, vocabulary or kind")
        return dataclasses.replace(
            first,
            present=torch.cat([s.present for s in streams]),
            ids=torch.cat([s.ids for s in streams]) if first.is_discrete else None,
            values=None if first.is_discrete else torch.cat([s.values for s in streams]),
        )


class TokenBatch(Mapping[str, TokenStream]):
    """Token key -> `TokenStream`, all with the same batch size: what `mmtok.TokenShards` reads,
    what the shared transformer, its heads and inference take. A stream missing from the batch is
    absent from every sample."""

    def __init__(self, streams: Mapping[str, TokenStream]):
        sizes = {k: len(s) for k, s in streams.items()}
        if len(set(sizes.values())) > 1:
            raise CodecError(f"TokenBatch: streams have different batch sizes {sizes}")
        self._streams = dict(streams)

    def __getitem__(self, key: str) -> TokenStream:
        try:
            return self._streams[key]
        except KeyError:
            raise KeyError(f"no token stream {key!r}; streams are {sorted(self._streams)}") from None

    def __contains__(self, key: object) -> bool:
        return key in self._streams

    def get(self, key: str, default: TokenStream | None = None) -> TokenStream | None:
        return self._streams.get(key, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._streams)

    def __len__(self) -> int:
        return len(self._streams)

    @property
    def batch_size(self) -> int:
        return len(next(iter(self._streams.values()))) if self._streams else 0

    def present(self) -> Tensor:
        """(b, n_streams) bool, columns in key order."""
        return torch.stack([s.present for s in self._streams.values()], dim=1)

    def to(self, device: torch.device | str) -> "TokenBatch":
        return TokenBatch({k: s.to(device) for k, s in self._streams.items()})

    def replace(self, **streams: TokenStream) -> "TokenBatch":
        """A batch with some streams added or replaced (by key)."""
        return TokenBatch({**self._streams, **streams})

    def without(self, keys: Sequence[str]) -> "TokenBatch":
        """A batch whose streams ``keys`` are absent from every sample (``present`` all False)."""
        drop = set(keys)
        return TokenBatch({k: dataclasses.replace(s, present=torch.zeros_like(s.present)) if k in drop else s
                           for k, s in self._streams.items()})

    def __repr__(self) -> str:
        parts = [f"{k}: {'ids' if s.is_discrete else 'values'}{tuple(s.tokens.shape)}"
                 for k, s in self._streams.items()]
        return f"TokenBatch({', '.join(parts)})"
