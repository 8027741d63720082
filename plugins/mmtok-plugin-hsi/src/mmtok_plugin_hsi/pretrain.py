"""Self-supervised pretraining of `GuidedSpectralGPT` on cubes (and auxiliaries when present),
and HSI-only embeddings of a trained model.

    model, history = pretrain(cubes, PretrainConfig(steps=600), model=GuidedSpectralGPTConfig(...),
                              aux={"elevation_map": (lidar, present)})
    features = embed_cubes(model, cubes)          # (n, dim), the cube alone

``cubes``: (n, bands, h, w) float32 already on the model's wavelength grid (`resample_bands`);
``aux``: name -> (pixels (n, c, h, w), present (n,) bool). Deterministic given the seed: the
mini-batches, the masks and the initialisation come from seeded generators. A run folder
(`save_run`) holds the model (config.json + model.safetensors), the pretraining config, the
per-channel normalisation and the loss history (JSON).
"""

import contextlib
import json
import math
import time
from collections.abc import Mapping
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from mmtok import MmtokError, atomic_write, read_json
from mmtok_plugin_hsi.model import AuxInput, GuidedSpectralGPT, GuidedSpectralGPTConfig

__all__ = ["PretrainConfig", "CubeNorm", "pretrain", "embed_cubes", "save_run", "load_run", "limited_threads",
           "write_experiment"]


class PretrainConfig(BaseModel):
    """Optimisation of one pretraining run (AdamW, linear warm-up then cosine decay)."""

    model_config = ConfigDict(extra="forbid")
    steps: int = Field(600, ge=1)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup: int = Field(30, ge=0)
    seed: int = 0
    log_every: int = Field(25, ge=1)


class CubeNorm:
    """Per-band standardisation fitted on training cubes: (x - mean) / std, mean / std (bands,)."""

    def __init__(self, mean: Tensor, std: Tensor):
        self.mean, self.std = mean.float(), std.float().clamp_min(1e-8)

    @classmethod
    def fit(cls, cubes: Tensor) -> "CubeNorm":
        x = cubes.transpose(0, 1).flatten(1).double()  # (bands, n*h*w)
        return cls(x.mean(1).float(), x.std(1).float())

    def __call__(self, cubes: Tensor) -> Tensor:
        return (cubes - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: Mapping) -> "CubeNorm":
        return cls(torch.tensor(d["mean"]), torch.tensor(d["std"]))


def _lr_factor(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _check_inputs(cubes: Tensor, aux: Mapping[str, tuple[Tensor, Tensor]] | None, model_cfg) -> None:
    if cubes.ndim != 4 or cubes.shape[1:] != (model_cfg.bands, model_cfg.size, model_cfg.size):
        raise MmtokError(f"pretrain: cubes must be (n, {model_cfg.bands}, {model_cfg.size}, {model_cfg.size}) for this "
                         f"model, found {tuple(cubes.shape)}")
    for name, (pixels, present) in (aux or {}).items():
        if len(pixels) != len(cubes) or len(present) != len(cubes):
            raise MmtokError(f"pretrain: auxiliary {name!r} has {len(pixels)} images / {len(present)} flags for "
                             f"{len(cubes)} cubes")


def pretrain(cubes: Tensor, cfg: PretrainConfig | None = None, *, model: GuidedSpectralGPTConfig | GuidedSpectralGPT,
             aux: Mapping[str, tuple[Tensor, Tensor]] | None = None, norm: CubeNorm | None = None,
             progress: bool = False) -> tuple[GuidedSpectralGPT, dict]:
    """Train ``model`` (a config builds a fresh one, seeded) as a masked autoencoder on ``cubes``
    (normalised by ``norm``, default: fitted on ``cubes``), guided by ``aux``. Returns the model
    in eval mode and the history {"step", "loss", "mae", "contrastive/<name>", "seconds",
    "patches_per_s", "norm"}."""
    cfg = cfg or PretrainConfig()
    torch.manual_seed(cfg.seed)
    net = model if isinstance(model, GuidedSpectralGPT) else GuidedSpectralGPT(model)
    _check_inputs(cubes, aux, net.config)
    aux = {k: v for k, v in (aux or {}).items() if k in net.config.auxiliaries}
    norm = norm or CubeNorm.fit(cubes)
    x_all = norm(cubes.float())
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, cfg))
    batches = torch.Generator().manual_seed(cfg.seed)
    masks = torch.Generator().manual_seed(cfg.seed + 1)
    history: dict = {"step": [], "loss": [], "mae": []}
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=cfg.steps, desc="pretrain", unit="step")
    net.train()
    start = time.perf_counter()
    n = len(x_all)
    for step in range(cfg.steps):
        idx = torch.randint(0, n, (min(cfg.batch_size, n),), generator=batches)
        batch_aux = {k: AuxInput(p[idx], present[idx].bool()) for k, (p, present) in aux.items()}
        out = net(x_all[idx], batch_aux or None, generator=masks)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            history["step"].append(step)
            loss, mae = float(out.loss.detach()), float(out.mae_loss.detach())
            history["loss"].append(loss)
            history["mae"].append(mae)
            for k, v in out.contrastive.items():
                history.setdefault(f"contrastive/{k}", []).append([step, float(v.detach())])
            if bar is not None:
                bar.set_postfix(loss=f"{loss:.4f}", mae=f"{mae:.4f}")
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - start
    history["seconds"] = seconds
    history["patches_per_s"] = cfg.steps * min(cfg.batch_size, n) * net.num_patches / seconds
    history["norm"] = norm.to_dict()
    net.eval()
    return net, history


@torch.no_grad()
def embed_cubes(model: GuidedSpectralGPT, cubes: Tensor, norm: CubeNorm | None = None,
                batch_size: int = 256) -> Tensor:
    """HSI-only embeddings (n, dim) of ``cubes`` (n, bands, h, w): no masking, no auxiliary."""
    model.eval()
    x = cubes.float() if norm is None else norm(cubes.float())
    return torch.cat([model.embed(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]) if len(x) else \
        torch.zeros(0, model.config.dim)


def save_run(directory: Path, model: GuidedSpectralGPT, cfg: PretrainConfig, history: dict,
             extra: Mapping | None = None) -> Path:
    """``directory``/model (weights + config), pretrain.json (config, history, normalisation, extra)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save(directory / "model")
    record = {"pretrain": cfg.model_dump(), "history": history, **(extra or {})}
    atomic_write(directory / "pretrain.json", lambda p: p.write_text(json.dumps(record, indent=1) + "\n"))
    return directory


def load_run(directory: Path) -> tuple[GuidedSpectralGPT, CubeNorm, dict]:
    """(model in eval mode, its normalisation, the pretrain.json record) of a `save_run` folder."""
    directory = Path(directory)
    if not (directory / "pretrain.json").is_file() or not (directory / "model").is_dir():
        raise MmtokError(f"{directory}: not an `mmtok hsi pretrain` run (needs pretrain.json and model/)")
    record = read_json(directory / "pretrain.json")
    model = GuidedSpectralGPT.load(directory / "model")
    return model, CubeNorm.from_dict(record["history"]["norm"]), record


@contextlib.contextmanager
def limited_threads(threads: int | None):
    """Run an experiment with ``threads`` torch and BLAS threads (None: unchanged), restored after:
    on a shared machine oversubscribed OpenBLAS makes the probes' solvers crawl."""
    if not threads:
        yield
        return
    from threadpoolctl import threadpool_limits

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(threads):
            yield
    finally:
        torch.set_num_threads(old)


def write_experiment(out: Path, stem: str, result: dict) -> dict:
    """Write an experiment's ``result`` as ``out/<stem>.json`` and its "markdown" as ``out/<stem>.md``
    (each atomically); returns ``result``."""
    from mmtok import write_json

    out = Path(out)
    write_json(out / f"{stem}.json", result)
    atomic_write(out / f"{stem}.md", lambda p: p.write_text(result["markdown"]))
    return result
