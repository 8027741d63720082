"""`SpectralFMTransfer`: calibration transfer with a pretrained SpectralFM, as a method of the
benchmark protocol (same ``fit(task)`` / ``predict(X)`` contract as the classical baselines).

1. **Calibrate** on the source instrument: LoRA adapters on the transformer's q / k / v (rank 8,
   alpha 16; the card) plus a linear head on the posterior mean of z_chem are trained on the
   source calibration spectra (standardised y, full batch, Adam). Everything before the
   transformer (embedding, Mamba, MoE) is frozen, so its tokens are computed once and cached.
   The calibrated state only depends on the calibration set, so it is reused across repeats.
2. **Transfer with N > 0 pairs**: continue training adapters + head on the N target-instrument
   standards (their reference values) and a random minibatch of calibration spectra per step (so
   the source calibration is kept), with a pairing term pulling z_chem of each target standard
   onto z_chem of the same sample on the source instrument.
3. **N = 0**: test-time training (K steps of masked reconstruction on the unlabelled target
   spectra, norm parameters only), then predict.
"""

import copy
import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mmtok_plugin_nir.baselines import TransferTask
from mmtok_plugin_nir.model.spectralfm import SpectralFM
from mmtok_plugin_nir.model.ttt import test_time_train
from mmtok_plugin_nir.preprocess import prepare

__all__ = ["SpectralFMTransfer", "load_pretrained"]

_PRETRAINED: dict[str, SpectralFM] = {}
_CALIBRATED: dict[str, dict[str, torch.Tensor]] = {}


def load_pretrained(checkpoint: str | Path) -> SpectralFM:
    """The pretrained model of a run directory (``model.safetensors`` + ``.json``), cached."""
    path = Path(checkpoint)
    path = path / "model.safetensors" if path.is_dir() else path
    key = str(path.resolve())
    if key not in _PRETRAINED:
        if not path.exists():
            raise FileNotFoundError(f"no SpectralFM weights at {path} (run `mmtok-nir pretrain --out DIR`)")
        _PRETRAINED[key] = SpectralFM.load(path)
    return _PRETRAINED[key]


def _digest(*arrays: np.ndarray, extra: str = "") -> str:
    h = hashlib.sha1(extra.encode())
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


class SpectralFMTransfer:
    """Pretrained SpectralFM + LoRA calibration / transfer (+ test-time training at N = 0)."""

    name = "spectralfm"
    min_pairs = 0

    def __init__(self, checkpoint: str | Path | SpectralFM, wavelength_nm: np.ndarray, lora_rank: int = 8,
                 lora_alpha: float = 16.0, calib_steps: int = 100, transfer_steps: int = 30, lr: float = 3e-3,
                 pair_weight: float = 1.0, cal_batch: int = 16, ttt_steps: int = 10, ttt_lr: float = 1e-3,
                 seed: int = 0) -> None:
        self.checkpoint = checkpoint
        self.wavelength_nm = np.asarray(wavelength_nm, dtype=np.float64)
        self.options = dict(lora_rank=lora_rank, lora_alpha=lora_alpha, calib_steps=calib_steps,
                            transfer_steps=transfer_steps, lr=lr, pair_weight=pair_weight, cal_batch=cal_batch, ttt_steps=ttt_steps,
                            ttt_lr=ttt_lr, seed=seed)
        self.model: SpectralFM | None = None
        self.head: nn.Linear | None = None

    # ------------------------------------------------------------------ helpers
    def _pretrained(self) -> SpectralFM:
        return self.checkpoint if isinstance(self.checkpoint, SpectralFM) else load_pretrained(self.checkpoint)

    def _inputs(self, X: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, wl = prepare(X, self.wavelength_nm, self.model.config.n_points)
        return x, wl, torch.zeros(x.shape[0], dtype=torch.long)

    @torch.no_grad()
    def _tokens(self, X: np.ndarray) -> torch.Tensor:
        return self.model.backbone_tokens(*self._inputs(X))

    def _z(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.head_from_backbone(tokens).mu_chem

    def _trainable(self) -> list[nn.Parameter]:
        return [*self.model.lora_parameters(), *self.head.parameters()]

    def _train(self, steps: int, loss_fn) -> None:
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
        self.head = nn.Linear(self.model.config.z_chem, 1)
        self.y_mean, self.y_std = float(task.y_cal.mean()), float(task.y_cal.std() + 1e-12)
        y_cal = torch.as_tensor((task.y_cal - self.y_mean) / self.y_std, dtype=torch.float32)
        tok_cal = self._tokens(task.X_cal)

        def cal_loss(rows=slice(None)):
            return nn.functional.mse_loss(self.head(self._z(tok_cal[rows]))[:, 0], y_cal[rows])

        calibration = {k: o[k] for k in ("lora_rank", "lora_alpha", "calib_steps", "lr", "seed")}
        key = _digest(task.X_cal, task.y_cal, self.wavelength_nm,
                      extra=f"{id(self._pretrained())}{sorted(calibration.items())}")
        if key in _CALIBRATED:
            self._load_state(_CALIBRATED[key])
        else:
            self._train(o["calib_steps"], cal_loss)
            _CALIBRATED[key] = self._state()
        if task.n_pairs > 0:
            tok_s, tok_t = self._tokens(task.X_source_std), self._tokens(task.X_target_std)
            y_std = torch.as_tensor((task.y_std - self.y_mean) / self.y_std, dtype=torch.float32)
            g = torch.Generator().manual_seed(o["seed"])

            def transfer_loss():
                z_t = self._z(tok_t)
                with torch.no_grad():
                    z_s = self._z(tok_s)
                rows = torch.randperm(len(y_cal), generator=g)[:o["cal_batch"]]   # keeps the calibration
                return (cal_loss(rows) + nn.functional.mse_loss(self.head(z_t)[:, 0], y_std)
                        + o["pair_weight"] * nn.functional.mse_loss(z_t, z_s))

            self._train(o["transfer_steps"], transfer_loss)
        elif task.X_target_unlabeled.shape[0] and o["ttt_steps"]:
            g = torch.Generator().manual_seed(o["seed"])
            test_time_train(self.model, *self._inputs(task.X_target_unlabeled), steps=o["ttt_steps"],
                            lr=o["ttt_lr"], generator=g)
        return self

    @torch.no_grad()
    def predict(self, X_target: np.ndarray) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("SpectralFMTransfer.predict before fit")
        z = self.model(*self._inputs(X_target)).mu_chem
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
