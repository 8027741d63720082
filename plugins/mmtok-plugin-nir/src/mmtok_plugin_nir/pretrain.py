"""Self-supervised SpectralFM pretraining on the shipped real spectra (all seven losses of the card).

Corpus: every instrument of Corn and Tablet, resampled to 2048 points and SNV-normalised, minus
the held-out test rows of each data set's transfer split (so benchmark test spectra are never
seen, not even unlabelled). Each batch comes from one data set (one wavelength axis), drawn in
proportion to its size; it holds a clean copy, two augmented views (the four card
augmentations), a noisy copy for the denoising loss, and a contiguous block mask of 3-5 patches.

The run directory holds ``model.safetensors`` + ``config.json`` (the final model),
``checkpoint/`` (model + AdamW state + step, written atomically) and ``metrics.jsonl``; running
again with the same directory resumes from the checkpoint.
"""

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from mmtok import read_checkpoint, write_checkpoint
from mmtok_plugin_nir.datasets import load_dataset
from mmtok_plugin_nir.model.spectralfm import SpectralFM, SpectralFMConfig
from mmtok_plugin_nir.model.ttt import block_mask
from mmtok_plugin_nir.preprocessing import add_noise, augment, prepare
from mmtok_plugin_nir.protocol import calibration_split

__all__ = ["PretrainConfig", "CorpusPart", "pretraining_corpus", "pretrain"]


@dataclass
class PretrainConfig:
    steps: int = 500
    batch_size: int = 16
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup: int = 100
    mask_ratio: float = 0.3
    datasets: tuple[str, ...] = ("corn", "tablet")
    seed: int = 0
    checkpoint_every: int = 250
    model: dict = field(default_factory=dict)


@dataclass
class CorpusPart:
    """The spectra of one data set on the common grid. spectra: (n, L); wavelength_nm: (L,);
    instrument: (n,) global instrument ids."""

    name: str
    spectra: torch.Tensor
    wavelength_nm: torch.Tensor
    instrument: torch.Tensor


def pretraining_corpus(datasets=("corn", "tablet"), n_points: int = 2048,
                       exclude_test: bool = True) -> list[CorpusPart]:
    """The unlabelled pretraining spectra, one part per data set (test rows left out)."""
    parts, next_id = [], 0
    for name in datasets:
        data = load_dataset(name)
        rows = calibration_split(data)[0] if exclude_test else np.arange(data.n_samples)
        if data.split is not None and exclude_test:   # Tablet: the Validate rows are not test rows either
            rows = np.flatnonzero(data.split != "Test")
        xs, ids = [], []
        for inst in data.instruments:
            x, wl = prepare(data.instrument(inst)[rows], data.wavelength_nm, n_points)
            xs.append(x)
            ids.append(torch.full((len(rows),), next_id, dtype=torch.long))
            next_id += 1
        parts.append(CorpusPart(name, torch.cat(xs), wl, torch.cat(ids)))
    return parts


def _lr(cfg: PretrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _batch(part: CorpusPart, cfg: PretrainConfig, n_patches: int, g: torch.Generator) -> dict:
    idx = torch.randint(0, part.spectra.shape[0], (cfg.batch_size,), generator=g)
    clean = part.spectra[idx]
    return {"clean": clean, "view1": augment(clean, generator=g), "view2": augment(clean, generator=g),
            "noisy": add_noise(clean, sigma=0.1, generator=g),
            "mask": block_mask(cfg.batch_size, n_patches, cfg.mask_ratio, generator=g),
            "wavelength_nm": part.wavelength_nm, "domain": torch.zeros(cfg.batch_size, dtype=torch.long),
            "instrument": part.instrument[idx]}


def pretrain(run: str | Path, cfg: PretrainConfig | None = None, progress: bool = True) -> dict:
    """Pretrain (or resume) a SpectralFM in ``run``; returns a summary with spectra/s."""
    cfg = cfg or PretrainConfig()
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    mcfg = SpectralFMConfig.from_dict(cfg.model) if cfg.model else SpectralFMConfig()
    model = SpectralFM(mcfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step = 0
    if (run / "checkpoint" / "state.json").exists():
        step = read_checkpoint(run / "checkpoint", model, opt)["step"]
    (run / "pretrain.json").write_text(json.dumps({**asdict(cfg), "model": mcfg.to_dict()}, indent=2))
    parts = pretraining_corpus(cfg.datasets, mcfg.n_points)
    weights = torch.tensor([p.spectra.shape[0] for p in parts], dtype=torch.float)
    n_patches = mcfg.n_points // mcfg.patch_size
    model.train()
    seen, t0, history = 0, time.perf_counter(), []
    with open(run / "metrics.jsonl", "a") as log:
        while step < cfg.steps:
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)   # resumable: batch = f(step)
            part = parts[int(torch.multinomial(weights, 1, generator=g))]
            batch = _batch(part, cfg, n_patches, g)
            for group in opt.param_groups:
                group["lr"] = _lr(cfg, step)
            losses = model.pretrain_losses(batch)
            opt.zero_grad(set_to_none=True)
            losses["total"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            seen += cfg.batch_size
            if step % 25 == 0 or step == cfg.steps:
                row = {"step": step, **{k: round(float(v.detach()), 5) for k, v in losses.items()},
                       "spectra_per_s": round(seen / (time.perf_counter() - t0), 1)}
                history.append(row)
                log.write(json.dumps(row) + "\n")
                log.flush()
                if progress:
                    print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                write_checkpoint(run / "checkpoint", model.state_dict(), opt, {"step": step})
    model.eval()
    model.save(run / "model.safetensors")
    seconds = time.perf_counter() - t0
    return {"steps": step, "seconds": seconds, "spectra_per_s": seen / seconds if seen else 0.0,
            "last": history[-1] if history else None, "params": sum(p.numel() for p in model.parameters())}
