"""`SharedModelTransfer`: calibration transfer through mmtok's own path, as a method of the
benchmark protocol (``fit(task)`` / ``predict(X)``, like the classical baselines).

The ``nir-calibration`` bundle's two streams, built in memory for each task:

    tok_nir_spectralfm  every spectrum -> `SpectralFMCodec` (frozen pretrained SpectralFM):
                        continuous tokens (b, 16 + 1, w), patch tokens + z_chem
    tok_nir_properties  the task's property -> `mmtok.ScalarCodec` (``bins`` quantile bins, fitted
                        on y_cal and y_std): one discrete token, present only for labelled samples

Training samples, one `mmtok.TokenBatch` with per-sample presence:

    source calibration spectra X_cal       spectrum + property
    the N standards, X_source_std and X_target_std   spectrum + property (y_std)
    unlabelled target spectra              spectrum only (property absent)

mmtok's shared `MultimodalMaskedTransformer` is trained from scratch (tiny: d_model 32, 2 + 1
blocks) with 4M-style masked modelling: per sample a fraction (uniform in [0, max_mask]) of the
spectral tokens is hidden and becomes a target (MSE), and the property token is a target wherever
it is present (cross-entropy), never an input. Unlabelled spectra therefore contribute spectral
targets only. ``predict`` imputes the property stream from the spectral tokens alone and decodes
the posterior mean: predict_proba (b, 1, bins) x the value each bin decodes to.

Tokens are centred per instrument (di-PLS-style, with unlabelled spectra only): source tokens on
the mean over X_cal, target tokens on the mean over the unlabelled target spectra (the standards
when there are none), both divided by the per-(token, dimension) spread over X_cal. The frozen
SpectralFM tokens are cached per spectrum across repeats (`TOKEN_CACHE`).

Hyperparameters are fixed in advance (the constructor defaults), not chosen on any test rows.
Why discrete property tokens: they are what the bundle's registered property stream is
(`nir-properties-quantile`), the posterior over bins decodes to an expected value (no arg-max
rounding), and the core imputes discrete streams with `predict_proba`.
"""

import contextlib
import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mmtok import ModelConfig, MultimodalMaskedTransformer, ScalarCodec, StreamSpec, TokenBatch, TokenStream
from mmtok_plugin_nir.baselines import TransferInputError, TransferTask
from mmtok_plugin_nir.codecs import SpectralFMCodec, spectralfm_weights
from mmtok_plugin_nir.modalities import NIRSpectrum, PropertyTargets

__all__ = ["SharedModelTransfer", "SPECTRUM_KEY", "PROPERTY_KEY", "TOKEN_CACHE", "spectrum_tokens",
           "training_selection"]

SPECTRUM_KEY, PROPERTY_KEY = "tok_nir_spectralfm", "tok_nir_properties"

#: (codec fingerprint, axis digest) -> {row digest: raw tokens (n, w) float64}
TOKEN_CACHE: dict[tuple[str, str], dict[bytes, torch.Tensor]] = {}
_CODECS: dict[tuple[str, int], SpectralFMCodec] = {}


def _codec(checkpoint: str | Path, patch_tokens: int) -> SpectralFMCodec:
    """The SpectralFM codec of a run directory with ``patch_tokens`` patch tokens (cached)."""
    weights = spectralfm_weights(checkpoint)
    key = (str(weights.resolve()), patch_tokens)
    if key not in _CODECS:
        probe = SpectralFMCodec({"modality": NIRSpectrum.name, "checkpoint": str(weights)})
        n_patches = probe.n_patch_tokens
        if n_patches % patch_tokens:
            raise TransferInputError(f"patch_tokens: expected a divisor of the checkpoint's {n_patches} patches, "
                                     f"found {patch_tokens}")
        _CODECS[key] = SpectralFMCodec({"modality": NIRSpectrum.name, "checkpoint": str(weights),
                                        "pool": n_patches // patch_tokens})
    return _CODECS[key]


def spectrum_tokens(codec: SpectralFMCodec, X: np.ndarray, wavelength_nm: np.ndarray,
                    batch_size: int = 64) -> torch.Tensor:
    """Raw (unstandardised) SpectralFM tokens (n, t, w) float64 of spectra X (n, k) on
    wavelength_nm (k,), each row encoded once per codec and axis (`TOKEN_CACHE`)."""
    X = np.ascontiguousarray(X, dtype=np.float64)
    axis = np.ascontiguousarray(wavelength_nm, dtype=np.float64)
    cache = TOKEN_CACHE.setdefault((codec.fingerprint(), hashlib.sha1(axis.tobytes()).hexdigest()), {})
    keys = [hashlib.sha1(row.tobytes()).digest() for row in X]
    todo = sorted({k: i for i, k in enumerate(keys) if k not in cache}.values())
    for start in range(0, len(todo), batch_size):
        rows = todo[start:start + batch_size]
        m = NIRSpectrum(values=torch.as_tensor(X[rows], dtype=torch.float32),
                        wavelength_nm=torch.as_tensor(axis, dtype=torch.float32).expand(len(rows), -1).clone(),
                        instrument=torch.zeros(len(rows), dtype=torch.long),
                        domain=torch.zeros(len(rows), dtype=torch.long))
        for i, tok in zip(rows, codec.raw_tokens(m)):
            cache[keys[i]] = tok
    if not keys:
        return torch.empty(0, *codec.token_mean.shape, dtype=torch.float64)
    return torch.stack([cache[k] for k in keys])


@contextlib.contextmanager
def _threads(n: int):
    """torch's intra-op threads set to n inside the block (restored after): the shared model is tiny
    (~50 k parameters), and more threads only add synchronisation (measured on a loaded 2-core
    machine: 1 thread 55 ms per step, 2 threads 1 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _slots(selection: torch.Tensor, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(b, k) slot indices of the True entries of each row of selection (b, n), in slot order, and
    which of them are real (padding points at slot 0)."""
    counts = selection.sum(1)
    k = max(int(counts.max()) if width is None else width, 1)
    order = torch.sort((~selection).to(torch.uint8), dim=1, stable=True).indices[:, :k]
    valid = torch.arange(k) < counts.unsqueeze(1)
    return torch.where(valid, order, 0), valid


def training_selection(labelled: torch.Tensor, n_spectral: int, max_mask: float,
                       generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Input and target slots (b, n_spectral + 1) bool of one training step. Slots 0..n_spectral-1
    are the spectral tokens, slot n_spectral the property token. Per sample a fraction
    u ~ U(0, max_mask) of the spectral tokens (at least one when the sample has no property) is
    hidden and becomes a target; the property is a target exactly where ``labelled`` (b,) is True
    and never an input."""
    b = labelled.shape[0]
    n_masked = (torch.rand(b, generator=generator) * max_mask * n_spectral).floor().long()
    n_masked = torch.where(labelled, n_masked, n_masked.clamp_min(1)).clamp_max(n_spectral - 1)
    rank = torch.rand(b, n_spectral, generator=generator).argsort(1).argsort(1)
    hidden = rank < n_masked.unsqueeze(1)
    inputs = torch.cat([~hidden, torch.zeros(b, 1, dtype=torch.bool)], 1)
    targets = torch.cat([hidden, labelled.view(b, 1)], 1)
    return inputs, targets


class SharedModelTransfer:
    """SpectralFM tokens + property tokens on mmtok's shared transformer; predict = impute the
    property stream (see the module docstring).

    checkpoint: SpectralFM run directory (model.safetensors + model.json); wavelength_nm (k,): the
    axis of every spectrum the method sees. patch_tokens: patch tokens per spectrum (a divisor of
    the checkpoint's patch count); bins: quantile bins of the property; steps / lr / batch_size:
    AdamW training; max_mask: largest hidden fraction of spectral tokens; spectrum_weight: weight of
    the spectral MSE against the property cross-entropy; center: "instrument" (each instrument on
    its own mean) or "source" (both on the source mean).
    """

    name = "shared-model"
    min_pairs = 0

    def __init__(self, checkpoint: str | Path, wavelength_nm: np.ndarray, patch_tokens: int = 16, bins: int = 16,
                 d_model: int = 32, num_heads: int = 4, encoder_depth: int = 2, decoder_depth: int = 1,
                 steps: int = 300, lr: float = 2e-3, weight_decay: float = 0.01, batch_size: int = 64,
                 max_mask: float = 0.5, spectrum_weight: float = 0.5, center: str = "instrument",
                 threads: int = 1, seed: int = 0) -> None:
        if center not in ("instrument", "source"):
            raise TransferInputError(f"center: expected 'instrument' or 'source', found {center!r}")
        if not 0 <= max_mask < 1:
            raise TransferInputError(f"max_mask: expected a fraction in [0, 1), found {max_mask}")
        self.checkpoint = checkpoint
        self.wavelength_nm = np.asarray(wavelength_nm, dtype=np.float64)
        self.options = dict(patch_tokens=patch_tokens, bins=bins, steps=steps, lr=lr, weight_decay=weight_decay,
                            batch_size=batch_size, max_mask=max_mask, spectrum_weight=spectrum_weight,
                            center=center, threads=threads, seed=seed)
        self.model_config = ModelConfig(d_model=d_model, num_heads=num_heads, encoder_depth=encoder_depth,
                                        decoder_depth=decoder_depth)
        self.model: MultimodalMaskedTransformer | None = None
        self.history: list[dict[str, float]] = []

    # ------------------------------------------------------------------ tokens
    def _raw(self, X: np.ndarray) -> torch.Tensor:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.wavelength_nm.size:
            raise TransferInputError(f"spectra: expected (n, {self.wavelength_nm.size}) on the method's wavelength "
                                     f"axis, found {X.shape}")
        return spectrum_tokens(self.codec, X, self.wavelength_nm)

    def _standardise(self, raw: torch.Tensor, instrument: str) -> torch.Tensor:
        center = self.target_mean if instrument == "target" else self.source_mean
        return ((raw - center) / self.scale).float()

    def spectrum_stream(self, tokens: torch.Tensor) -> TokenStream:
        """The spectral stream of standardised tokens (b, t, w), every sample present."""
        return TokenStream(grid=(tokens.shape[1],), values=tokens, present=torch.ones(len(tokens), dtype=torch.bool),
                           codec=self.codec.name)

    def property_stream(self, ids: torch.Tensor, present: torch.Tensor) -> TokenStream:
        """The property stream: ids (b,) of the quantile bins (any value where absent), present (b,)."""
        return TokenStream(grid=(1,), ids=ids.long().view(-1, 1), vocab_size=self.options["bins"],
                           present=present.bool(), codec=self.property_codec.name)

    # ------------------------------------------------------------------ protocol
    def fit(self, task: TransferTask) -> "SharedModelTransfer":
        with _threads(self.options["threads"]):
            return self._fit(task)

    def _fit(self, task: TransferTask) -> "SharedModelTransfer":
        o = self.options
        self.codec = _codec(self.checkpoint, o["patch_tokens"])
        raw_cal, raw_unl = self._raw(task.X_cal), self._raw(task.X_target_unlabeled)
        raw_s, raw_t = self._raw(task.X_source_std), self._raw(task.X_target_std)
        self.source_mean = raw_cal.mean(0)
        self.scale = raw_cal.std(0, correction=0).clamp_min(1e-6)
        target = raw_unl if len(raw_unl) else raw_t
        self.target_mean = target.mean(0) if o["center"] == "instrument" and len(target) else self.source_mean
        spectra = torch.cat([self._standardise(raw_cal, "source"), self._standardise(raw_s, "source"),
                             self._standardise(raw_t, "target"), self._standardise(raw_unl, "target")])
        y = np.concatenate([task.y_cal, task.y_std, task.y_std])
        labelled = torch.zeros(len(spectra), dtype=torch.bool)
        labelled[:len(y)] = True
        self.property_codec = ScalarCodec({"modality": PropertyTargets.name, "columns": 1, "num_bins": o["bins"]},
                                          modality=PropertyTargets, name="nir-properties-quantile")
        targets = PropertyTargets(values=torch.as_tensor(y, dtype=torch.float32).view(-1, 1), names=("property",))
        self.property_codec.fit_statistics(targets)
        ids = torch.zeros(len(spectra), dtype=torch.long)
        ids[:len(y)] = self.property_codec.encode(targets).ids[:, 0]
        every_bin = torch.arange(o["bins"]).view(-1, 1)
        self.bin_values = self.property_codec.decode(self.property_stream(every_bin, torch.ones(o["bins"])),
                                                     names=("property",)).values[:, 0].double()
        streams = {SPECTRUM_KEY: StreamSpec(grid=(spectra.shape[1],), dim=spectra.shape[2]),
                   PROPERTY_KEY: StreamSpec(grid=(1,), vocab_size=o["bins"])}
        torch.manual_seed(o["seed"])   # here: building the codec (first fit only) draws random numbers too
        self.model = MultimodalMaskedTransformer(streams, self.model_config)
        self._train(spectra, ids, labelled)
        self.model.eval()
        return self

    def loss(self, spectra: torch.Tensor, ids: torch.Tensor, labelled: torch.Tensor,
             generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(total, property cross-entropy, spectral MSE) of one masked step on a batch: spectra
        (b, t, w) standardised tokens, ids (b,) property bins, labelled (b,) property presence."""
        model, n = self.model, spectra.shape[1]
        batch = TokenBatch({SPECTRUM_KEY: self.spectrum_stream(spectra), PROPERTY_KEY: self.property_stream(ids, labelled)})
        inputs, targets = training_selection(labelled, n, self.options["max_mask"], generator)
        in_idx, in_ok = _slots(inputs)
        tgt_idx, tgt_ok = _slots(targets)
        h = model.decode(model.encode(batch, in_idx, in_ok), tgt_idx, tgt_ok)
        is_prop = tgt_ok & (tgt_idx == n)
        is_spec = tgt_ok & (tgt_idx < n)
        zero = h.sum() * 0.0
        ce = zero
        if bool(is_prop.any()):
            # logits over the joint vocabulary (-inf outside the property's own slice)
            offset = int(model.layout.vocab_offset[model.layout.index(PROPERTY_KEY)])
            logits = model.logits(h[is_prop], tgt_idx[is_prop])
            ce = F.cross_entropy(logits, ids.view(-1, 1).expand_as(tgt_idx)[is_prop] + offset)
        mse = zero
        if bool(is_spec.any()):
            true = spectra.gather(1, tgt_idx.clamp_max(n - 1).unsqueeze(-1).expand(-1, -1, spectra.shape[2]))
            mse = (model.value_head[SPECTRUM_KEY](h) - true).pow(2).mean(-1)[is_spec].mean()
        return ce + self.options["spectrum_weight"] * mse, ce.detach(), mse.detach()

    def _train(self, spectra: torch.Tensor, ids: torch.Tensor, labelled: torch.Tensor) -> None:
        o = self.options
        g = torch.Generator().manual_seed(o["seed"])
        opt = torch.optim.AdamW(self.model.parameters(), lr=o["lr"], weight_decay=o["weight_decay"])
        warmup = max(1, o["steps"] // 10)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * min(s, o["steps"]) / o["steps"])))
        self.model.train()
        self.history = []
        for step in range(o["steps"]):
            rows = torch.randperm(len(spectra), generator=g)[:o["batch_size"]]
            total, ce, mse = self.loss(spectra[rows], ids[rows], labelled[rows], g)
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            sched.step()
            if step % 50 == 0 or step == o["steps"] - 1:
                self.history.append({"step": step, "ce": float(ce), "mse": float(mse)})

    @torch.no_grad()
    def predict_proba(self, X_target: np.ndarray) -> torch.Tensor:
        """(n, bins) posterior over the property's bins of target-instrument spectra (n, k)."""
        if self.model is None:
            raise RuntimeError("SharedModelTransfer.predict before fit")
        with _threads(self.options["threads"]):
            spectra = self._standardise(self._raw(X_target), "target")
            n = len(spectra)
            batch = TokenBatch({SPECTRUM_KEY: self.spectrum_stream(spectra),
                                PROPERTY_KEY: self.property_stream(torch.zeros(n), torch.zeros(n))})
            return self.model.predict_proba(batch, PROPERTY_KEY)[:, 0].double()

    def predict(self, X_target: np.ndarray) -> np.ndarray:
        """(n,) property values: the posterior mean over bins of the imputed property token."""
        return (self.predict_proba(X_target) @ self.bin_values).numpy()
