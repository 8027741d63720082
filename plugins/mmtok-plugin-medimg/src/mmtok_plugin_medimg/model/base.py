"""`MedImageVAE`: what the baseline and the disentangled conditional VAE share: the modality
embedding, the conditional decoder, the ELBO / beta-TC terms, modality centroids, conditional
sampling and persistence (``model.safetensors`` + ``config.json``).

    model.decode(z (b, latent), y (b,)) -> x_hat (b, c, s, s) in [0, 1]
    model.fit_centroids(x, y)            -> centroids (m, d) (a buffer, saved with the weights)
    model.classify(x)                    -> pred (b,), distance (b,)  (nearest fitted centroid)
    model.sample(y, n, generator)        -> (n, c, s, s)
    model.save(dir) / MedImageVAE.load(dir) (= `load_vae`: the class named in the weights)

Labels y are int64 indices into ``config.modalities``. In training mode the latent is sampled
(reparameterisation, torch's global RNG); in eval mode z = mu, so eval outputs are deterministic.
"""

import dataclasses
import json
from pathlib import Path
from typing import ClassVar

import torch
from jaxtyping import Float, Int
from pydantic import ValidationError
from safetensors.torch import save_file
from torch import Tensor, nn

from mmtok import DamagedFileError, MmtokError, ModalityError, atomic_write, open_safetensors, read_json
from mmtok_plugin_medimg.model.config import ARCHITECTURE_FIELDS, VAEConfig
from mmtok_plugin_medimg.model.decoders import ConditionalDecoder
from mmtok_plugin_medimg.model.layers import ModalityEmbedding
from mmtok_plugin_medimg.model.losses import beta_tc_terms, gaussian_kl, reconstruction_loss

__all__ = ["CONFIG_FILE", "MedImageVAE", "VAEOutput", "WEIGHTS_FILE", "load_vae"]

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
_FORMAT = "mmtok-medimg-vae"
_LOGVAR_RANGE = (-10.0, 10.0)


@dataclasses.dataclass
class VAEOutput:
    """x_hat (b, c, s, s) in [0, 1]; mu, logvar, z (b, latent); loss: the scalar training
    objective; terms: each of its parts (scalars: recon, kl, ... see the model's docstring)."""

    x_hat: Tensor
    mu: Tensor
    logvar: Tensor
    z: Tensor
    loss: Tensor
    terms: dict[str, Tensor]


class MedImageVAE(nn.Module):
    """Base of `ConditionalVAE` and `DisentangledConditionalVAE` (not used directly)."""

    _classes: ClassVar[dict[str, type["MedImageVAE"]]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        MedImageVAE._classes[cls.__name__] = cls

    def __init__(self, config: VAEConfig, latent_size: int, centroid_size: int):
        super().__init__()
        self.config = config
        self.latent_size = latent_size
        #: N of the beta-TC minibatch-weighted sampling (`train_vae` sets it; None: the batch size)
        self.dataset_size: int | None = None
        self.embedding = ModalityEmbedding(config.modalities, config.embed_dim)
        self.decoder = ConditionalDecoder(config, latent_size)
        m = len(config.modalities)
        self.register_buffer("centroids", torch.zeros(m, centroid_size))
        self.register_buffer("centroid_counts", torch.zeros(m, dtype=torch.long))

    # ------------------------------------------------------------------ checks
    def check_images(self, x: Tensor, what: str = "x") -> None:
        c = self.config
        expected = (c.channels, c.image_size, c.image_size)
        if not isinstance(x, Tensor) or x.ndim != 4 or tuple(x.shape[1:]) != expected:
            found = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ModalityError(f"{type(self).__name__} {what}: expected images (b, {c.channels}, {c.image_size}, "
                                f"{c.image_size}), found {found} (preprocessing.to_model_input resizes)")
        if not x.is_floating_point():
            raise ModalityError(f"{type(self).__name__} {what}: expected float pixels in [0, 1], found {x.dtype}")

    def check_labels(self, y: Tensor, batch: int) -> None:
        if not isinstance(y, Tensor) or y.shape != (batch,) or y.dtype != torch.long:
            found = f"{tuple(y.shape)} {y.dtype}" if isinstance(y, Tensor) else type(y).__name__
            raise ModalityError(f"{type(self).__name__} y: expected ({batch},) int64 indices into "
                                f"config.modalities, found {found}")

    # ------------------------------------------------------------------ parts every model shares
    def encode(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def decode(self, z: Float[Tensor, "b z"], y: Int[Tensor, " b"]) -> Float[Tensor, "b c s s"]:
        """Images in [0, 1] of latents z under modalities y."""
        return torch.sigmoid(self.decoder(z, self.embedding(y), y))

    def reparameterize(self, mu: Tensor, logvar: Tensor) -> Tensor:
        """z = mu + sigma * eps in training mode, z = mu in eval mode."""
        if not self.training:
            return mu
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)

    def _latent(self, h: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar.clamp(*_LOGVAR_RANGE)

    def elbo_terms(self, x: Tensor, logits: Tensor, mu: Tensor, logvar: Tensor, z: Tensor,
                   kl_scale: float = 1.0) -> tuple[Tensor, dict[str, Tensor]]:
        """recon + kl_scale * (kl_weight * KL) ("elbo") or recon + kl_scale * (kl_weight * (mi +
        dwkl) + tc_weight * tc) ("beta_tc"); batch means of per-image sums. ``kl_scale``: the
        warm-up factor of `train_vae`."""
        c = self.config
        recon = reconstruction_loss(logits, x, c.reconstruction).mean()
        kl = gaussian_kl(mu, logvar).mean()
        terms = {"recon": recon, "kl": kl}
        if c.objective == "beta_tc":
            tc_terms = beta_tc_terms(z, mu, logvar, self.dataset_size)
            terms.update(tc_terms)
            regulariser = c.kl_weight * (tc_terms["mi"] + tc_terms["dwkl"]) + c.tc_weight * tc_terms["tc"]
        else:
            regulariser = c.kl_weight * kl
        return recon + kl_scale * regulariser, terms

    # ------------------------------------------------------------------ centroids
    def centroid_latent(self, x: Tensor, y: Tensor) -> Tensor:
        """(b, d): the latent the centroids live in (subclasses)."""
        raise NotImplementedError

    @torch.no_grad()
    def fit_centroids(self, x: Float[Tensor, "b c s s"], y: Int[Tensor, " b"], batch_size: int = 256) -> Tensor:
        """Store the mean latent (mu) of each modality of (x, y) in the ``centroids`` buffer
        (modalities absent from y: count 0, never predicted nor sampled); returns it (m, d)."""
        self.check_images(x)
        self.check_labels(y, len(x))
        was_training = self.training
        self.eval()
        device = self.centroids.device
        parts = [self.centroid_latent(x[i:i + batch_size].to(device), y[i:i + batch_size].to(device))
                 for i in range(0, len(x), batch_size)]
        self.train(was_training)
        latent = torch.cat(parts)
        y = y.to(device)
        m = len(self.config.modalities)
        counts = torch.bincount(y, minlength=m)
        sums = torch.zeros_like(self.centroids).index_add_(0, y, latent.to(self.centroids.dtype))
        self.centroids.copy_(sums / counts.clamp_min(1)[:, None])
        self.centroid_counts.copy_(counts)
        return self.centroids.clone()

    def fitted_modalities(self) -> Tensor:
        """Indices of the modalities with a centroid; `MmtokError` before `fit_centroids`."""
        fitted = torch.nonzero(self.centroid_counts > 0).flatten()
        if len(fitted) == 0:
            raise MmtokError(f"{type(self).__name__}: no modality centroids yet; call fit_centroids(x, y) "
                             "(train_vae does at the end of training)")
        return fitted

    def classify(self, x: Float[Tensor, "b c s s"]) -> tuple[Int[Tensor, " b"], Float[Tensor, " b"]]:
        raise NotImplementedError

    def _nearest(self, latent: Float[Tensor, "b d"]) -> tuple[Int[Tensor, " b"], Float[Tensor, " b"]]:
        fitted = self.fitted_modalities()
        dist = torch.cdist(latent, self.centroids[fitted])         # (b, k)
        best, which = dist.min(1)
        return fitted[which], best

    # ------------------------------------------------------------------ sampling
    def labels_for(self, y: int | str | Tensor, n: int | None) -> Tensor:
        """(b,) int64 labels on the model's device from one label (index or name, repeated n
        times, default 1) or a (b,) tensor (n: None or b)."""
        device = self.centroids.device
        if isinstance(y, Tensor) and y.ndim == 1:
            if n is not None and n != len(y):
                raise ModalityError(f"sample: {len(y)} labels given with n={n}; pass n=None or one label")
            labels = y.to(device=device, dtype=torch.long)
        else:
            index = self.config.index_of(y) if isinstance(y, str) else int(y)
            labels = torch.full((1 if n is None else n,), index, dtype=torch.long, device=device)
        self.embedding(labels)  # range check
        return labels

    def sample_latent(self, y: Int[Tensor, " b"], generator: torch.Generator | None, noise: float) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, y: int | str | Tensor, n: int | None = None, generator: torch.Generator | None = None,
               noise: float = 0.0) -> Float[Tensor, "n c s s"]:
        """Conditional samples in [0, 1] of modality y (index, name, or a (b,) tensor of
        indices); see `sample_latent` of each model for the latent used."""
        labels = self.labels_for(y, n)
        return self.decode(self.sample_latent(labels, generator, noise), labels)

    def _normal(self, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
        """N(0, I) drawn on the generator's device (CPU by default), moved to the model's."""
        where = generator.device if generator is not None else "cpu"
        return torch.randn(shape, generator=generator, device=where).to(self.centroids.device)

    # ------------------------------------------------------------------ persistence
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save(self, directory: str | Path) -> Path:
        """Write ``model.safetensors`` (weights + centroids; metadata: the class and its config)
        and ``config.json`` into ``directory``, each atomically (temporary name, then rename)."""
        directory = Path(directory)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        config = self.config.to_dict()
        metadata = {"format": _FORMAT, "model": type(self).__name__, "config": json.dumps(config, sort_keys=True)}
        atomic_write(directory / WEIGHTS_FILE, lambda p: save_file(tensors, str(p), metadata=metadata))
        atomic_write(directory / CONFIG_FILE,
                     lambda p: p.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n"))
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: torch.device | str = "cpu") -> "MedImageVAE":
        """Rebuild a model written by `save`, in eval mode. ``MedImageVAE.load`` (= `load_vae`)
        builds the class named in the weights; a subclass refuses weights of another class. A
        ``config.json`` that does not match the weights (architecture fields, tensor names or
        shapes) is a `DamagedFileError` naming both files and the difference."""
        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
        raw = read_json(config_path)
        try:
            config = VAEConfig.from_dict(raw)
        except (ValidationError, TypeError) as err:
            detail = " ".join(str(err).split())
            raise DamagedFileError(f"{config_path}: not a VAEConfig ({detail[:300]})") from None
        handle = open_safetensors(weights_path, "VAE weights", "re-run training or restore the file")
        meta = handle.metadata() or {}
        name = meta.get("model")
        if meta.get("format") != _FORMAT or name not in MedImageVAE._classes:
            raise DamagedFileError(f"{weights_path}: not a medimg VAE (metadata format={meta.get('format')!r}, "
                                   f"model={name!r}; expected format {_FORMAT!r})")
        if cls is not MedImageVAE and name != cls.__name__:
            raise MmtokError(f"{weights_path}: holds a {name}, not a {cls.__name__}; load it with {name}.load "
                             "or mmtok_plugin_medimg.model.load_vae")
        if "config" in meta:
            saved = VAEConfig.from_dict(json.loads(meta["config"]))
            differ = [f"{f}: config.json has {getattr(config, f)!r}, the weights were trained with "
                      f"{getattr(saved, f)!r}" for f in ARCHITECTURE_FIELDS if getattr(config, f) != getattr(saved, f)]
            if differ:
                raise DamagedFileError(f"{config_path} does not match {weights_path}: {'; '.join(differ)}")
        model = MedImageVAE._classes[name](config)
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        expected = model.state_dict()
        problems = [f"{k} missing from the file" for k in expected if k not in tensors]
        problems += [f"{k} in the file is not part of the model" for k in tensors if k not in expected]
        problems += [f"{k}: {tuple(tensors[k].shape)} in the file, {tuple(v.shape)} under config.json"
                     for k, v in expected.items() if k in tensors and tensors[k].shape != v.shape]
        if problems:
            more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
            raise DamagedFileError(f"{weights_path}: weights do not fit {config_path} ({'; '.join(problems[:3])}"
                                   f"{more})")
        model.load_state_dict(tensors)
        return model.to(device).eval()


def load_vae(directory: str | Path, device: torch.device | str = "cpu") -> MedImageVAE:
    """Load a saved `ConditionalVAE` or `DisentangledConditionalVAE` (the class is in the weights)."""
    return MedImageVAE.load(directory, device)
