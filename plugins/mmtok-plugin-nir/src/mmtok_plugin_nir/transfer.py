"""`SpectralFMTransfer`: calibration transfer with a pretrained SpectralFM, as a method of the
benchmark protocol (same ``fit(task)`` / ``predict(X)`` contract as the classical baselines).

1. **Features** of the frozen pretrained model: ``features="z_chem"`` (posterior mean of z_chem),
   ``"tokens"`` (the transformer's patch tokens, flattened) or both; each feature centred on its
   instrument's mean and divided by its spread over the source calibration spectra.
2. **Adapt to the target instrument** without labels: test-time training (K steps of masked
   reconstruction on the unlabelled target spectra, norm parameters only), then centre the target
   features on the target spectra's mean (as di-PLS centres on the target domain).
3. **Head** on the source calibration plus the N target standards: ``head="ridge" | "pls" |
   "mlp"`` (each tunes itself inside the data it is fitted on) or ``"auto"`` (chosen among
   ``auto_heads`` by `calibration_heads.select_head`: validation on the N standards when N >= 5,
   else CV over the calibration pool — never the test rows).
4. Optional LoRA stages (features "z_chem", head "ridge" only): ``calib_steps`` > 0 trains LoRA
   adapters on the transformer's q / k / v (rank 8, alpha 16) with the head on the calibration;
   ``transfer_steps`` > 0 trains them further on the standards with a pairing term. They made
   Corn results worse in the first round and are off by default (LoRA-CT proper is the
   ``lora-ct`` baseline in `deep_baselines`).
"""

import copy
import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mmtok import MmtokError
from mmtok_plugin_nir.baselines import TransferInputError, TransferTask
from mmtok_plugin_nir.calibration_heads import RidgeHead, make_head, select_head
from mmtok_plugin_nir.model.spectralfm import SpectralFM
from mmtok_plugin_nir.model.ttt import test_time_train
from mmtok_plugin_nir.preprocessing import prepare

__all__ = ["FEATURES", "SpectralFMTransfer", "load_pretrained"]

_PRETRAINED: dict[str, SpectralFM] = {}
_CALIBRATED: dict[str, dict[str, torch.Tensor]] = {}
_ADAPTED: dict[str, list[torch.Tensor]] = {}
_TOKENS: dict[str, torch.Tensor] = {}
_CENTERS: dict[str, torch.Tensor] = {}


def load_pretrained(checkpoint: str | Path) -> SpectralFM:
    """The pretrained model of a run directory (``model.safetensors`` + ``.json``), cached."""
    path = Path(checkpoint)
    path = path / "model.safetensors" if path.is_dir() else path
    key = str(path.resolve())
    if key not in _PRETRAINED:
        if not path.exists():
            raise MmtokError(f"checkpoint: expected SpectralFM weights at {path}, found no such file "
                             "(run `mmtok nir pretrain --out DIR`)")
        _PRETRAINED[key] = SpectralFM.load(path)
    return _PRETRAINED[key]


def _digest(*arrays: np.ndarray, extra: str = "") -> str:
    h = hashlib.sha1(extra.encode())
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


FEATURES = ("z_chem", "tokens", "z_chem+tokens")


class SpectralFMTransfer:
    """Pretrained SpectralFM features + a property head (+ test-time training, optional LoRA).

    features: "z_chem" (posterior mean of z_chem, (b, z_chem)), "tokens" (the transformer's patch
    tokens, flattened, (b, p * d)) or both concatenated. head: "ridge", "pls", "mlp" or "auto"
    (chosen among ``auto_heads`` by `calibration_heads.select_head`: nested validation inside the
    calibration / transfer samples). LoRA steps (calib_steps / transfer_steps) need features
    "z_chem" and head "ridge" (a torch linear head).
    """

    name = "spectralfm"
    min_pairs = 0

    def __init__(self, checkpoint: str | Path | SpectralFM, wavelength_nm: np.ndarray, features: str = "z_chem",
                 head: str = "ridge", auto_heads: tuple[str, ...] = ("ridge", "pls"), lora_rank: int = 8,
                 lora_alpha: float = 16.0, calib_steps: int = 0, transfer_steps: int = 0, lr: float = 1e-5,
                 pair_weight: float = 1.0, cal_batch: int = 16, ttt_steps: int = 10, ttt_lr: float = 1e-3,
                 seed: int = 0) -> None:
        if features not in FEATURES:
            raise TransferInputError(f"features: expected one of {list(FEATURES)}, found {features!r}")
        if head != "auto":
            make_head(head)            # validates the name
        for name in auto_heads if head == "auto" else ():
            make_head(name)
        if (calib_steps or transfer_steps) and (features, head) != ("z_chem", "ridge"):
            raise TransferInputError(f"calib_steps / transfer_steps: LoRA steps need features='z_chem' and "
                                     f"head='ridge', found features={features!r}, head={head!r}")
        self.checkpoint = checkpoint
        self.wavelength_nm = np.asarray(wavelength_nm, dtype=np.float64)
        self.options = dict(features=features, head=head, auto_heads=tuple(auto_heads), lora_rank=lora_rank,
                            lora_alpha=lora_alpha, calib_steps=calib_steps, transfer_steps=transfer_steps, lr=lr,
                            pair_weight=pair_weight, cal_batch=cal_batch, ttt_steps=ttt_steps, ttt_lr=ttt_lr,
                            seed=seed)
        self.model: SpectralFM | None = None
        self.head: nn.Linear | None = None
        self.property_head = None        # a calibration_heads head (numpy), when not the LoRA path
        self.validation: dict[str, float] = {}

    # ------------------------------------------------------------------ helpers
    def _pretrained(self) -> SpectralFM:
        return self.checkpoint if isinstance(self.checkpoint, SpectralFM) else load_pretrained(self.checkpoint)

    def _inputs(self, X: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, wl = prepare(X, self.wavelength_nm, self.model.config.n_points)
        return x, wl, torch.zeros(x.shape[0], dtype=torch.long)

    @torch.no_grad()
    def _tokens(self, X: np.ndarray) -> torch.Tensor:
        return self.model.backbone_tokens(*self._inputs(X))

    def _raw(self, out) -> torch.Tensor:
        """The chosen features (b, f) of a `SpectralFMOutput`."""
        kind = self.options["features"]
        parts = []
        if kind in ("z_chem", "z_chem+tokens"):
            parts.append(out.mu_chem)
        if kind in ("tokens", "z_chem+tokens"):
            parts.append(out.tokens[:, 2:].flatten(1))
        return torch.cat(parts, dim=1)

    def _z(self, tokens: torch.Tensor, center: torch.Tensor | None = None) -> torch.Tensor:
        """Standardised features (b, f) of backbone tokens: each feature centred on its instrument's
        mean (``center``; default the source calibration mean) and divided by its spread over the
        calibration spectra (the VIB's KL can shrink mu_chem to ~1e-3 scale)."""
        center = self.z_mean if center is None else center
        return (self._raw(self.model.head_from_backbone(tokens)) - center) / self.z_scale

    @torch.no_grad()
    def _refit_head(self, tok_cal, y_cal, tok_t, y_t) -> None:
        """Closed-form ridge head on the source calibration (source-centred) and the N target
        standards (target-centred) together."""
        self._fit_head(torch.cat([self._z(tok_cal), self._z(tok_t, self.z_center)]), torch.cat([y_cal, y_t]))

    @torch.no_grad()
    def _fit_head(self, z: torch.Tensor, y: torch.Tensor) -> None:
        """Set the linear head to the ridge regression of y (n,) on z (n, f), alpha by LOO CV."""
        ridge = RidgeHead().fit(z.double().numpy(), y.numpy())
        self.head.weight.copy_(torch.as_tensor(ridge.coef, dtype=torch.float32)[None])
        self.head.bias.fill_(ridge.intercept)

    @torch.no_grad()
    def _center(self, X: np.ndarray) -> torch.Tensor:
        """Mean raw features of spectra X (one instrument)."""
        return self._raw(self.model.head_from_backbone(self._tokens(X))).mean(0)

    @torch.no_grad()
    def _feature_stats(self, tok_cal: torch.Tensor) -> None:
        """Mean and spread of the pretrained features over the calibration spectra (`_z` uses them)."""
        z = self._raw(self.model.head_from_backbone(tok_cal))
        self.z_mean, self.z_scale = z.mean(0), z.std(0) + 1e-8

    def _trainable(self) -> list[nn.Parameter]:
        return [*self.model.lora_parameters(), *self.head.parameters()]

    def _train(self, steps: int, loss_fn) -> None:
        # features are divided by z_scale (~1e-3), so adapter updates are amplified ~1000x: small lr
        opt = torch.optim.Adam(self._trainable(), lr=self.options["lr"])
        for _ in range(steps):
            loss = loss_fn()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    # ------------------------------------------------------------------ protocol
    def fit(self, task: TransferTask) -> "SpectralFMTransfer":
        o = self.options
        torch.manual_seed(o["seed"])
        self.model = copy.deepcopy(self._pretrained()).eval()
        self.model.add_lora(o["lora_rank"], o["lora_alpha"])
        n_features = (self.model.config.z_chem if o["features"] == "z_chem" else 0)
        self.head = nn.Linear(max(n_features, 1), 1)
        self.y_mean, self.y_std = float(task.y_cal.mean()), float(task.y_cal.std() + 1e-12)
        y_cal = torch.as_tensor((task.y_cal - self.y_mean) / self.y_std, dtype=torch.float32)
        cal_key = _digest(task.X_cal, self.wavelength_nm, extra=str(id(self._pretrained())))
        if cal_key not in _TOKENS:     # frozen part of the pretrained model: the same in every repeat
            _TOKENS.clear()
            _TOKENS[cal_key] = self._tokens(task.X_cal)
        tok_cal = _TOKENS[cal_key]
        self._feature_stats(tok_cal)
        lora_path = (o["features"], o["head"]) == ("z_chem", "ridge")

        def cal_loss(rows=slice(None)):
            return nn.functional.mse_loss(self.head(self._z(tok_cal[rows]))[:, 0], y_cal[rows])

        calibration = {k: o[k] for k in ("lora_rank", "lora_alpha", "calib_steps", "lr", "seed", "features")}
        key = _digest(task.y_cal, extra=f"{cal_key}{sorted(calibration.items())}")
        if lora_path:
            if key in _CALIBRATED:
                self._load_state(_CALIBRATED[key])
            else:   # closed-form ridge head on the pretrained features, then the optional LoRA steps
                self._fit_head(self._z(tok_cal), y_cal)
                self._train(o["calib_steps"], cal_loss)
                _CALIBRATED[key] = self._state()
        with torch.no_grad():
            z_cal = self._z(tok_cal).double().numpy()      # source features, before target adaptation
        ttt_key = None
        if task.X_target_unlabeled.shape[0] and o["ttt_steps"]:
            ttt_key = _digest(task.X_target_unlabeled, extra=f"{key}{o['ttt_steps']}{o['ttt_lr']}")
            norms = self.model.norm_parameters()
            if ttt_key not in _ADAPTED:    # same unlabelled target spectra in every repeat: adapt once
                g = torch.Generator().manual_seed(o["seed"])
                test_time_train(self.model, *self._inputs(task.X_target_unlabeled), steps=o["ttt_steps"],
                                lr=o["ttt_lr"], generator=g)
                _ADAPTED[ttt_key] = [p.detach().clone() for p in norms]
            with torch.no_grad():
                for p, value in zip(norms, _ADAPTED[ttt_key]):
                    p.copy_(value)
        # target-instrument centring (unlabelled target spectra, like di-PLS's target centring)
        target = task.X_target_unlabeled if task.X_target_unlabeled.shape[0] else task.X_target_std
        center_key = _digest(target, extra=f"{ttt_key or key}{o['features']}")
        if center_key not in _CENTERS:
            _CENTERS[center_key] = self._center(target) if target.shape[0] else self.z_mean
        self.z_center = _CENTERS[center_key]
        y_std = torch.as_tensor((task.y_std - self.y_mean) / self.y_std, dtype=torch.float32)
        if not lora_path:   # a numpy head on the frozen features, chosen / tuned inside cal + standards
            with torch.no_grad():
                z_t = (self._z(self._tokens(task.X_target_std), self.z_center).double().numpy() if task.n_pairs
                       else np.empty((0, z_cal.shape[1])))
            if o["head"] == "auto":
                self.property_head, self.validation = select_head(o["auto_heads"], z_cal, y_cal.double().numpy(),
                                                                  z_t, y_std.double().numpy(), o["seed"])
            else:
                self.property_head = make_head(o["head"], o["seed"]).fit(
                    np.vstack([z_cal, z_t]), np.concatenate([y_cal.double().numpy(), y_std.double().numpy()]))
            return self
        if task.n_pairs > 0:
            tok_s, tok_t = self._tokens(task.X_source_std), self._tokens(task.X_target_std)
            g = torch.Generator().manual_seed(o["seed"])
            self._refit_head(tok_cal, y_cal, tok_t, y_std)

            def transfer_loss():
                z_t = self._z(tok_t, self.z_center)
                with torch.no_grad():
                    z_s = self._z(tok_s)
                rows = torch.randperm(len(y_cal), generator=g)[:o["cal_batch"]]   # keeps the calibration
                return (cal_loss(rows) + nn.functional.mse_loss(self.head(z_t)[:, 0], y_std)
                        + o["pair_weight"] * nn.functional.mse_loss(z_t, z_s))

            self._train(o["transfer_steps"], transfer_loss)
        return self

    @torch.no_grad()
    def predict(self, X_target: np.ndarray) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("SpectralFMTransfer.predict before fit")
        z = (self._raw(self.model(*self._inputs(X_target))) - self.z_center) / self.z_scale
        if self.property_head is not None:
            return self.property_head.predict(z.double().numpy()) * self.y_std + self.y_mean
        return self.head(z)[:, 0].double().numpy() * self.y_std + self.y_mean

    def _state(self) -> dict[str, torch.Tensor]:
        lora = {n: p.detach().clone() for n, p in self.model.named_parameters() if "lora" in n}
        return {**lora, **{f"head.{k}": v.detach().clone() for k, v in self.head.state_dict().items()}}

    def _load_state(self, state: dict[str, torch.Tensor]) -> None:
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in state.items():
                if name.startswith("head."):
                    continue
                params[name].copy_(value)
        self.head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})
