"""Where every token lives in the model's sequence, and 4M-style input / target masking.

All streams of a sample are laid out in one sequence of ``N = sum(num_tokens)`` slots, stream
after stream in a fixed order (`StreamLayout`). A `Masks` picks, per sample, up to ``K_in``
slots for the encoder and up to ``K_tgt`` slots for the decoder, as index tensors padded to a
fixed length, so the model runs on static shapes with no Python loop over samples.
"""

import dataclasses
import itertools

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from mmtok.errors import MmtokError
from mmtok.model.config import MaskingConfig, StreamSpec

__all__ = ["MaskDraw", "MaskSampler", "Masks", "StreamLayout"]


class StreamLayout:
    """Slots of each stream in the concatenated sequence, and the shared vocabulary offsets.

    start[s], size[s]: the slots of stream s are start[s] ... start[s] + size[s] - 1.
    stream_of: (N,) stream index of every slot.
    vocab_offset[s]: discrete ids of stream s live at vocab_offset[s] + id in one joint vocabulary
    of ``total_vocab`` entries (continuous streams take none).
    """

    def __init__(self, streams: dict[str, StreamSpec]):
        if not streams:
            raise MmtokError("the model needs at least one token stream")
        self.streams = dict(streams)
        self.keys = list(streams)
        sizes = [s.num_tokens for s in streams.values()]
        self.size = torch.tensor(sizes)
        self.start = torch.tensor([0, *itertools.accumulate(sizes)][:-1])
        self.total = sum(sizes)
        self.stream_of = torch.repeat_interleave(torch.arange(len(sizes)), self.size)
        offsets, v = [], 0
        for spec in streams.values():
            offsets.append(v)
            v += spec.vocab_size or 0
        self.vocab_offset = torch.tensor(offsets)
        self.total_vocab = v
        self.discrete = torch.tensor([s.is_discrete for s in streams.values()])
        starts = [0, *itertools.accumulate(sizes)]
        self._slots = {k: slice(starts[i], starts[i + 1]) for i, k in enumerate(self.keys)}  # plain ints:
        # no tensor -> int conversion inside the model, so torch.compile keeps one graph

    def __len__(self) -> int:
        return len(self.keys)

    def index(self, key: str) -> int:
        if key not in self.streams:
            raise MmtokError(f"no stream {key!r}; the model knows {self.keys}")
        return self.keys.index(key)

    def slots(self, key: str) -> slice:
        self.index(key)
        return self._slots[key]

    def gather(self, key: str, tokens: Tensor, idx: Int[Tensor, "b k"]) -> tuple[Tensor, Bool[Tensor, "b k"]]:
        """Stream ``key``'s tokens at sequence slots ``idx``: ``tokens`` is (b, n_key) or
        (b, n_key, d); returns them at (b, k[, d]) and which slots belong to the stream (the
        others hold an arbitrary token of it)."""
        sl = self._slots[key]
        local = (idx - sl.start).clamp(0, sl.stop - sl.start - 1)
        if tokens.dim() == 3:
            local = local.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])
        return tokens.gather(1, local), (idx >= sl.start) & (idx < sl.stop)


@dataclasses.dataclass
class Masks:
    """Encoder inputs and decoder targets of a batch, as slot indices into the sequence.

    input_idx / input_valid: (b, K_in); target_idx / target_valid: (b, K_tgt). Valid entries come
    first in each row; padding entries point at slot 0 and are ignored.
    """

    input_idx: Int[Tensor, "b k_in"]
    input_valid: Bool[Tensor, "b k_in"]
    target_idx: Int[Tensor, "b k_tgt"]
    target_valid: Bool[Tensor, "b k_tgt"]

    @classmethod
    def from_selection(cls, inputs: Bool[Tensor, "b n"], targets: Bool[Tensor, "b n"],
                       k_in: int | None = None, k_tgt: int | None = None) -> "Masks":
        """Masks from boolean slot selections (widths default to the largest row count)."""
        idx_in, ok_in = _first_true(inputs, k_in)
        idx_tgt, ok_tgt = _first_true(targets, k_tgt)
        return cls(idx_in, ok_in, idx_tgt, ok_tgt)

    def to(self, device) -> "Masks":
        return Masks(self.input_idx.to(device), self.input_valid.to(device), self.target_idx.to(device),
                     self.target_valid.to(device))

    def selection(self, n: int) -> tuple[Bool[Tensor, "b n"], Bool[Tensor, "b n"]]:
        """The boolean (inputs, targets) selections over the n slots."""
        b = self.input_idx.shape[0]
        out = []
        for idx, ok in ((self.input_idx, self.input_valid), (self.target_idx, self.target_valid)):
            sel = torch.zeros(b, n + 1, dtype=torch.bool, device=idx.device)
            sel.scatter_(1, torch.where(ok, idx, n), True)
            out.append(sel[:, :n])
        return out[0], out[1]


def _first_true(sel: Bool[Tensor, "b n"], k: int | None) -> tuple[Tensor, Tensor]:
    """(b, k) indices of the True entries of each row (in slot order), and which are real."""
    counts = sel.sum(1)
    k = int(counts.max()) if k is None else k
    k = max(k, 1)
    # stable sort puts the selected slots first, in order
    order = torch.sort((~sel).to(torch.uint8), dim=1, stable=True).indices
    if order.shape[1] < k:
        order = torch.cat([order, order.new_zeros(order.shape[0], k - order.shape[1])], 1)
    idx = order[:, :k]
    valid = torch.arange(k, device=sel.device) < counts.unsqueeze(1)
    return torch.where(valid, idx, 0), valid


@dataclasses.dataclass
class MaskDraw:
    """The random numbers behind a batch of masks, drawn for a whole global batch so that every
    rank of a distributed run can take its own rows and get the masks a single process would."""

    gamma_in: Float[Tensor, "b s"]
    gamma_tgt: Float[Tensor, "b s"]
    order_in: Float[Tensor, "b s"]
    order_tgt: Float[Tensor, "b s"]
    noise: Float[Tensor, "b n"]

    def __getitem__(self, rows) -> "MaskDraw":
        return MaskDraw(self.gamma_in[rows], self.gamma_tgt[rows], self.order_in[rows], self.order_tgt[rows],
                        self.noise[rows])


class MaskSampler:
    """Samples 4M-style `Masks` for batches of samples with any subset of streams present."""

    def __init__(self, layout: StreamLayout, config: MaskingConfig):
        unknown = sorted((set(config.streams) | set(config.target_streams)) - set(layout.keys))
        if unknown:
            raise MmtokError(f"masking config names unknown stream(s) {unknown}; streams are {layout.keys}")
        self.layout, self.config = layout, config
        per = [config.streams.get(k) for k in layout.keys]
        big = layout.total
        self.alpha = torch.tensor([(p.alpha if p and p.alpha else config.alpha) for p in per])
        self.min_in = torch.tensor([p.min_input if p else 0 for p in per])
        self.max_in = torch.tensor([p.max_input if p and p.max_input is not None else big for p in per])
        self.min_tgt = torch.tensor([p.min_target if p else 0 for p in per])
        self.max_tgt = torch.tensor([p.max_target if p and p.max_target is not None else big for p in per])
        #: target streams: never inputs, every token a target (outside the shared target budget)
        self.always_target = torch.tensor([k in config.target_streams for k in layout.keys])
        self.max_in = torch.where(self.always_target, 0, self.max_in)
        self.max_tgt = torch.where(self.always_target, 0, self.max_tgt)
        for name, lo, budget in (("min_input", self.min_in, config.input_budget),
                                 ("min_target", self.min_tgt, config.target_budget)):
            if int(lo.sum()) > budget:
                raise MmtokError(f"masking: the per-stream {name} values add up to {int(lo.sum())}, "
                                 f"more than the budget {budget}")
        self.k_in = min(config.input_budget, layout.total)
        extra = int(layout.size[self.always_target].sum())
        self.k_tgt = min(config.target_budget + extra, layout.total)

    def draw(self, n: int, seed: int) -> MaskDraw:
        """Random numbers for n samples, a pure function of ``seed`` (CPU, global RNG untouched)."""
        g = torch.Generator().manual_seed(seed)
        s = len(self.layout)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=g)))
            gamma = torch.distributions.Gamma(self.alpha, torch.ones(s))
            gamma_in, gamma_tgt = gamma.sample((n,)), gamma.sample((n,))
        return MaskDraw(gamma_in, gamma_tgt, torch.rand(n, s, generator=g), torch.rand(n, s, generator=g),
                        torch.rand(n, self.layout.total, generator=g))

    def __call__(self, present: Bool[Tensor, "b s"], draw: MaskDraw) -> Masks:
        """Masks for a batch whose stream presence is ``present`` (rows of ``draw`` match)."""
        lay = self.layout
        avail = present.long() * lay.size  # (b, s) tokens each sample has per stream
        total = avail.sum(1)
        # keep at least one target token per sample that has two or more
        in_budget = torch.clamp(torch.minimum(torch.full_like(total, self.config.input_budget),
                                              total - 1), min=1)
        n_in = _allocate(in_budget, avail, draw.gamma_in, draw.order_in, self.min_in, self.max_in)
        n_tgt = _allocate(torch.full_like(total, self.config.target_budget), avail - n_in,
                          draw.gamma_tgt, draw.order_tgt, self.min_tgt, self.max_tgt)
        n_tgt = torch.where(self.always_target, avail, n_tgt)  # every token of a target stream
        # a random rank for every slot within its stream: sort by (stream, noise)
        order = torch.argsort(lay.stream_of.unsqueeze(0) * 2.0 + draw.noise, dim=1)
        rank = torch.arange(lay.total) - lay.start[lay.stream_of]  # rank of sorted position p
        s_of = lay.stream_of.expand_as(order)
        lo = n_in.gather(1, s_of)
        is_in = rank < lo
        is_tgt = (rank >= lo) & (rank < lo + n_tgt.gather(1, s_of))
        inputs = torch.zeros_like(is_in).scatter_(1, order, is_in)
        targets = torch.zeros_like(is_tgt).scatter_(1, order, is_tgt)
        return Masks.from_selection(inputs, targets, self.k_in, self.k_tgt)


def _allocate(budget: Int[Tensor, " b"], avail: Int[Tensor, "b s"], gamma: Tensor, order: Tensor,
              lo: Tensor, hi: Tensor) -> Int[Tensor, "b s"]:
    """Split each row's budget over its streams: per-stream minimum first, then Dirichlet shares
    of the rest (gamma draws normalised over the streams that have room), then what is left over
    goes to streams with room in a random order. Never more than ``min(avail, hi)`` per stream."""
    cap = torch.minimum(avail, hi)
    base = torch.minimum(lo, cap)
    base = torch.minimum(base, budget.unsqueeze(1))  # tiny samples: the minimum can't exceed budget
    room = cap - base
    weights = gamma * (room > 0)
    share = weights / weights.sum(1, keepdim=True).clamp_min(1e-12)
    rest = (budget - base.sum(1)).clamp_min(0)
    extra = torch.minimum(torch.floor(share * rest.unsqueeze(1)).long(), room)
    counts = base + extra
    left = (budget - counts.sum(1)).clamp_min(0)
    room = cap - counts
    perm = torch.argsort(order, dim=1)  # random stream order per sample
    room_p = room.gather(1, perm)
    before = torch.cumsum(room_p, 1) - room_p
    fill_p = torch.minimum((left.unsqueeze(1) - before).clamp_min(0), room_p)
    return counts + torch.zeros_like(counts).scatter_(1, perm, fill_p)
