"""`Codec`: turns a `Modality` batch into a `TokenStream` and back.

Pipeline::

    preprocess(modality) -> x          e.g. (b, c, h, w) normalised tensor
    encoder(x)           -> z          (b, n, latent_dim) channel-last latents on the token grid
    quantizer(z)         -> z_q, ids   (b, n, latent_dim), (b, n * depth)     see mmtok.quantize
    decoder(z_q)         -> x_hat      same shape as x
    postprocess(x_hat)   -> modality

A codec family subclasses `Codec`, declares its pydantic ``config_class`` and builds
``encoder`` / ``decoder`` / ``quantizer`` in ``__init__``. Plugins usually only *configure* a
family (see `mmtok.hookspecs.CodecSpec`). ``save_pretrained(dir)`` writes ``config.json`` +
``model.safetensors``; ``fingerprint()`` is a stable hash of both.
"""

import dataclasses
import functools
import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors.torch import load_model, save_model
from torch import Tensor, nn

from mmtok.errors import CodecError, ModalityError
from mmtok.modality import Modality
from mmtok.quantize import FSQConfig, Quantizer, QuantizerConfig
from mmtok.tokens import TokenStream

__all__ = ["Codec", "CodecConfig", "CodecOutput", "ChannelNorm", "atomic_write", "inference"]

FORMAT_VERSION = 1


class CodecConfig(BaseModel):
    """Base config of every codec. ``modality`` is the name of the modality it tokenizes;
    ``field`` the tensor field it reads (default: the modality's first tensor field)."""

    model_config = ConfigDict(extra="forbid")
    modality: str
    field: str | None = None
    quantizer: QuantizerConfig = Field(default_factory=FSQConfig)


class CodecOutput(NamedTuple):
    """What a training forward pass returns."""
    x: Tensor  # preprocessed input
    x_hat: Tensor  # reconstruction, same shape as x
    ids: Tensor | None  # (b, n * depth)
    aux_loss: Tensor  # () quantizer loss


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then atomically rename the temporary file to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal permissions
    try:
        write(Path(tmp))
        with open(tmp, "rb") as fh:  # durable before it becomes visible under its real name
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class ChannelNorm(nn.Module):
    """Per-channel standardisation (channel axis 1), with optional arcsinh range compression
    applied first (as for astronomical fluxes). Statistics are buffers, fitted by `fit`.

    x: (b, c, ...) -> (b, c, ...)
    """

    def __init__(self, channels: int, mode: str = "standard"):
        super().__init__()
        if mode not in ("standard", "arcsinh", "none"):
            raise CodecError(f"normalisation must be 'standard', 'arcsinh' or 'none', found {mode!r}")
        self.mode = mode
        self.register_buffer("scale", torch.ones(channels))  # arcsinh softening per channel
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))

    def _view(self, t: Tensor, x: Tensor) -> Tensor:
        return t.view(1, -1, *([1] * (x.ndim - 2))).to(x.dtype)

    def _compress(self, x: Tensor) -> Tensor:
        return torch.asinh(x / self._view(self.scale, x)) if self.mode == "arcsinh" else x

    @torch.no_grad()
    def fit(self, x: Tensor) -> None:
        if self.mode == "none":
            return
        dims = [0, *range(2, x.ndim)]
        if self.mode == "arcsinh":
            mad = (x - x.median()).abs().flatten(2).transpose(0, 1).flatten(1).median(dim=1).values
            self.scale.copy_(mad.clamp_min(1e-6).to(self.scale))
        y = self._compress(x.float())
        self.mean.copy_(y.mean(dim=dims))
        self.std.copy_(y.std(dim=dims).clamp_min(1e-6))

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "none":
            return x
        return (self._compress(x) - self._view(self.mean, x)) / self._view(self.std, x)

    def inverse(self, y: Tensor) -> Tensor:
        if self.mode == "none":
            return y
        x = y * self._view(self.std, y) + self._view(self.mean, y)
        return torch.sinh(x) * self._view(self.scale, y) if self.mode == "arcsinh" else x


def inference(method):
    """Run a codec method under ``torch.no_grad()`` with the codec in eval mode (restored
    afterwards): tokens never depend on dropout, quantize dropout or codebook updates."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                return method(self, *args, **kwargs)
        finally:
            self.train(was_training)

    return wrapper


class Codec(nn.Module):
    """Base codec. Subclasses set ``config_class`` and create ``encoder``, ``decoder`` and
    ``quantizer``; most only override `preprocess` / `postprocess` and `token_grid`."""

    config_class: ClassVar[type[CodecConfig]] = CodecConfig
    #: name under which the family itself is registered (a `CodecSpec` may use another)
    family: ClassVar[str] = "codec"
    #: False for codecs fitted from statistics only (no gradient training)
    trainable: ClassVar[bool] = True
    #: True for codecs that bring any input grid to their own (resampling / cropping, as CT
    #: codecs do): decoded shapes follow `decoded_shape`, not the input's
    accepts_any_grid: ClassVar[bool] = False

    encoder: nn.Module
    decoder: nn.Module
    quantizer: Quantizer

    def __init__(self, config: CodecConfig | dict, modality: type[Modality] | None = None,
                 name: str | None = None):
        super().__init__()
        self.config = self.parse_config(config)
        if modality is None:
            from mmtok.plugins import get_plugin_manager

            modality = get_plugin_manager().modality(self.config.modality)
        if modality.name != self.config.modality:
            raise CodecError(f"{type(self).__name__}: config is for modality {self.config.modality!r} "
                             f"but was given {modality.name!r}")
        self.modality = modality
        #: the registered name this codec was built under (its `CodecSpec` name)
        self.name = name or self.family
        fields = modality.tensor_fields()
        self.field = self.config.field or fields[0]
        if self.field not in fields:
            raise CodecError(f"{type(self).__name__}: modality {modality.name!r} has no tensor field "
                             f"{self.field!r}; fields are {list(fields)}")

    @classmethod
    def parse_config(cls, config: CodecConfig | dict) -> CodecConfig:
        if isinstance(config, cls.config_class):
            return config
        data = config.model_dump() if isinstance(config, BaseModel) else dict(config)
        try:
            return cls.config_class.model_validate(data)
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
            raise CodecError(f"{cls.__name__} config: {problems}") from None

    # ------------------------------------------------------------------ grid / vocabulary
    @property
    def token_grid(self) -> tuple[int, ...]:
        """Grid of latent positions (without the quantizer's depth axis)."""
        raise NotImplementedError

    @property
    def grid(self) -> tuple[int, ...]:
        """Token grid of the emitted stream (depth axis appended for residual quantizers)."""
        depth = self.quantizer.depth
        return (*self.token_grid, depth) if depth > 1 else self.token_grid

    @property
    def num_tokens(self) -> int:
        return math.prod(self.grid)

    @property
    def vocab_size(self) -> int | None:
        return self.quantizer.vocab_size

    @property
    def is_discrete(self) -> bool:
        return self.quantizer.is_discrete

    # ------------------------------------------------------------------ pipeline
    def check_input(self, m: Modality) -> None:
        if not isinstance(m, self.modality):
            raise ModalityError(f"{type(self).__name__} ({self.name}) encodes {self.modality.__name__}, "
                                f"found {type(m).__name__}")

    def read_field(self, m: Modality, per_sample_shape: tuple[int, ...]) -> Tensor:
        """The configured field as float, checked against the shape this codec was built for."""
        x = getattr(m, self.field)
        if tuple(x.shape[1:]) != tuple(per_sample_shape):
            raise ModalityError(
                f"{self.name}: {type(m).__name__}.{self.field} must have per-sample shape "
                f"{tuple(per_sample_shape)} for this codec, found {tuple(x.shape[1:])}"
            )
        return x.float()

    def preprocess(self, m: Modality) -> Tensor:
        """Modality -> encoder input tensor. Default: the configured field as float."""
        return getattr(m, self.field).float()

    def postprocess(self, x_hat: Tensor, **fields: Any) -> Modality:
        """Decoder output -> modality; ``fields`` fill the modality's other fields."""
        return self.modality(**{self.field: x_hat, **fields})

    def decoded_shape(self, m: Modality) -> tuple[int, ...]:
        """Shape of the field that ``decode(encode(m))`` returns: the input's unless the codec
        resamples (``accepts_any_grid``)."""
        return tuple(getattr(m, self.field).shape)

    def reconstruction_target(self, m: Modality) -> Tensor:
        """What ``decode(encode(m))`` should give back for field ``self.field``: the field itself,
        or for codecs that resample / window (``accepts_any_grid``) the input on their grid."""
        return getattr(m, self.field)

    def passthrough_fields(self, m: Modality) -> dict[str, Any]:
        """The fields of ``m`` this codec does not tokenize, e.g. to pass to `decode`."""
        return {f.name: getattr(m, f.name) for f in dataclasses.fields(m)
                if f.init and f.name != self.field}

    def fit_statistics(self, m: Modality) -> None:
        """Data-dependent initialisation (normalisation statistics, quantile tables) from a
        representative batch. Called by `mmtok.fit_codec` before training."""

    def forward(self, m: Modality) -> CodecOutput:
        """Training pass: preprocess -> encode -> quantize -> decode (no postprocess)."""
        self.check_input(m)
        x = self.preprocess(m)
        q = self.quantizer.quantize(self.encoder(x))
        return CodecOutput(x, self.decoder(q.z_q), q.ids, q.aux_loss)

    @inference
    def encode(self, m: Modality) -> TokenStream:
        """Modality batch -> TokenStream (always in eval mode: deterministic)."""
        self.check_input(m)
        z = self.encoder(self.preprocess(m))
        q = self.quantizer.quantize(z)
        present = torch.ones(z.shape[0], dtype=torch.bool, device=z.device)
        if q.ids is not None:
            return TokenStream(grid=self.grid, present=present, ids=q.ids, vocab_size=self.vocab_size,
                               codec=self.name, fingerprint=self.fingerprint())
        return TokenStream(grid=self.grid, present=present, values=q.z_q.float(),
                           codec=self.name, fingerprint=self.fingerprint())

    @inference
    def decode(self, stream: TokenStream, **fields: Any) -> Modality:
        """TokenStream -> modality batch. ``fields`` are passed to the modality unchanged
        (e.g. wavelengths or voxel spacing that the tokens do not carry)."""
        self.check_stream(stream)
        z_q = self.quantizer.ids_to_codes(stream.ids) if stream.is_discrete else stream.values
        param = next(self.parameters(), None)
        if param is not None:
            z_q = z_q.to(param.dtype)
        return self.postprocess(self.decoder(z_q), **fields)

    def check_stream(self, stream: TokenStream) -> None:
        if tuple(stream.grid) != tuple(self.grid):
            raise CodecError(f"{self.name}: token grid {stream.grid} does not match this codec's "
                             f"grid {self.grid}")
        if stream.is_discrete != self.is_discrete:
            kind = "discrete" if self.is_discrete else "continuous"
            raise CodecError(f"{self.name}: is {kind}, the stream is not")
        if stream.is_discrete and stream.vocab_size != self.vocab_size:
            raise CodecError(f"{self.name}: vocabulary {self.vocab_size}, stream has {stream.vocab_size}")

    def reconstruction_loss(self, out: CodecOutput) -> Tensor:
        """Mean squared error in the preprocessed (normalised) space."""
        return torch.nn.functional.mse_loss(out.x_hat.float(), out.x.float())

    # ------------------------------------------------------------------ persistence
    _fingerprint_cache: tuple[tuple, str] | None = None

    def _state_version(self) -> tuple:
        # data pointer + in-place version counter of every tensor: changes whenever a weight is
        # replaced or modified (optimizer steps, load_state_dict, manual edits)
        return tuple((k, t.data_ptr(), t._version) for k, t in self.state_dict(keep_vars=True).items())

    def fingerprint(self) -> str:
        """Stable 16-hex hash of codec name, config and every weight / buffer (cached until a
        weight changes)."""
        version = self._state_version()
        if self._fingerprint_cache is not None and self._fingerprint_cache[0] == version:
            return self._fingerprint_cache[1]
        h = hashlib.sha256()
        h.update(json.dumps({"codec": self.name, "config": self.config.model_dump(mode="json")},
                            sort_keys=True).encode())
        for key, t in sorted(self.state_dict().items()):
            t = t.detach().cpu().contiguous()
            h.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        fp = h.hexdigest()[:16]
        self._fingerprint_cache = (version, fp)
        return fp

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``model.safetensors`` then ``config.json`` (each atomically); return the dir."""
        directory = Path(directory)
        fp = self.fingerprint()
        atomic_write(directory / "model.safetensors",
                     lambda p: save_model(self, str(p), metadata={"fingerprint": fp}))
        meta = {"format_version": FORMAT_VERSION, "codec": self.name, "family": self.family,
                "modality": self.modality.name, "fingerprint": fp,
                "config": self.config.model_dump(mode="json")}
        atomic_write(directory / "config.json", lambda p: p.write_text(json.dumps(meta, indent=2) + "\n"))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike,
                        modality: type[Modality] | None = None) -> "Codec":
        """Load a codec written by `save_pretrained` (no pickle: JSON + safetensors)."""
        directory = Path(directory)
        meta = read_codec_config(directory)
        if cls is Codec:  # generic loading: find the class through the installed plugins
            from mmtok.plugins import get_plugin_manager

            cls = get_plugin_manager().codec_class(meta["codec"], family=meta["family"])
        elif meta["family"] != cls.family:
            raise CodecError(f"{directory}: holds a {meta['family']!r} codec, not {cls.family!r}")
        codec = cls(meta["config"], modality=modality, name=meta["codec"])
        codec.eval()
        load_weights(codec, directory, meta)
        return codec


def read_codec_config(directory: Path) -> dict:
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise CodecError(f"{directory}: not a codec checkpoint (no config.json)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CodecError(f"{path}: invalid JSON ({err})") from None
    missing = {"codec", "family", "config", "fingerprint"} - set(meta)
    if missing:
        raise CodecError(f"{path}: missing keys {sorted(missing)}")
    return meta


def load_weights(codec: Codec, directory: Path, meta: dict) -> None:
    weights = Path(directory) / "model.safetensors"
    if not weights.is_file():
        raise CodecError(f"{directory}: config.json present but model.safetensors missing")
    try:
        missing, unexpected = load_model(codec, str(weights), strict=False)
    except RuntimeError as err:
        raise CodecError(f"{weights}: weights do not fit the config ({str(err).splitlines()[0]})") from None
    if missing or unexpected:
        raise CodecError(f"{weights}: weights do not fit the config: missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")
    fp = codec.fingerprint()
    if fp != meta["fingerprint"]:
        raise CodecError(f"{directory}: fingerprint mismatch (config.json says {meta['fingerprint']}, "
                         f"weights give {fp}); the checkpoint is incomplete or was modified")
