"""Fit the generic image and volume codecs on real data and report held-out reconstruction.

    python examples/families/fit_real.py [--steps 600]

- `ImageCodec` (image-patch) on chest X-rays (PneumoniaMNIST 28 x 28, 600 train / 200 held-out
  images from the other split), patches of 4 x 4 -> 49 FSQ tokens per image.
- `VolumeCodec` (volume-patch) on an abdominal CT (TotalSegmentator test volume, 3 mm, HU):
  the volume is cut into 8 x 16 x 16 voxel blocks; blocks from the lower 16 slices train, the
  blocks of slices 16-23 are held out; patches of 4 x 8 x 8 -> 8 FSQ tokens per block.
Data: tests/data/ (see tests/data/README.md for origin and licenses).
"""

import argparse
from pathlib import Path

import numpy as np
import torch

from mmtok.fit import FitReport, evaluate_codec, fit_codec
from mmtok.modalities import Image, Volume
from mmtok.plugins import get_plugin_manager

DATA = Path(__file__).resolve().parents[2] / "tests" / "data"


def xrays() -> tuple[Image, Image]:
    """(600, 1, 28, 28) train and (200, 1, 28, 28) held-out chest X-rays, intensities in [0, 1]."""
    with np.load(DATA / "pneumoniamnist_subset.npz", allow_pickle=False) as d:
        train, test = (torch.tensor(d[k], dtype=torch.float32).unsqueeze(1) / 255.0
                       for k in ("train_images", "test_images"))
    return Image(flux=train), Image(flux=test)


def ct_blocks(block: tuple[int, int, int] = (8, 16, 16)) -> tuple[Volume, Volume]:
    """Blocks (n, 1, 8, 16, 16) of the CT in HU, (z, y, x) order; slices 0-15 train, 16-23 test."""
    with np.load(DATA / "ct_sm_hu.npz", allow_pickle=False) as d:
        vol = torch.tensor(d["hu"], dtype=torch.float32).permute(2, 1, 0)  # (z, y, x) = (30, 101, 122)
    bz, by, bx = block
    nz, ny, nx = (s // b for s, b in zip(vol.shape, block, strict=True))
    vol = vol[:nz * bz, :ny * by, :nx * bx]
    blocks = vol.reshape(nz, bz, ny, by, nx, bx).permute(0, 2, 4, 1, 3, 5)  # (nz, ny, nx, bz, by, bx)
    train = blocks[:2].reshape(-1, 1, *block)
    test = blocks[2:].reshape(-1, 1, *block)
    return Volume(values=train), Volume(values=test)


def fit(name: str, config: dict, train, test, steps: int, progress: bool = True) -> tuple[FitReport, FitReport]:
    """(untrained, trained) held-out reports of registered codec ``name`` with ``config``."""
    torch.manual_seed(0)
    codec = get_plugin_manager().build_codec(name, config)
    codec.fit_statistics(train)
    before = evaluate_codec(codec, test)
    return before, fit_codec(codec, train, val=test, steps=steps, batch_size=64, progress=progress)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    args = parser.parse_args()
    runs = [
        ("image-patch", {"channels": 1, "size": [28, 28], "patch": [4, 4]}, *xrays(), "units: intensity 0-1"),
        ("volume-patch", {"channels": 1, "size": [8, 16, 16], "patch": [4, 8, 8]}, *ct_blocks(), "units: HU"),
    ]
    print(f"| codec | data | train / held-out | tokens | vocab | untrained nRMSE | held-out nRMSE "
          f"({args.steps} steps) | held-out RMSE | perplexity | codes used |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, cfg, train, test, units in runs:
        before, r = fit(name, cfg, train, test, args.steps)
        print(f"| {name} | {type(train).__name__} {tuple(train.tensor_fields())} | {len(train)} / {len(test)} "
              f"| {r.num_tokens} | {r.vocab_size} | {before.nrmse:.3f} | {r.nrmse:.3f} | {r.rmse:.4g} ({units}) "
              f"| {r.perplexity:.1f} | {r.codes_used} ({100 * r.usage:.1f}%) |")


if __name__ == "__main__":
    main()
