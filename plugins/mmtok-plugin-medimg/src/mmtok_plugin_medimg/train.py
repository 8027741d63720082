"""`train_vae`: train a `ConditionalVAE` / `DisentangledConditionalVAE` on (pixels, labels).

    history = train_vae(model, pixels (n, c, s, s) in [0, 1], labels (n,) int64, steps=2000)

* batches are class-balanced: a modality is drawn uniformly among those present, then an image
  of it uniformly (with replacement), so a modality with one source image is seen as often as one
  with thousands;
* AdamW (weight decay 1e-4), learning rate warmed up linearly over the first 5% of steps, then
  cosine-decayed to 10% of ``lr``;
* KL warm-up: the KL part of the loss is scaled by min(1, step / (20% of steps));
* the gradient is that of loss / D (D = c * h * w pixel values: the same optimum, a scale at which
  the clipping norm 1.0 means something), clipped to norm 1.0;
* deterministic given ``seed`` (batch draws from a seeded generator, the reparameterisation noise
  from torch's global RNG seeded inside `torch.random.fork_rng`, so the caller's RNG is untouched);
* ``threads``: torch.set_num_threads inside the call, restored after;
* history: one dict per ~10 steps (and the last): step, loss and every term (means over the
  steps since the previous entry), kl_scale, lr, grad_norm, images_per_s.

At the end the model's modality centroids are fitted on the training data (`fit_centroids`)
and the model is left in eval mode.
"""

import contextlib
import math
import time
from collections import defaultdict

import torch
from tqdm.auto import tqdm

from mmtok import MmtokError
from mmtok_plugin_medimg.model.base import MedImageVAE

__all__ = ["balanced_batches", "train_vae"]

LOG_EVERY = 10
KL_WARMUP = 0.2
LR_WARMUP = 0.05
GRAD_CLIP = 1.0


@contextlib.contextmanager
def _torch_threads(threads: int | None):
    """torch.set_num_threads(threads) inside, the previous value restored after (None: unchanged)."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def balanced_batches(labels: torch.Tensor, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """(batch_size,) indices into ``labels``: each draw picks a present label uniformly, then one of
    its images uniformly (sampling with replacement, weight 1 / count of its label)."""
    labels = labels.cpu()
    counts = torch.bincount(labels)
    weights = 1.0 / counts[labels].double()
    return torch.multinomial(weights, batch_size, replacement=True, generator=generator)


def _learning_rate(step: int, steps: int, lr: float) -> float:
    warm = max(1, round(LR_WARMUP * steps))
    if step < warm:
        return lr * (step + 1) / warm
    progress = (step - warm) / max(1, steps - warm)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_vae(model: MedImageVAE, pixels: torch.Tensor, labels: torch.Tensor, steps: int, batch_size: int = 64,
              lr: float = 2e-3, seed: int = 0, progress: bool = False, threads: int | None = None) -> list[dict]:
    """Train ``model`` in place for ``steps`` steps; returns the history (see the module docstring)."""
    model.check_images(pixels, "pixels")
    model.check_labels(labels, len(pixels))
    if steps < 1 or batch_size < 1:
        raise MmtokError(f"train_vae: steps and batch_size must be >= 1, found steps={steps}, batch_size={batch_size}")
    if len(pixels) == 0:
        raise MmtokError("train_vae: no training images")
    device = next(model.parameters()).device
    scale = 1.0 / model.config.pixel_values
    kl_warm = max(1, round(KL_WARMUP * steps))
    history: list[dict] = []
    with _torch_threads(threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        model.dataset_size = len(pixels)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
        sums: dict[str, float] = defaultdict(float)
        seen, since, tick = 0, 0, time.perf_counter()
        bar = tqdm(range(steps), desc=f"train {type(model).__name__}", disable=not progress, leave=False)
        for step in bar:
            idx = balanced_batches(labels, batch_size, generator)
            x, y = pixels[idx].to(device), labels[idx].to(device)
            current_lr = _learning_rate(step, steps, lr)
            for group in optimizer.param_groups:
                group["lr"] = current_lr
            kl_scale = min(1.0, (step + 1) / kl_warm)
            out = model(x, y, kl_scale=kl_scale)
            optimizer.zero_grad(set_to_none=True)
            (out.loss * scale).backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
            optimizer.step()

            sums["loss"] += float(out.loss.detach())
            for name, value in out.terms.items():
                sums[name] += float(value.detach())
            sums["grad_norm"] += float(grad_norm)
            since, seen = since + 1, seen + len(x)
            if (step + 1) % LOG_EVERY == 0 or step + 1 == steps:
                elapsed = time.perf_counter() - tick
                entry = {"step": step + 1, **{k: v / since for k, v in sums.items()}, "kl_scale": kl_scale,
                         "lr": current_lr, "images_per_s": seen / max(elapsed, 1e-9)}
                history.append(entry)
                bar.set_postfix(loss=f"{entry['loss']:.1f}", recon=f"{entry['recon']:.1f}")
                sums.clear()
                seen, since, tick = 0, 0, time.perf_counter()
        bar.close()
        model.fit_centroids(pixels, labels)
        model.eval()
    return history
