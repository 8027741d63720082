"""Report text -> tokens: a word-level vocabulary fitted on the training reports.

    "Liver: large portion.\\nSpleen ..." -> [liver, :, large, portion, ., SEP, spleen, ...]

Lower-cased words, numbers and punctuation marks are tokens; a line break (a new finding /
reasoning step) is the ``SEP`` token; ids 0, 1, 2 are ``PAD``, ``UNK``, ``SEP``. `fit_statistics`
keeps the ``vocab_size - 3`` most frequent words of the corpus (ties alphabetical). Reports
longer than ``num_tokens`` are truncated (as CLIP truncates at 77) unless ``truncate: false``,
which makes them an error. The vocabulary is a buffer, so it travels in ``model.safetensors``.
"""

import collections
import re
from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from mmtok.codec import Codec, CodecConfig, CodecOutput, inference
from mmtok.errors import CodecError, ModalityError
from mmtok.modality import Modality
from mmtok.quantize import ContinuousConfig
from mmtok.tokens import TokenStream
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
    quantizer: ContinuousConfig = Field(default_factory=ContinuousConfig,
                                        description="unused: the vocabulary is the quantizer")


class _Vocabulary(nn.Module):
    """Word table as a (vocab_size, 32) uint8 buffer (UTF-8, zero padded)."""

    depth = 1
    is_discrete = True

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.register_buffer("table", torch.zeros(vocab_size, _MAX_WORD_BYTES, dtype=torch.uint8))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self._words: list[str] | None = None
        self._index: dict[str, int] | None = None
        self._version = None

    def fit(self, texts: list[str]) -> None:
        counts = collections.Counter(w for t in texts for w in tokenize(t) if w not in _SPECIAL)
        words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
                 if len(w.encode()) < _MAX_WORD_BYTES][:self.vocab_size - len(_SPECIAL)]
        self.table.zero_()
        for i, w in enumerate([*_SPECIAL, *words]):
            raw = w.encode()
            self.table[i, :len(raw)] = torch.tensor(list(raw), dtype=torch.uint8)
        self.fitted.fill_(True)

    def words(self) -> list[str]:
        version = (self.table.data_ptr(), self.table._version)
        if self._words is None or self._version != version:
            rows = self.table.cpu().numpy()
            self._words = [bytes(r[r > 0]).decode() for r in rows]
            self._index = {w: i for i, w in enumerate(self._words) if w}
            self._version = version
        return self._words

    def index(self) -> dict[str, int]:
        self.words()
        return self._index


class ReportTextCodec(Codec):
    """ReportText -> (b, num_tokens) word ids (PAD-filled); decode joins the words back."""

    config_class = ReportTextCodecConfig
    family: ClassVar[str] = "report-words"
    trainable: ClassVar[bool] = False
    accepts_any_grid: ClassVar[bool] = True

    def decoded_shape(self, m: ReportText) -> tuple[int, ...]:
        return (len(m), self.config.num_tokens * _MAX_WORD_BYTES)

    def __init__(self, config, modality: type[Modality] | None = None, name: str | None = None):
        super().__init__(config, modality, name)
        self.quantizer = _Vocabulary(self.config.vocab_size)

    @property
    def token_grid(self) -> tuple[int, ...]:
        return (self.config.num_tokens,)

    def reconstruction_target(self, m: ReportText) -> Tensor:
        """The report as this codec spells it back (lower case, tokens space-separated) in bytes."""
        texts = [" ".join(w if w != "<sep>" else "\n" for w in tokenize(t)) for t in m.texts()]
        texts = ["\n".join(line.strip() for line in t.split("\n")) for t in texts]
        return ReportText.from_texts(texts, max_bytes=self.config.num_tokens * _MAX_WORD_BYTES).utf8

    def fit_statistics(self, m: ReportText) -> None:
        self.quantizer.fit(m.texts())

    def _require_fitted(self) -> None:
        if not bool(self.quantizer.fitted):
            raise CodecError(f"{self.name}: vocabulary not fitted; run mmtok fit-codec (or "
                             "codec.fit_statistics) on the training reports first")

    def ids(self, texts: list[str]) -> Tensor:
        """Strings -> (b, num_tokens) long ids."""
        self._require_fitted()
        index, n = self.quantizer.index(), self.config.num_tokens
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
        words = self.quantizer.words()
        out = []
        for row in ids.tolist():
            text = " ".join(words[i] if i != SEP else "\n" for i in row if i != PAD)
            out.append("\n".join(line.strip() for line in text.split("\n")))
        return out

    def forward(self, m: ReportText) -> CodecOutput:
        self.check_input(m)
        ids = self.ids(m.texts())
        x = ids.float()
        return CodecOutput(x, x, ids, x.new_zeros(()))

    @inference
    def encode(self, m: ReportText) -> TokenStream:
        ids = self.forward(m).ids
        return TokenStream(grid=self.grid, present=torch.ones(len(ids), dtype=torch.bool), ids=ids,
                           vocab_size=self.vocab_size, codec=self.name, fingerprint=self.fingerprint())

    @inference
    def decode(self, stream: TokenStream, **fields) -> ReportText:
        self.check_stream(stream)
        self._require_fitted()
        return ReportText.from_texts(self.texts(stream.ids.long()),
                                     max_bytes=self.config.num_tokens * _MAX_WORD_BYTES)

    def reconstruction_loss(self, out: CodecOutput) -> Tensor:
        """Fraction of real tokens that are out of vocabulary."""
        real = out.ids != PAD
        return ((out.ids == UNK) & real).sum() / real.sum().clamp_min(1)


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
