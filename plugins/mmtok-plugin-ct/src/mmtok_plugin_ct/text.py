"""Report text -> tokens: a word-level vocabulary fitted on the training reports.

    "Liver: large portion.\\nSpleen ..." -> [liver, :, large, portion, ., SEP, spleen, ...]

Lower-cased words, numbers and punctuation marks are tokens; a line break (a new finding /
reasoning step) is the ``SEP`` token; ids 0, 1, 2 are ``PAD``, ``UNK``, ``SEP``. `fit_statistics`
keeps the ``vocab_size - 3`` most frequent words of the corpus (ties alphabetical). Reports
longer than ``num_tokens`` are truncated (as CLIP truncates at 77) unless ``truncate: false``,
which makes them an error. The vocabulary is a buffer, so it travels in ``model.safetensors``.
An exact codec: the vocabulary is the whole model, nothing is trained by gradient.
"""

import collections
import re
from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor

from mmtok import Codec, CodecConfig, CodecError, Modality, ModalityError, TokenStream, eval_mode
from mmtok_plugin_ct.modalities import ReportText
from mmtok_plugin_ct.regions import REGION_GROUPS

__all__ = ["ReportTextCodecConfig", "ReportTextCodec", "tokenize", "step_index", "step_regions",
           "PAD", "UNK", "SEP"]

PAD, UNK, SEP = 0, 1, 2
_SPECIAL = ("<pad>", "<unk>", "<sep>")
_WORD = re.compile(r"[a-z]+|[0-9]+(?:\.[0-9]+)?|[^\sa-z0-9]")
_MAX_WORD_BYTES = 32


def tokenize(text: str) -> list[str]:
    """Words / numbers / punctuation, lower-cased, with "<sep>" between lines."""
    out: list[str] = []
    for i, line in enumerate(line for line in text.lower().splitlines() if line.strip()):
        if i:
            out.append("<sep>")
        out.extend(_WORD.findall(line))
    return out


class ReportTextCodecConfig(CodecConfig):
    vocab_size: int = Field(512, ge=4)
    num_tokens: int = Field(64, ge=1)
    truncate: bool = True


class ReportTextCodec(Codec):
    """ReportText -> (b, num_tokens) word ids (PAD-filled); decode joins the words back.

    Buffers: the word table (vocab_size, 32) uint8 (UTF-8, zero padded) and ``fitted``.
    """

    config_class = ReportTextCodecConfig
    family: ClassVar[str] = "report-words"
    default_modality = ReportText

    def __init__(self, config, modality: type[Modality] | None = None, name: str | None = None):
        super().__init__(config, modality, name)
        self.register_buffer("table", torch.zeros(self.config.vocab_size, _MAX_WORD_BYTES, dtype=torch.uint8))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self._words: list[str] | None = None
        self._index: dict[str, int] | None = None
        self._table_version = None

    def decoded_shape(self, m: ReportText) -> tuple[int, ...]:
        return (len(m), self.config.num_tokens * _MAX_WORD_BYTES)

    @property
    def grid(self) -> tuple[int, ...]:
        return (self.config.num_tokens,)

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def words(self) -> list[str]:
        """The vocabulary, id -> word ("" for unused ids)."""
        version = (self.table.data_ptr(), self.table._version)
        if self._words is None or self._table_version != version:
            rows = self.table.cpu().numpy()
            self._words = [bytes(r[r > 0]).decode() for r in rows]
            self._index = {w: i for i, w in enumerate(self._words) if w}
            self._table_version = version
        return self._words

    def word_index(self) -> dict[str, int]:
        """word -> id."""
        self.words()
        return self._index

    def reconstruction_target(self, m: ReportText) -> Tensor:
        """The report as this codec spells it back (lower case, tokens space-separated) in bytes."""
        texts = [" ".join(w if w != "<sep>" else "\n" for w in tokenize(t)) for t in m.texts()]
        texts = ["\n".join(line.strip() for line in t.split("\n")) for t in texts]
        return ReportText.from_texts(texts, max_bytes=self.config.num_tokens * _MAX_WORD_BYTES).utf8

    @torch.no_grad()
    def fit_statistics(self, m: ReportText) -> None:
        """Keep the ``vocab_size - 3`` most frequent words of the reports (ties alphabetical)."""
        counts = collections.Counter(w for t in m.texts() for w in tokenize(t) if w not in _SPECIAL)
        words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
                 if len(w.encode()) < _MAX_WORD_BYTES][:self.config.vocab_size - len(_SPECIAL)]
        self.table.zero_()
        for i, w in enumerate([*_SPECIAL, *words]):
            raw = w.encode()
            self.table[i, :len(raw)] = torch.tensor(list(raw), dtype=torch.uint8)
        self.fitted.fill_(True)

    def _require_fitted(self) -> None:
        if not bool(self.fitted):
            raise CodecError(f"{self.name}: vocabulary not fitted; run mmtok fit-codec (or "
                             "codec.fit_statistics) on the training reports first")

    def ids(self, texts: list[str]) -> Tensor:
        """Strings -> (b, num_tokens) long ids."""
        self._require_fitted()
        index, n = self.word_index(), self.config.num_tokens
        out = torch.full((len(texts), n), PAD, dtype=torch.long)
        for i, text in enumerate(texts):
            words = tokenize(text)
            if len(words) > n and not self.config.truncate:
                raise ModalityError(f"{self.name}: report {i} has {len(words)} tokens, more than "
                                    f"num_tokens={n} (truncate: false)")
            row = [index.get(w, UNK) for w in words[:n]]
            out[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        return out

    def texts(self, ids: Tensor) -> list[str]:
        """(b, n) ids -> strings (unknown words come back as "<unk>")."""
        words = self.words()
        out = []
        for row in ids.tolist():
            text = " ".join(words[i] if i != SEP else "\n" for i in row if i != PAD)
            out.append("\n".join(line.strip() for line in text.split("\n")))
        return out

    def preprocess(self, m: ReportText) -> Tensor:
        """The reports as (b, num_tokens) word ids (long)."""
        return self.ids(m.texts())

    @eval_mode
    def encode(self, m: ReportText) -> TokenStream:
        self.check_input(m)
        return self.stream(ids=self.preprocess(m))

    @eval_mode
    def decode(self, stream: TokenStream, **fields) -> ReportText:
        self.check_stream(stream)
        self._require_fitted()
        return ReportText.from_texts(self.texts(stream.ids.long()),
                                     max_bytes=self.config.num_tokens * _MAX_WORD_BYTES)

    def reconstruction_loss(self, x: Tensor, x_hat: Tensor) -> Tensor:
        """Fraction of the real tokens of ``x`` (ids) that are out of vocabulary."""
        real = x != PAD
        return ((x == UNK) & real).sum() / real.sum().clamp_min(1)


def step_index(ids: Tensor) -> Tensor:
    """(b, n) ids -> (b, n) index of the line (step) each token belongs to; -1 for PAD and SEP."""
    step = torch.cumsum((ids == SEP).long(), dim=1)
    return torch.where((ids == PAD) | (ids == SEP), torch.full_like(step, -1), step)


_REGION_NAMES = sorted(((name, g) for g, name in enumerate(REGION_GROUPS) if g), key=lambda x: -len(x[0]))


def step_regions(texts: list[str], max_steps: int) -> Tensor:
    """(b, max_steps) region group id that each line starts with ("liver: ..."), -1 otherwise."""
    out = torch.full((len(texts), max_steps), -1, dtype=torch.long)
    for i, text in enumerate(texts):
        for s, line in enumerate(line for line in text.lower().splitlines() if line.strip()):
            if s >= max_steps:
                break
            line = line.strip()
            for name, g in _REGION_NAMES:
                if line.startswith(name):
                    out[i, s] = g
                    break
    return out
