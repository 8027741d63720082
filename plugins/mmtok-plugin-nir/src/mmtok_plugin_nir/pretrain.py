"""Self-supervised SpectralFM pretraining on the shipped real spectra (all seven losses of the card).

Corpus (`mmtok_plugin_nir.corpus`): by default all of it, Corn + Tablet (minus their benchmark
test rows, so test spectra are never seen, not even unlabelled) + the nine spectra_more sources,
3,774 spectra, resampled to n_points and SNV-normalised. Each batch comes from one source (one
axis, one domain), the source drawn with probability proportional to size**sampling_alpha
(1.0 = proportional to size, the default; 0.5 = the tempered proportion that gives the small sets
more turns). Domain ids come from the part ([DOMAIN] token), instrument ids are global per
(source, instrument), and sources without a wavelength axis carry ``axis_known = False``. A batch
holds a clean copy, two augmented views (the four card augmentations), a noisy copy for the
denoising loss, and a contiguous block mask of 3-5 patches.

VIB-collapse switches, each independent: ``vib_weight`` (the KL's weight in the total, the
card's 0.05), ``kl_warmup`` (steps of a linear ramp 0 -> vib_weight, 0 = none) and ``free_bits``
(nats per latent dimension below which the KL gives no gradient, 0 = none; `VIBHead`).
Every log row also records ``mu_chem_std``: the spread across samples of the eval-mode mu_chem
of a fixed probe set (16 Corn m5 pool spectra), the collapse the first round measured (3e-4).

The run directory holds ``model.safetensors`` + ``config.json`` (the final model),
``model_step{N}.safetensors`` for each N in ``snapshot_steps``, ``checkpoint/`` (model + AdamW
state + step, written atomically every ``checkpoint_every`` steps) and ``metrics.jsonl``; running
again with the same directory resumes from the checkpoint, and gives the weights of an
uninterrupted run (each step's batch and global RNG are functions of (seed, step)).
"""

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from mmtok import atomic_write, read_checkpoint, write_checkpoint
from mmtok_plugin_nir.corpus import CORPUS, CorpusError, CorpusPart, check_batch, check_corpus, pretraining_corpus
from mmtok_plugin_nir.model.losses import LOSS_WEIGHTS
from mmtok_plugin_nir.model.spectralfm import SpectralFM, SpectralFMConfig
from mmtok_plugin_nir.model.ttt import block_mask
from mmtok_plugin_nir.preprocessing import add_noise, augment

__all__ = ["PretrainConfig", "CorpusPart", "pretraining_corpus", "pretrain", "vib_weight_at", "source_weights"]


@dataclass
class PretrainConfig:
    steps: int = 500
    batch_size: int = 16
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup: int = 100
    mask_ratio: float = 0.3
    datasets: tuple[str, ...] = CORPUS
    sampling_alpha: float = 1.0
    vib_weight: float = LOSS_WEIGHTS["vib"]
    kl_warmup: int = 0
    free_bits: float = 0.0
    snapshot_steps: tuple[int, ...] = ()
    seed: int = 0
    checkpoint_every: int = 250
    log_every: int = 25
    model: dict = field(default_factory=dict)

    def check(self) -> None:
        """Raise ValueError naming the field unless every setting is usable."""
        for name in ("steps", "batch_size", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"PretrainConfig.{name}: expected >= 1, found {getattr(self, name)}")
        for name in ("vib_weight", "kl_warmup", "free_bits", "sampling_alpha", "warmup"):
            if getattr(self, name) < 0:
                raise ValueError(f"PretrainConfig.{name}: expected >= 0, found {getattr(self, name)}")
        bad = [s for s in self.snapshot_steps if not 1 <= s <= self.steps]
        if bad:
            raise ValueError(f"PretrainConfig.snapshot_steps: expected steps in 1..{self.steps}, found {bad}")
        if not self.datasets:
            raise CorpusError(f"PretrainConfig.datasets: empty; choose from {list(CORPUS)}")


def vib_weight_at(cfg: PretrainConfig, step: int) -> float:
    """The KL weight of step ``step`` (0-based): vib_weight * min(1, step / kl_warmup)."""
    if cfg.kl_warmup <= 0:
        return cfg.vib_weight
    return cfg.vib_weight * min(1.0, step / cfg.kl_warmup)


def source_weights(parts: list[CorpusPart], alpha: float = 1.0) -> torch.Tensor:
    """Sampling weights (parts,) of the sources: size**alpha (normalised)."""
    sizes = torch.tensor([p.spectra.shape[0] for p in parts], dtype=torch.float64)
    w = sizes ** alpha
    return (w / w.sum()).float()


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
            "wavelength_nm": part.wavelength_nm,
            "axis_known": torch.full((cfg.batch_size,), part.axis_known, dtype=torch.bool),
            "domain": torch.full((cfg.batch_size,), part.domain_id, dtype=torch.long),
            "instrument": part.instrument[idx]}


def _total(losses: dict, vib_weight: float) -> torch.Tensor:
    weights = {**LOSS_WEIGHTS, "vib": vib_weight}
    return torch.stack([weights[k] * losses[k].reshape(()) for k in weights]).sum()


def _probe(parts: list[CorpusPart], n: int = 16) -> CorpusPart:
    """A fixed probe set for the collapse monitor: the first n spectra of the first part with an axis."""
    part = next((p for p in parts if p.axis_known), parts[0])
    return CorpusPart(part.name, part.spectra[:n], part.wavelength_nm, part.instrument[:n], part.domain, part.axis_known)


@torch.no_grad()
def _mu_chem_std(model: SpectralFM, probe: CorpusPart) -> float:
    """Mean over dimensions of the across-sample std of the eval-mode mu_chem of the probe set."""
    model.eval()
    b = probe.spectra.shape[0]
    mu = model.features(probe.spectra, probe.wavelength_nm, torch.full((b,), probe.domain_id, dtype=torch.long),
                        axis_known=torch.full((b,), probe.axis_known, dtype=torch.bool))
    model.train()
    return float(mu.std(0).mean())


def _progress_bar(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, desc="pretrain", unit="step", dynamic_ncols=True)


def pretrain(run: str | Path, cfg: PretrainConfig | None = None, progress: bool = True,
             parts: list[CorpusPart] | None = None) -> dict:
    """Pretrain (or resume) a SpectralFM in ``run``; returns a summary with spectra/s.

    parts: a corpus to use instead of ``cfg.datasets`` (`corpus.pretraining_corpus` form; each
    part needs a domain label). spectra_per_s counts the clean spectra of the batches (each step
    runs 4 copies of each: clean, 2 views, noisy).
    """
    cfg = cfg or PretrainConfig()
    cfg.check()
    run = Path(run)
    torch.manual_seed(cfg.seed)
    mcfg = SpectralFMConfig.from_dict(cfg.model) if cfg.model else SpectralFMConfig()
    t_corpus = time.perf_counter()
    parts = pretraining_corpus(cfg.datasets, mcfg.n_points) if parts is None else parts
    check_corpus(parts)
    corpus_seconds = time.perf_counter() - t_corpus
    run.mkdir(parents=True, exist_ok=True)
    n_instruments = int(max(int(p.instrument.max()) for p in parts)) + 1
    if mcfg.n_instruments < n_instruments:    # one instrument id per (source, instrument) of the corpus
        mcfg.n_instruments = n_instruments
    model = SpectralFM(mcfg)
    model.vib.free_bits = cfg.free_bits
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step = 0
    if (run / "checkpoint" / "state.json").exists():
        step = read_checkpoint(run / "checkpoint", model, opt)["step"]
    meta = {**asdict(cfg), "model": mcfg.to_dict(),
            "corpus": {p.name: {"n": int(p.spectra.shape[0]), "domain": p.domain, "axis_known": p.axis_known}
                       for p in parts}}
    atomic_write(run / "pretrain.json", lambda p: p.write_text(json.dumps(meta, indent=2) + "\n"))
    weights = source_weights(parts, cfg.sampling_alpha)
    n_patches = mcfg.n_points // mcfg.patch_size
    probe = _probe(parts)
    snapshots = set(cfg.snapshot_steps)
    bar = _progress_bar(progress, cfg.steps, step)
    model.train()
    seen, t0, history = 0, time.perf_counter(), []
    with open(run / "metrics.jsonl", "a") as log:
        while step < cfg.steps:
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)   # resumable: batch = f(step)
            torch.manual_seed(cfg.seed * 1_000_003 + step)                   # and any global-RNG draw too
            part = parts[int(torch.multinomial(weights, 1, generator=g))]
            batch = _batch(part, cfg, n_patches, g)
            check_batch(batch, f"pretraining batch of step {step} (source {part.name!r})")
            for group in opt.param_groups:
                group["lr"] = _lr(cfg, step)
            losses = model.pretrain_losses(batch)
            kl_weight = vib_weight_at(cfg, step)
            losses["total"] = _total(losses, kl_weight)
            opt.zero_grad(set_to_none=True)
            losses["total"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            seen += cfg.batch_size
            if bar is not None:
                bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                row = {"step": step, "source": part.name,
                       **{k: round(float(v.detach()), 5) for k, v in losses.items()},
                       "vib_weight": round(kl_weight, 6), "mu_chem_std": round(_mu_chem_std(model, probe), 6),
                       "spectra_per_s": round(seen / (time.perf_counter() - t0), 1)}
                history.append(row)
                log.write(json.dumps(row) + "\n")
                log.flush()
                if bar is not None:
                    bar.set_postfix(total=row["total"], msrp=row["msrp"], mu_std=row["mu_chem_std"])
                elif progress:
                    print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
            if step in snapshots:
                model.save(run / f"model_step{step}.safetensors")
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                write_checkpoint(run / "checkpoint", model.state_dict(), opt, {"step": step})
    if bar is not None:
        bar.close()
    model.eval()
    model.save(run / "model.safetensors")
    seconds = time.perf_counter() - t0
    return {"steps": step, "seconds": seconds, "spectra_per_s": seen / seconds if seen else 0.0,
            "corpus_seconds": corpus_seconds, "corpus_spectra": int(sum(p.spectra.shape[0] for p in parts)),
            "last": history[-1] if history else None, "params": sum(p.numel() for p in model.parameters())}
