"""Codecs: a `Modality` batch <-> a `TokenStream`. Two layers, as in AION's ``aion/codecs``:

* the **tokenizer protocol** (`Tokenizer`) every stream's codec satisfies::

      codec.modality, codec.field             the modality class and the tensor field it tokenizes
      codec.encode(m) -> TokenStream          deterministic (eval mode, no grad)
      codec.decode(stream, **fields) -> m     fields: what tokens do not carry (wavelengths, spacing)
      codec.grid, codec.num_tokens            token grid (for positions) and its size
      codec.vocab_size, codec.token_dim       vocabulary (None = continuous), continuous token width
      codec.save_pretrained(dir) / Family.from_pretrained(dir)     config.json + model.safetensors
      codec.fingerprint()                     stable hash of name, config and every weight

  `Codec` is the base class implementing the shared parts (config parsing, modality and field
  resolution, fingerprint, persistence, input / stream checks). **Exact codecs** — quantile bins,
  categorical labels, mask regions, word vocabularies — subclass it directly and write their own
  ``encode`` / ``decode``: no fake quantizer, no unused config fields.

* the **neural codec template** (`NeuralCodec`) for the learned families, trained by
  ``mmtok fit-codec``::

      to_tensor(m) -> x --norm--> _encode(x) -> z --quantizer--> z_q, ids
      z_q -> _decode(z_q) -> x_hat --norm.inverse--> from_tensor(x_hat, **fields) -> modality

  A family builds ``encoder`` / ``decoder`` / ``quantizer`` (and ``norm``) in ``__init__``; a plugin
  codec usually overrides only ``to_tensor`` / ``from_tensor`` (unit conversion, resampling).

A codec is built from a config and its modality class: ``Family(config, modality=MyModality)``.
It never looks up plugins itself; `mmtok.PluginManager` builds codecs by name (``build_codec``)
and loads checkpoints of any family (``load_codec``).
"""

import dataclasses
import functools
import hashlib
import itertools
import json
import math
import os
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, Protocol, runtime_checkable

import torch
from pydantic import BaseModel, Field, ValidationError
from safetensors.torch import load_model, save_model
from torch import Tensor, nn

from mmtok.config import StrictModel, problems
from mmtok.errors import CodecError, ModalityError
from mmtok.io import atomic_write, open_safetensors
from mmtok.modality import Modality
from mmtok.quantize import FSQConfig, Quantizer, QuantizerConfig
from mmtok.tokens import TokenStream

__all__ = ["ChannelNorm", "Codec", "CodecConfig", "CodecOutput", "NeuralCodec", "NeuralCodecConfig",
           "Tokenizer", "eval_mode", "read_codec_config"]

FORMAT_VERSION = 1


@runtime_checkable
class Tokenizer(Protocol):
    """What every stream's codec provides (see the module docstring). `Codec` implements it."""

    name: str
    field: str

    @property
    def modality(self) -> type[Modality]: ...
    @property
    def grid(self) -> tuple[int, ...]: ...
    @property
    def num_tokens(self) -> int: ...
    @property
    def vocab_size(self) -> int | None: ...
    @property
    def token_dim(self) -> int | None: ...
    def encode(self, m: Modality) -> TokenStream: ...
    def decode(self, stream: TokenStream, **fields: Any) -> Modality: ...
    def fingerprint(self) -> str: ...
    def save_pretrained(self, directory: str | os.PathLike) -> Path: ...
    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, modality: type[Modality] | None = None): ...


class CodecConfig(StrictModel):
    """Base config of every codec. ``modality`` is the name of the modality it tokenizes;
    ``field`` the tensor field it reads (default: the modality's first tensor field)."""

    modality: str = Field(description="name of the modality it tokenizes")
    field: str | None = Field(default=None, description="the tensor field it reads (default: the modality's first)")


class NeuralCodecConfig(CodecConfig):
    """Config of a learned codec: adds the quantizer (FSQ / VQ / LFQ / residual VQ / continuous)."""

    quantizer: QuantizerConfig = Field(default_factory=FSQConfig, description="fsq / vq / lfq / residual_vq / continuous, with its options")


class CodecOutput(NamedTuple):
    """What a `NeuralCodec` training forward pass returns."""
    x: Tensor  # preprocessed input
    x_hat: Tensor  # reconstruction, same shape as x
    ids: Tensor | None  # (b, n * depth)
    aux_loss: Tensor  # () quantizer loss


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


def eval_mode(method):
    """Run a codec method under ``torch.no_grad()`` with the codec in eval mode (restored
    afterwards): tokens never depend on dropout, quantize dropout or codebook updates."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        training = [m for m in self.modules() if m.training]
        if not training:  # the usual case (`mmtok encode`): no mode to switch, 2 module walks saved
            with torch.no_grad():
                return method(self, *args, **kwargs)
        self.eval()
        try:
            with torch.no_grad():
                return method(self, *args, **kwargs)
        finally:
            for m in training:
                m.training = True

    return wrapper


def _checks_stream(decode):
    """``decode`` preceded by `Codec.check_stream`: grid, kind, vocabulary and id range are checked
    for every codec, whether or not its own ``decode`` remembers to."""
    if getattr(decode, "checks_stream", False):
        return decode

    @functools.wraps(decode)
    def wrapper(self, stream: TokenStream, *args, **fields):
        self.check_stream(stream)
        return decode(self, stream, *args, **fields)

    wrapper.checks_stream = True
    return wrapper


class Codec(nn.Module):
    """Base of every codec: the `Tokenizer` protocol's shared parts. Subclasses set
    ``config_class`` and ``family`` and implement `grid`, `vocab_size`, `encode`, `decode` (and
    `token_dim` for continuous streams); exact codecs also `fit_statistics` when they are fitted
    from data. ``default_modality`` is the modality class used when none is passed (it must
    match the config's ``modality`` name)."""

    config_class: ClassVar[type[CodecConfig]] = CodecConfig
    #: name under which the family itself is registered (a `CodecSpec` may use another)
    family: ClassVar[str] = "codec"
    default_modality: ClassVar[type[Modality] | None] = None
    #: each token decodes on its own to the value at its position (quantile bins, categories):
    #: a distribution over tokens then has a mean in data units (`mmtok evaluate`'s posterior mean)
    tokenwise: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "decode" in cls.__dict__:  # every codec's decode checks its stream first
            cls.decode = _checks_stream(cls.__dict__["decode"])

    def __init__(self, config: CodecConfig | dict, modality: type[Modality] | None = None,
                 name: str | None = None):
        super().__init__()
        self.config = self.parse_config(config)
        modality = modality or self._default_modality(self.config.modality)
        if modality.name != self.config.modality:
            raise CodecError(f"{type(self).__name__}: config is for modality {self.config.modality!r} "
                             f"but was given {modality.name!r}")
        self._modality = modality
        #: the registered name this codec was built under (its `CodecSpec` name)
        self.name = name or self.family
        fields = modality.tensor_fields()
        self.field = self.config.field or fields[0]
        if self.field not in fields:
            raise CodecError(f"{type(self).__name__}: modality {modality.name!r} has no tensor field "
                             f"{self.field!r}; fields are {list(fields)}")

    @property
    def modality(self) -> type[Modality]:
        return self._modality

    @classmethod
    def _default_modality(cls, name: str) -> type[Modality]:
        default = cls.default_modality
        if default is None or default.name != name:
            raise CodecError(f"{cls.__name__}: pass the modality class of {name!r} (modality=...), or "
                             "build the codec through the plugins: mmtok.get_plugin_manager().build_codec(...)")
        return default

    @classmethod
    def parse_config(cls, config: CodecConfig | dict) -> CodecConfig:
        if isinstance(config, cls.config_class):
            return config
        data = config.model_dump() if isinstance(config, BaseModel) else dict(config)
        try:
            return cls.config_class.model_validate(data)
        except ValidationError as err:
            raise CodecError(f"{cls.__name__} config: {'; '.join(problems(err))}") from None

    # ------------------------------------------------------------------ grid / vocabulary
    @property
    def grid(self) -> tuple[int, ...]:
        """Token grid of the emitted stream; its product is the number of tokens."""
        raise NotImplementedError

    @property
    def num_tokens(self) -> int:
        return math.prod(self.grid)

    @property
    def vocab_size(self) -> int | None:
        """Vocabulary of a discrete stream; None for a continuous one."""
        raise NotImplementedError

    @property
    def is_discrete(self) -> bool:
        return self.vocab_size is not None

    @property
    def token_dim(self) -> int | None:
        """Width of each continuous token (None for discrete streams)."""
        if self.is_discrete:
            return None
        raise NotImplementedError

    # ------------------------------------------------------------------ the protocol
    def encode(self, m: Modality) -> TokenStream:
        """Modality batch -> TokenStream (deterministic; decorate with `eval_mode`)."""
        raise NotImplementedError

    def decode(self, stream: TokenStream, **fields: Any) -> Modality:
        """TokenStream -> modality batch. ``fields`` are passed to the modality unchanged
        (e.g. wavelengths or voxel spacing that the tokens do not carry). A subclass's ``decode``
        gets the stream only after `check_stream` accepted it (ids within the vocabulary)."""
        raise NotImplementedError

    def fit_statistics(self, m: Modality) -> None:
        """Data-dependent fitting (normalisation statistics, quantile tables, vocabularies) from a
        representative batch. Called by `mmtok.fit_codec` before any training."""

    def preprocess(self, m: Modality) -> Tensor:
        """What the codec sees of ``m``, in its own space (checked, normalised): the space of
        `reconstruction_loss`. Default: the field as float."""
        return getattr(m, self.field).float()

    def reconstruction_loss(self, x: Tensor, x_hat: Tensor) -> Tensor:
        """Error of ``x_hat`` against ``x`` (both from `preprocess`); default mean squared error."""
        return torch.nn.functional.mse_loss(x_hat.float(), x.float())

    # ------------------------------------------------------------------ helpers
    def stream(self, ids: Tensor | None = None, values: Tensor | None = None) -> TokenStream:
        """A `TokenStream` of this codec for a batch of ids (b, n) or values (b, n, d)."""
        tokens = ids if ids is not None else values
        present = torch.ones(tokens.shape[0], dtype=torch.bool, device=tokens.device)
        return TokenStream(grid=self.grid, present=present, ids=ids, values=values,
                           vocab_size=self.vocab_size if ids is not None else None,
                           codec=self.name, fingerprint=self.fingerprint())

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

    def check_stream(self, stream: TokenStream) -> None:
        """Refuse a stream this codec cannot decode: another grid, kind or vocabulary, or token ids
        outside ``[0, vocab_size)``. Every codec's `decode` runs it first (`Codec.__init_subclass__`
        wraps each ``decode``), so no id outside the vocabulary reaches a codebook or a table."""
        made_by = f" (made by codec {stream.codec!r})" if stream.codec not in (None, self.name) else ""
        if tuple(stream.grid) != tuple(self.grid):
            raise CodecError(f"{self.name}: token grid {stream.grid}{made_by} does not match this codec's "
                             f"grid {self.grid}")
        if stream.is_discrete != self.is_discrete:
            kind = "discrete" if self.is_discrete else "continuous"
            raise CodecError(f"{self.name}: is {kind}, the stream{made_by} is not")
        if stream.is_discrete and stream.vocab_size != self.vocab_size:
            raise CodecError(f"{self.name}: vocabulary {self.vocab_size}, stream{made_by} has {stream.vocab_size}")
        if stream.is_discrete and stream.ids.numel():
            lo, hi = (int(v) for v in torch.aminmax(stream.ids))
            if lo < 0 or hi >= self.vocab_size:
                raise CodecError(f"{self.name}: token ids of the stream{made_by} range over [{lo}, {hi}], outside "
                                 f"this codec's vocabulary [0, {self.vocab_size}); the tokens are damaged or "
                                 "were not made by this codec (re-encode them with it)")

    def decoded_shape(self, m: Modality) -> tuple[int, ...]:
        """Shape of the field that ``decode(encode(m))`` returns: the input's, unless the codec
        brings any input to its own grid (resampling / cropping codecs override this)."""
        return tuple(getattr(m, self.field).shape)

    def reconstruction_target(self, m: Modality) -> Tensor:
        """What ``decode(encode(m))`` should give back for field ``self.field``: the field itself,
        or for codecs that resample / window the input on their grid."""
        return getattr(m, self.field)

    def canonical(self, m: Modality) -> Modality:
        """``m`` brought onto the grid this codec tokenizes (resized, resampled, cropped), so that
        samples of different shapes can be collated for fitting (`mmtok fit-codec`). Default:
        unchanged (codecs that need one shape refuse others in `encode`)."""
        return m

    def decode_like(self, stream: TokenStream, m: Modality) -> Modality:
        """Decode ``stream`` with the other fields of ``m``, the modality it was encoded from
        (wavelengths, spacing...; codecs that change the grid bring them to theirs)."""
        return self.decode(stream, **self.passthrough_fields(m))

    def passthrough_fields(self, m: Modality) -> dict[str, Any]:
        """The fields of ``m`` this codec does not tokenize, e.g. to pass to `decode`."""
        return {f.name: getattr(m, f.name) for f in dataclasses.fields(m)
                if f.init and f.name != self.field}

    # ------------------------------------------------------------------ persistence
    _fingerprint_cache: tuple[tuple, str] | None = None

    def _state_version(self) -> tuple:
        # data pointer + in-place version counter of every tensor: changes whenever a weight is
        # replaced or modified (optimizer steps, load_state_dict, manual edits)
        # (walking parameters and buffers directly: state_dict() costs ~0.5 ms on a small codec, and
        # every encode call asks for the fingerprint)
        return tuple((t.data_ptr(), t._version) for t in itertools.chain(self.parameters(), self.buffers()))

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
        """Load a codec written by `save_pretrained` (no pickle: JSON + safetensors) from a folder,
        or a pretrained codec shipped inside an installed plugin by its name
        (``Codec.from_pretrained("tabular/diabetes-labs-fsq")``; `mmtok plugins` lists them).
        On `Codec` itself the family class is found among the installed plugins."""
        directory = Path(directory)
        manager = None
        if not directory.is_dir() or cls is Codec:
            from mmtok.plugins import get_plugin_manager

            manager = get_plugin_manager()
            if not directory.is_dir():
                name = str(directory)
                if not manager.has_pretrained(name):
                    known = ", ".join(manager.names("pretrained")) or "none installed"
                    raise CodecError(f"{name}: not a codec checkpoint (no config.json) nor an installed "
                                     f"pretrained codec ({known})")
                directory = Path(manager.pretrained(name).path)
            if cls is Codec:  # the family class of the checkpoint, from the plugins
                return manager.load_codec(directory, modality=modality)
        meta = read_codec_config(directory)
        if meta["family"] != cls.family:
            raise CodecError(f"{directory}: holds a {meta['family']!r} codec, not {cls.family!r}")
        if modality is None and manager is not None:  # a shipped name: its modality from the plugins
            modality = manager.modality(meta["modality"])
        codec = cls(meta["config"], modality=modality or cls._default_modality(meta["modality"]),
                    name=meta["codec"])
        codec.eval()
        load_weights(codec, directory, meta)
        return codec


class NeuralCodec(Codec):
    """The learned-codec template (AION-style). Subclasses create ``encoder``, ``decoder``,
    ``quantizer`` and optionally ``norm`` (a `ChannelNorm`) and define `token_grid` and
    `input_shape`; plugins override `to_tensor` / `from_tensor` for their units and grids."""

    config_class: ClassVar[type[CodecConfig]] = NeuralCodecConfig

    encoder: nn.Module
    decoder: nn.Module
    quantizer: Quantizer
    # ``norm`` (a ChannelNorm) is optional: no class attribute, which would shadow the submodule

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
    def vocab_size(self) -> int | None:
        return self.quantizer.vocab_size

    @property
    def token_dim(self) -> int | None:
        return None if self.quantizer.is_discrete else self.quantizer.dim

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Per-sample shape of the field that `to_tensor` accepts."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the template
    def to_tensor(self, m: Modality) -> Tensor:
        """Modality -> raw encoder input (b, ...) in the codec's units, before normalisation."""
        return self.read_field(m, self.input_shape)

    def from_tensor(self, x: Tensor, **fields: Any) -> Modality:
        """Raw decoder output (b, ...) -> modality; ``fields`` fill its other fields."""
        return self.modality(**{self.field: x, **fields})

    def _encode(self, x: Tensor) -> Tensor:
        """Normalised input -> channel-last latents (b, n, latent_dim)."""
        return self.encoder(x)

    def _decode(self, z_q: Tensor) -> Tensor:
        """Quantized latents (b, n, latent_dim) -> normalised reconstruction."""
        return self.decoder(z_q)

    def _norm(self) -> ChannelNorm | None:
        return self._modules.get("norm")

    def preprocess(self, m: Modality) -> Tensor:
        x, norm = self.to_tensor(m), self._norm()
        return x if norm is None else norm(x)

    def postprocess(self, x_hat: Tensor, **fields: Any) -> Modality:
        x, norm = x_hat.float(), self._norm()
        return self.from_tensor(x if norm is None else norm.inverse(x), **fields)

    @torch.no_grad()
    def fit_statistics(self, m: Modality) -> None:
        norm = self._norm()
        if norm is not None:
            norm.fit(self.to_tensor(m))

    def forward(self, m: Modality) -> CodecOutput:
        """Training pass: preprocess -> encode -> quantize -> decode (no postprocess)."""
        self.check_input(m)
        x = self.preprocess(m)
        q = self.quantizer.quantize(self._encode(x))
        return CodecOutput(x, self._decode(q.z_q), q.ids, q.aux_loss)

    @eval_mode
    def encode(self, m: Modality) -> TokenStream:
        """Modality batch -> TokenStream (always in eval mode: deterministic)."""
        self.check_input(m)
        q = self.quantizer.quantize(self._encode(self.preprocess(m)))
        return self.stream(ids=q.ids) if q.ids is not None else self.stream(values=q.z_q.float())

    @eval_mode
    def decode(self, stream: TokenStream, **fields: Any) -> Modality:
        z_q = self.quantizer.ids_to_codes(stream.ids) if stream.is_discrete else stream.values
        param = next(self.parameters(), None)
        if param is not None:
            z_q = z_q.to(param.dtype)
        return self.postprocess(self._decode(z_q), **fields)


def read_codec_config(directory: Path) -> dict:
    """The ``config.json`` of a codec checkpoint folder, checked for the keys loading needs."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise CodecError(f"{directory}: not a codec checkpoint (no config.json)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CodecError(f"{path}: invalid JSON ({err})") from None
    missing = {"codec", "family", "config", "fingerprint", "modality"} - set(meta)
    if missing:
        raise CodecError(f"{path}: missing keys {sorted(missing)}")
    return meta


def load_weights(codec: Codec, directory: Path, meta: dict) -> None:
    weights = Path(directory) / "model.safetensors"
    if not weights.is_file():
        raise CodecError(f"{directory}: config.json present but model.safetensors missing")
    open_safetensors(weights, "codec weights", "re-fit the codec (`mmtok fit-codec`) or restore the folder")
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
