"""The ``medimg-modalities`` bundle on mmtok's shared transformer, on the plugin's real data set:
the shared-transformer analogue of the disentangled VAE's modality separation, so the two can be
compared on the same held-out sources.

    python examples/medimg/bundle.py [--out runs/medimg/bundle] [--codec-steps 300] [--steps 300] [--seed 0]

Every image of `build_dataset()` (64 x 64 x 3) is written as a file (uint8 RGB ``.npz`` with its
imaging modality) and goes manifest -> `encode_manifest` -> `Trainer`, as user data would. Streams:
``tok_medical_image`` (patch FSQ, fitted here on the training images only) and ``tok_medimg_latent``
(the shipped VAE, trained on the same training sources). The shared transformer (d_model 64,
4 + 2 blocks) trains on the training images' tokens; the imaging modality is never a token. Every
image is then embedded (mean-pooled encoder features) with both streams and with the patch stream
alone, and scored on the held-out sources like the VAE's latent: silhouette by modality and k-NN
(k = 5, fit on training embeddings). Writes OUT/bundle.json and OUT/bundle.md.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import yaml

import mmtok
from mmtok.encode import encode_manifest
from mmtok.shards import TokenShards
from mmtok.train import TrainConfig, Trainer
from mmtok_plugin_medimg.datasets import build_dataset
from mmtok_plugin_medimg.evaluate import latent_metrics
from mmtok_plugin_medimg.modalities import IMAGING_MODALITIES, MedicalImage2D

PATCH, LATENT = "tok_medical_image", "tok_medimg_latent"


def write_split(out: Path, data, split: str) -> Path:
    """One uint8 RGB .npz per image of ``split`` under OUT/data and its manifest."""
    folder = out / "data"
    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for i, (sp, label) in enumerate(zip(data.split, data.labels.tolist())):
        if sp != split:
            continue
        sid = f"img{i:04d}"
        pixels = (data.pixels[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        np.savez(folder / f"{sid}.npz", pixels=pixels, photometric=np.array("RGB"), bits_stored=np.array(8),
                 imaging_modality=np.array(IMAGING_MODALITIES[label]))
        samples.append({"id": sid, "modalities": {"medical_image": f"data/{sid}.npz"},
                        "metadata": {"label": int(label), "source": data.source[i]}})
    path = out / f"{split}.json"
    path.write_text(json.dumps({"version": 1, "samples": samples}))
    return path


def embed(trainer: Trainer, tokens: Path, drop: list[str]) -> tuple[list[str], np.ndarray]:
    shards = TokenShards(tokens)
    batch = shards.batch(range(len(shards)))
    with torch.no_grad():
        pooled = trainer.model.eval().embed(batch.without(drop) if drop else batch).pooled
    return shards.sample_ids, pooled.numpy()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/medimg/bundle"))
    p.add_argument("--codec-steps", type=int, default=300)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    t0 = time.perf_counter()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    data = build_dataset(size=64, channels=3)
    manifests = {split: write_split(out, data, split) for split in ("train", "test")}

    manager = mmtok.get_plugin_manager()
    codec = manager.build_codec("medical-image-fsq")
    train = data.subset("train")
    report = mmtok.fit_codec(codec, MedicalImage2D(pixels=train.pixels, imaging_modality=train.labels),
                             steps=args.codec_steps, batch_size=64, seed=args.seed, progress=False)
    codec.save_pretrained(out / "codecs" / PATCH)
    registry = out / "registry.yaml"
    registry.write_text(yaml.safe_dump({"version": 1, "streams": {
        PATCH: {"modality": "medical_image", "codec": "medical-image-fsq", "vocab_size": 1000, "num_tokens": 64,
                "checkpoint": f"codecs/{PATCH}"},
        LATENT: {"modality": "medical_image", "codec": "medimg-vae-fsq", "vocab_size": 4096, "num_tokens": 4,
                 "checkpoint": "medimg/disentangled-vae-fsq"}},
        "bundles": {"medimg-modalities": {"streams": [PATCH, LATENT], "heads": []}}}, sort_keys=False))
    tokens = {}
    for split, manifest in manifests.items():
        tokens[split] = out / f"tokens_{split}"
        encode_manifest(manifest, tokens[split], registry_path=registry, overwrite=True, progress=False)

    config = TrainConfig.model_validate({
        "bundle": "medimg-modalities", "seed": args.seed, "batch_size": 64, "max_steps": args.steps,
        "val_fraction": 0.0, "log_every": max(1, args.steps // 6), "eval_every": args.steps,
        "checkpoint_every": args.steps, "keep_checkpoints": 1, "precision": "fp32",
        "model": {"d_model": 64, "num_heads": 4, "encoder_depth": 4, "decoder_depth": 2},
        "masking": {"input_budget": 24, "target_budget": 24}, "optim": {"lr": 1e-3, "warmup_steps": 20}})
    trainer = Trainer(tokens["train"], out / "run", config, progress=False)
    trainer.fit()

    labels = {}
    for split in ("train", "test"):
        meta = {s["id"]: s["metadata"]["label"] for s in json.loads(manifests[split].read_text())["samples"]}
        labels[split] = meta
    results = {"codec_held_in_nrmse": report.nrmse, "steps": args.steps, "codec_steps": args.codec_steps,
               "seed": args.seed}
    for view, drop in (("both streams", []), ("patch tokens only", [LATENT]), ("VAE latent tokens only", [PATCH])):
        (ids_tr, z_tr), (ids_te, z_te) = embed(trainer, tokens["train"], drop), embed(trainer, tokens["test"], drop)
        y_tr = np.array([labels["train"][i] for i in ids_tr])
        y_te = np.array([labels["test"][i] for i in ids_te])
        m = latent_metrics(z_tr, y_tr, z_te, y_te)
        results[view] = {k: m[k] for k in ("silhouette", "silhouette_train", "knn_accuracy", "knn_balanced_accuracy",
                                           "separation_ratio_min", "separation_ratio_mean")}
    results["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "bundle.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = ["| shared-transformer embedding (held-out sources) | silhouette | silhouette (train) | k-NN | "
             "k-NN balanced | min / spread | mean / spread |", "|---|---:|---:|---:|---:|---:|---:|"]
    for view in ("both streams", "patch tokens only", "VAE latent tokens only"):
        r = results[view]
        lines.append(f"| {view} | {r['silhouette']:.3f} | {r['silhouette_train']:.3f} | {r['knn_accuracy']:.3f} | "
                     f"{r['knn_balanced_accuracy']:.3f} | {r['separation_ratio_min']:.2f} | "
                     f"{r['separation_ratio_mean']:.2f} |")
    (out / "bundle.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"({results['seconds']} s)")


if __name__ == "__main__":
    main()
