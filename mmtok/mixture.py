"""Several token folders read as one training set, and the data mixture that samples them.

`TokenFolders` is what `Trainer` reads: the union of the folders' streams (a stream two folders
share must come from the same codec: same fingerprint, vocabulary and grid, or it is an error
naming both folders), every sample keeping its own presence (a stream its folder lacks is absent,
exactly like a modality missing from a sample), ids qualified by the folder's name
(``clinic:p0007``) so that they are unique across folders.

`MixtureSchedule` orders the training samples in epochs that are pure functions of
``(seed, epoch)``, so exact resume and ``torchrun`` equivalence hold as with one folder. With one
folder an epoch is a seeded permutation of its training samples (as `Trainer` always did). With
several, folder f contributes ``k_f = max(1, round(E * p_f))`` samples to each epoch of
``E = sum(n_f)`` (its own cycling permutations, so an up-weighted small folder repeats and a
down-weighted large one is visited in turn), and the epoch is the seeded shuffle of them all. The
shares ``p_f`` are explicit ``weight``s, or ``n_f ** (1 / temperature)`` normalised: temperature 1
samples in proportion to size, larger ones flatten towards uniform (multilingual / 4M-style mixtures).
With ``per_folder`` (``mixture_batches: per_folder``) each batch comes from one folder instead,
folder f taking ``max(1, round(S * p_f))`` of every epoch's ``S = ceil(E / batch)`` steps in a seeded
order: a batch is then padded only to its own folder's token counts (mixing a 6-token clinic row
with a 1,568-token CT row pads the clinic row to the CT row's budget), at the price of gradients
that see one domain per step.
"""

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from mmtok.errors import MmtokError
from mmtok.model import StreamSpec
from mmtok.shards import TokenShards
from mmtok.tokens import TokenBatch, TokenStream

__all__ = ["MixtureSchedule", "TokenFolders", "folder_name"]


def folder_name(path: str | Path) -> str:
    """A token folder's default name: its own name, or its parent's when it is called ``tokens``
    (``runs/ecg/tokens`` -> ``ecg``)."""
    p = Path(path).resolve()
    return p.parent.name if p.name == "tokens" else p.name


class TokenFolders:
    """``folders`` (name -> token folder) as one indexable set of samples; see the module docstring.

    ``samples`` / ``sample_ids`` / ``batch(indices)`` / ``specs()`` / ``verify()`` as `TokenShards`;
    ``folder_of[i]`` / ``local[i]`` say which folder a sample comes from and its position there.
    """

    def __init__(self, folders: dict[str, str | Path], streams: Sequence[str] | None = None):
        if not folders:
            raise MmtokError("no token folder given")
        opened = {}
        for name, path in folders.items():
            index = TokenShards(path)
            keys = sorted(index.streams) if streams is None else [k for k in streams if k in index.streams]
            if not keys:
                raise MmtokError(f"{path}: has none of the streams {list(streams or [])} "
                                 f"(it has {sorted(index.streams)})")
            opened[name] = TokenShards(path, keys)
        self.names = list(opened)
        self.parts = list(opened.values())
        self.streams: dict[str, dict] = {}
        owner: dict[str, str] = {}
        for name, part in opened.items():
            for key in part.keys:
                info = part.streams[key]
                if key in self.streams:
                    _same_codec(key, owner[key], self.streams[key], name, info, folders)
                else:
                    self.streams[key], owner[key] = info, name
        missing = sorted(set(streams or ()) - set(self.streams))
        if missing:
            raise MmtokError(f"no token folder has stream(s) {missing}; they have {sorted(self.streams)}")
        self.keys = list(streams) if streams is not None else sorted(self.streams)
        self._owner = owner
        self.folder_of: list[int] = []
        self.local: list[int] = []
        self.samples: list[dict] = []
        for f, part in enumerate(self.parts):
            self.folder_of += [f] * len(part)
            self.local += range(len(part))
            self.samples += part.samples
        single = len(self.parts) == 1
        self.sample_ids = [s["id"] if single else f"{self.names[f]}:{s['id']}"
                           for f, s in zip(self.folder_of, self.samples)]
        self.local_ids = [s["id"] for s in self.samples]
        self._specs: dict[str, StreamSpec] | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def indices_of(self, folder: int) -> list[int]:
        """Global indices of folder ``folder``'s samples."""
        start = sum(len(p) for p in self.parts[:folder])
        return list(range(start, start + len(self.parts[folder])))

    def verify(self) -> None:
        for part in self.parts:
            part.verify()

    def specs(self) -> dict[str, StreamSpec]:
        """The model's view of each stream (from the folder that first has it)."""
        if len(self.parts) == 1:
            return self.parts[0].specs()
        if self._specs is None:
            per_part = {name: part.specs() for name, part in zip(self.names, self.parts)}
            self._specs = {key: per_part[self._owner[key]][key] for key in self.keys}
        return self._specs

    def make_stream(self, key: str, tokens: torch.Tensor, present: torch.Tensor | None = None) -> TokenStream:
        return self.parts[self.names.index(self._owner[key])].make_stream(key, tokens, present)

    def batch(self, indices: Sequence[int]) -> TokenBatch:
        """The samples ``indices``, in that order, every stream of the union (absent where the
        sample's folder lacks it)."""
        if len(self.parts) == 1:
            return self.parts[0].batch(indices)
        by_folder: dict[int, list[tuple[int, int]]] = {}
        for pos, i in enumerate(indices):
            by_folder.setdefault(self.folder_of[i], []).append((pos, self.local[i]))
        pieces, order = [], []
        for f, members in by_folder.items():
            pieces.append(self.parts[f].batch([local for _, local in members]))
            order += [pos for pos, _ in members]
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order, dtype=torch.long)] = torch.arange(len(order))
        streams = {}
        for key in self.keys:
            like = next((p[key] for p in pieces if key in p), None)
            if like is None:
                like = self._template(key)
            cat = TokenStream.cat([p[key] if key in p else TokenStream.absent(like, p.batch_size) for p in pieces])
            streams[key] = cat[inverse]
        return TokenBatch(streams)

    def _template(self, key: str) -> TokenStream:
        """One absent sample of ``key`` (for `TokenStream.absent` when no folder in a batch has it)."""
        info, spec = self.streams[key], self.specs()[key]
        shape = (1, info["num_tokens"]) if spec.is_discrete else (1, info["num_tokens"], spec.dim)
        return self.make_stream(key, torch.zeros(shape), torch.zeros(1, dtype=torch.bool))


def _same_codec(key: str, first: str, a: dict, second: str, b: dict, paths: dict) -> None:
    for field in ("fingerprint", "vocab_size", "num_tokens", "grid"):
        if a.get(field) != b.get(field):
            raise MmtokError(
                f"stream {key!r}: token folder {first!r} ({paths[first]}) has {field} {a.get(field)!r} "
                f"(codec {a.get('codec')!r}), folder {second!r} ({paths[second]}) has {b.get(field)!r} "
                f"(codec {b.get('codec')!r}); a stream shared by two folders must come from the same codec")


class MixtureSchedule:
    """Training samples in seeded epochs (see the module docstring).

    ``train[f]``: folder f's training samples (global indices); ``weights[f]``: explicit share, or
    None for all (shares from sizes and ``temperature``); ``seed_of(epoch, salt) -> int`` is the
    trainer's seed function. ``epoch(e)`` -> the global indices of epoch e, ``epoch_size`` long.
    """

    def __init__(self, train: Sequence[Sequence[int]], weights: Sequence[float] | None, temperature: float,
                 seed_of: Callable[[int, int], int], per_folder: bool = False):
        self.train = [list(t) for t in train]
        self.seed_of = seed_of
        self.per_folder = per_folder and len(self.train) > 1
        sizes = [len(t) for t in self.train]
        self.epoch_size = sum(sizes)
        raw = list(weights) if weights is not None else [n ** (1.0 / temperature) if n else 0.0 for n in sizes]
        total = sum(w for w, n in zip(raw, sizes) if n)
        self.shares = [w / total if n else 0.0 for w, n in zip(raw, sizes)]
        self.per_epoch = [max(1, round(self.epoch_size * p)) if n else 0 for p, n in zip(self.shares, sizes)]
        if len(self.train) > 1:
            self.epoch_size = sum(self.per_epoch)
        self._cache: dict[tuple[int, int], list[int]] = {}
        self._epoch: tuple[int, list[int]] = (-1, [])

    def _permutation(self, folder: int, epoch: int) -> list[int]:
        """Folder ``folder``'s training samples in its own epoch ``epoch``."""
        key = (folder, epoch)
        if key not in self._cache:
            if len(self._cache) > 8:
                self._cache.clear()
            salt = 1 if len(self.train) == 1 else 1 + 1000 * (folder + 1)  # one folder: what Trainer did
            g = torch.Generator().manual_seed(self.seed_of(epoch, salt))
            t = self.train[folder]
            self._cache[key] = [t[i] for i in torch.randperm(len(t), generator=g).tolist()]
        return self._cache[key]

    def epoch(self, e: int) -> list[int]:
        if self._epoch[0] != e:
            if len(self.train) == 1:
                order = self._permutation(0, e)
            else:
                drawn = [self._stream(f, j) for f, k in enumerate(self.per_epoch) for j in range(e * k, (e + 1) * k)]
                g = torch.Generator().manual_seed(self.seed_of(e, 999))
                order = [drawn[i] for i in torch.randperm(len(drawn), generator=g).tolist()]
            self._epoch = (e, order)
        return self._epoch[1]

    def _stream(self, folder: int, j: int) -> int:
        """The ``j``-th sample of folder ``folder``'s cycling seeded permutations."""
        n = len(self.train[folder])
        return self._permutation(folder, j // n)[j % n]

    def _folder_steps(self, batch_size: int) -> list[int]:
        """Per-folder batches: each folder's batches in one epoch of steps."""
        steps = max(1, -(-self.epoch_size // batch_size))
        return [max(1, round(steps * p)) if k else 0 for p, k in zip(self.shares, self.per_epoch)]

    def _step_order(self, e: int, batch_size: int) -> list[tuple[int, int]]:
        """Per-folder batches: (folder, its batch number in the epoch) of each step of step-epoch
        ``e`` (a seeded shuffle)."""
        if self._epoch[0] != ("steps", e):
            order = [f for f, k in enumerate(self._folder_steps(batch_size)) for _ in range(k)]
            g = torch.Generator().manual_seed(self.seed_of(e, 998))
            order = [order[i] for i in torch.randperm(len(order), generator=g).tolist()]
            seen: dict[int, int] = {}
            rank = []  # how many earlier steps of this epoch went to the same folder
            for f in order:
                rank.append(seen.get(f, 0))
                seen[f] = rank[-1] + 1
            self._epoch = (("steps", e), list(zip(order, rank)))
        return self._epoch[1]

    def batch(self, step: int, batch_size: int) -> list[int]:
        """Global indices of ``step``'s batch: epochs back to back. With ``per_folder``, every
        batch comes from one folder (the folders' steps per epoch follow the shares), so a batch
        is padded only to its own folder's token counts."""
        if self.per_folder:
            per = self._folder_steps(batch_size)
            e, i = divmod(step, sum(per))
            f, rank = self._step_order(e, batch_size)[i]
            j = e * per[f] + rank  # the folder's batch number
            return [self._stream(f, j * batch_size + r) for r in range(batch_size)]
        n = self.epoch_size
        return [self.epoch(e)[i] for e, i in (divmod(pos, n) for pos in range(step * batch_size, (step + 1) * batch_size))]
