"""Report text -> continuous tokens from a frozen pretrained text encoder (WordLlama, offline).

    "CT slab ... showing liver.\\nliver: moderate portion, ..." -> values (b, num_tokens, dim)

One token per line: token 0 embeds the impression (line 0), token s the s-th finding /
reasoning step, as the seed aligns volume <-> impression and region / patch <-> step. A report
with fewer lines gets zero tokens for the rest; lines past ``num_tokens`` are dropped (an error
with ``truncate: false``). Each line is WordLlama's mean of its LLaMA-2 token embeddings
(``l2_supercat``, 256-d, optionally truncated Matryoshka-style to 64 / 128), L2-normalised.

The weights are the 16 MB table shipped inside the wordllama 0.4.0.post1 wheel (MIT), loaded
strictly offline and never trained. They are not copied into the codec's checkpoint: the
config pins their sha256 (``weights_sha256``), so the fingerprint identifies them, and a
codec built against another file refuses to run.

Decoding is retrieval: each token gives back the nearest (cosine) line of a text bank that
`fit_statistics` collects from training reports (the ``bank_size`` most frequent lines). It is
lossy by design: a report is rebuilt from known lines, so it re-encodes to a fixed point.
"""

import collections
import functools
import hashlib
import logging
from pathlib import Path
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from mmtok import Codec, CodecConfig, CodecError, ModalityError, TokenStream, eval_mode
from mmtok_plugin_ct.modalities import ReportText, normalize_report

__all__ = ["ReportEmbeddingCodecConfig", "ReportEmbeddingCodec", "WORDLLAMA_SHA256", "wordllama_weights",
           "report_lines"]

#: sha256 of wordllama/weights/l2_supercat_256.safetensors in wordllama 0.4.0.post1
WORDLLAMA_SHA256 = "64b47a2dc493cb8e85944076601189739852d7b64e0e1eedcb1937a251cd9fd5"
WEIGHTS_FILE = "weights/l2_supercat_256.safetensors"
INSTALL = "pip install 'mmtok-plugin-ct[text]' (wordllama==0.4.0.post1)"
#: longest line (UTF-8 bytes) the decoding bank stores
LINE_BYTES = 256


def report_lines(text: str) -> list[str]:
    """The non-blank, stripped lines of a report (line 0 the impression)."""
    return normalize_report(text).split("\n")


@functools.cache
def _wordllama(dim: int):
    """(WordLlamaInference, path of the weight file), loaded once per process, offline."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        import wordllama
        from wordllama import WordLlama
    except ImportError as err:
        raise CodecError(f"report-wordllama needs the optional package wordllama: {INSTALL} "
                         f"({type(err).__name__}: {err})") from None
    finally:  # wordllama calls logging.basicConfig(level=INFO) on import
        root.setLevel(level)
        root.handlers[:] = handlers
    package = Path(wordllama.__file__).parent
    try:
        model = WordLlama.load(cache_dir=package, disable_download=True, dim=256,
                               trunc_dim=None if dim == 256 else dim)
    except (FileNotFoundError, ValueError) as err:
        raise CodecError(f"report-wordllama: cannot load the WordLlama weights shipped in {package} "
                         f"offline ({err}); reinstall: {INSTALL}") from None
    return model, package / WEIGHTS_FILE


@functools.cache
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def wordllama_weights(dim: int = 256, expected_sha256: str = WORDLLAMA_SHA256):
    """The offline WordLlama model, after checking its weight file against ``expected_sha256``."""
    model, path = _wordllama(dim)
    found = _sha256(path)
    if found != expected_sha256:
        raise CodecError(f"report-wordllama: {path} has sha256 {found[:16]}..., the codec was built for "
                         f"{expected_sha256[:16]}...; {INSTALL}")
    return model


class ReportEmbeddingCodecConfig(CodecConfig):
    num_tokens: int = Field(8, ge=1, le=64, description="lines embedded: the impression + num_tokens - 1 findings")
    dim: Literal[64, 128, 256] = Field(256, description="WordLlama width (64 / 128: Matryoshka truncation)")
    truncate: bool = True
    bank_size: int = Field(1024, ge=1, le=65536, description="lines kept by fit_statistics for decoding")
    weights_sha256: str = Field(WORDLLAMA_SHA256, pattern="^[0-9a-f]{64}$")


class ReportEmbeddingCodec(Codec):
    """ReportText -> (b, num_tokens, dim) unit-norm line embeddings (zeros past the last line).

    Buffers: ``bank`` (bank_size, 256) uint8, the decoding lines (UTF-8, zero padded), and
    ``bank_lines`` (1,), how many are filled. The WordLlama table itself is not a buffer.
    """

    config_class = ReportEmbeddingCodecConfig
    family: ClassVar[str] = "report-wordllama"
    default_modality = ReportText

    def __init__(self, config, modality=None, name: str | None = None):
        super().__init__(config, modality, name)
        self._model = wordllama_weights(self.config.dim, self.config.weights_sha256)
        self.register_buffer("bank", torch.zeros(self.config.bank_size, LINE_BYTES, dtype=torch.uint8))
        self.register_buffer("bank_lines", torch.zeros(1, dtype=torch.long))
        self._bank_cache = None

    @property
    def grid(self) -> tuple[int, ...]:
        return (self.config.num_tokens,)

    @property
    def vocab_size(self) -> None:
        return None

    @property
    def token_dim(self) -> int:
        return self.config.dim

    def decoded_shape(self, m: ReportText) -> tuple[int, ...]:
        return (len(m), self.config.num_tokens * LINE_BYTES)

    # ------------------------------------------------------------------ embedding
    def embed_lines(self, lines: list[str]) -> Tensor:
        """Strings -> (n, dim) float32 unit-norm WordLlama embeddings (zero for an empty string)."""
        if not lines:
            return torch.zeros(0, self.config.dim)
        e = torch.from_numpy(self._model.embed(lines, norm=False)).float()
        return F.normalize(e, dim=-1)

    def embed_texts(self, texts: list[str]) -> Tensor:
        """Reports -> (b, num_tokens, dim): line s of report i at [i, s], zeros past its last line."""
        n = self.config.num_tokens
        rows = []
        for i, text in enumerate(texts):
            lines = report_lines(text)
            if len(lines) > n and not self.config.truncate:
                raise ModalityError(f"{self.name}: report {i} has {len(lines)} lines, more than "
                                    f"num_tokens={n} (truncate: false)")
            rows.append(lines[:n])
        flat = self.embed_lines([line for r in rows for line in r])
        out = torch.zeros(len(texts), n, self.config.dim)
        k = 0
        for i, r in enumerate(rows):
            out[i, :len(r)] = flat[k:k + len(r)]
            k += len(r)
        return out

    def preprocess(self, m: ReportText) -> Tensor:
        """The reports' tokens (b, num_tokens, dim): the space of `reconstruction_loss`."""
        return self.embed_texts(m.texts())

    def reconstruction_loss(self, x: Tensor, x_hat: Tensor) -> Tensor:
        """1 - mean cosine of the lines of ``x`` (tokens) with those of ``x_hat``."""
        valid = x.norm(dim=-1) > 0
        cos = (x * x_hat).sum(-1)
        return 1.0 - cos[valid].sum() / valid.sum().clamp_min(1)

    def reconstruction_target(self, m: ReportText) -> Tensor:
        """The report's first ``num_tokens`` lines as UTF-8 bytes (b, num_tokens * 256)."""
        texts = ["\n".join(report_lines(t)[:self.config.num_tokens]) for t in m.texts()]
        return ReportText.from_texts(texts, max_bytes=self.decoded_shape(m)[1]).utf8

    @eval_mode
    def encode(self, m: ReportText) -> TokenStream:
        self.check_input(m)
        return self.stream(values=self.preprocess(m))

    # ------------------------------------------------------------------ decoding by retrieval
    @torch.no_grad()
    def fit_statistics(self, m: ReportText) -> None:
        """Keep the ``bank_size`` most frequent lines of the reports (ties alphabetical)."""
        counts = collections.Counter(line for t in m.texts() for line in report_lines(t))
        lines = [line for line, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
                 if len(line.encode()) <= LINE_BYTES][:self.config.bank_size]
        self.bank.zero_()
        for i, line in enumerate(lines):
            raw = line.encode()
            self.bank[i, :len(raw)] = torch.tensor(list(raw), dtype=torch.uint8)
        self.bank_lines.fill_(len(lines))
        self._bank_cache = None

    def bank_texts(self) -> list[str]:
        """The decoding bank's lines."""
        rows = self.bank[:int(self.bank_lines)].cpu().numpy()
        return [bytes(r[r > 0]).decode() for r in rows]

    def _bank(self) -> tuple[list[str], Tensor]:
        version = (self.bank.data_ptr(), self.bank._version, int(self.bank_lines))
        if self._bank_cache is None or self._bank_cache[0] != version:
            texts = self.bank_texts()
            self._bank_cache = (version, texts, self.embed_lines(texts))
        return self._bank_cache[1], self._bank_cache[2]

    @eval_mode
    def decode(self, stream: TokenStream, **fields) -> ReportText:
        """Each non-zero token -> the nearest bank line (cosine; ties: the more frequent line)."""
        if int(self.bank_lines) == 0:
            raise CodecError(f"{self.name}: no text bank to decode by retrieval; run "
                             "codec.fit_statistics(reports) (or mmtok fit-codec) on training reports first")
        lines, bank = self._bank()
        values = stream.values.float().cpu()
        nearest = (values @ bank.T).argmax(-1)  # (b, n)
        used = values.norm(dim=-1) > 0
        used[:, 0] = True  # a report has at least its impression
        texts = ["\n".join(lines[j] for j, u in zip(row, keep) if u)
                 for row, keep in zip(nearest.tolist(), used.tolist())]
        return ReportText.from_texts(texts, max_bytes=self.config.num_tokens * LINE_BYTES)
