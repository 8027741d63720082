"""Fit the disentangled VAE shipped inside mmtok-plugin-medimg (`medimg/disentangled-vae-fsq`,
used by `mmtok medimg classify` without --run and by the `tok_medimg_latent` stream).

    python examples/medimg/fit_pretrained.py [--steps 800] [--seed 0]

Trains `DisentangledConditionalVAE` (default config, all imaging-modality labels so its indices
are the plugin's; OCT has no data and gets no centroid) on the TRAINING sources of
`build_dataset()` only, so held-out files stay unseen; fits the z_modality centroids; wraps it as a
`medimg-vae-fsq` codec and writes config.json + model.safetensors (+ training.json with the
settings and the held-out nearest-centroid accuracy) into the package's pretrained/ folder.
Deterministic for a given seed and thread count on CPU.
"""

import argparse
import json
import time
from pathlib import Path

import torch

from mmtok_plugin_medimg.codecs import ModalityVAECodec
from mmtok_plugin_medimg.datasets import build_dataset
from mmtok_plugin_medimg.experiments import model_labels, train_variant
from mmtok_plugin_medimg.modalities import IMAGING_MODALITIES
from mmtok_plugin_medimg.plugin import PRETRAINED


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=PRETRAINED / "disentangled-vae-fsq")
    p.add_argument("--run", type=Path, default=Path("runs/medimg/pretrained_vae"))
    args = p.parse_args()
    t0 = time.perf_counter()
    data = build_dataset(size=64, channels=3)
    vae, history = train_variant(data, "disentangled", seed=args.seed, steps=args.steps, batch_size=64,
                                 threads=args.threads, progress=True, modalities=list(IMAGING_MODALITIES))
    vae.save(args.run)  # the bare VAE too: a `--run` folder of `mmtok medimg`
    test = data.subset("test")
    with torch.no_grad():
        pred, _ = vae.classify(test.pixels)
    accuracy = float((pred == model_labels(vae, test.labels)).float().mean())
    codec = ModalityVAECodec.from_vae(vae, {"kind": "fsq", "levels": [8, 8, 8, 8]}, name="medimg-vae-fsq")
    codec.save_pretrained(args.out)
    info = {"script": "examples/medimg/fit_pretrained.py", "steps": args.steps, "seed": args.seed, "batch_size": 64,
            "threads": args.threads, "train_images": len(data.subset("train")), "parameters": vae.num_parameters(),
            "held_out_images": len(test), "held_out_nearest_centroid_accuracy": accuracy,
            "final_loss": history[-1]["loss"], "seconds": round(time.perf_counter() - t0, 1)}
    (args.out / "training.json").write_text(json.dumps(info, indent=1) + "\n")
    print(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
