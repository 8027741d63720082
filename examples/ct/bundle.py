"""The ``ct-encoder`` bundle on mmtok's shared transformer: crops -> manifest -> tokens ->
``mmtok train`` (masked modelling + the ``ct-alignment`` head) -> retrieval on held-out crops.

    python examples/ct/fit_codecs.py            # once: fits the codecs, writes runs/ct/registry_crops.yaml
    python examples/ct/bundle.py [--out runs/ct/bundle] [--steps 300] [--every 4]

Crops are those of `ct_data.py` (every ``--every``-th training crop, all held-out ones), written as
``.npz`` (HU int16 / labels uint8 with spacing and ``axcodes``) plus the templated report
``.txt``, so the run goes through the same manifest -> ``mmtok encode`` path as any user data.
Retrieval embeds each held-out crop with only its image streams present and each report with
only its text stream present (no leakage between the two sides) and reports Recall@k vs chance.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from ct_data import split_crops  # noqa: E402
from retrieval import KS, chance_recall, recall_at_k  # noqa: E402

from mmtok.encode import encode_manifest  # noqa: E402
from mmtok.shards import TokenShards  # noqa: E402
from mmtok.tokens import TokenBatch, TokenStream  # noqa: E402
from mmtok.train import TrainConfig, Trainer  # noqa: E402

IMAGE, TEXT = ("tok_ct_volume", "tok_anatomy_mask"), ("tok_report",)


def write_manifest(root: Path, split: str, crops) -> Path:
    samples = []
    spacing = np.asarray(crops.spacing_mm)
    for i in range(len(crops)):
        sid = f"{split}-{i:05d}"
        np.savez(root / f"{sid}_ct.npz", hu=crops.hu[i, 0].round().numpy().astype(np.int16), spacing_mm=spacing,
                 axcodes=np.asarray("SAR"))
        np.savez(root / f"{sid}_mask.npz", labels=crops.labels[i, 0].numpy().astype(np.uint8),
                 spacing_mm=spacing, axcodes=np.asarray("SAR"))
        (root / f"{sid}.txt").write_text(crops.reports[i] + "\n")
        samples.append({"id": sid, "modalities": {"ct_volume": f"{sid}_ct.npz", "anatomy_mask": f"{sid}_mask.npz",
                                                   "report_text": f"{sid}.txt"}})
    path = root / f"{split}.json"
    path.write_text(json.dumps({"version": 1, "samples": samples}))
    return path


@torch.no_grad()
def retrieval(trainer: Trainer, tokens: Path) -> dict:
    shards = TokenShards(tokens)
    ids = shards.sample_ids
    model, head = trainer.model.eval(), trainer.module.heads["ct-alignment"].eval()
    batch = TokenBatch({key: TokenStream.cat([shards.stream(s, key) for s in ids]) for key in (*IMAGE, *TEXT)})
    n = len(ids)
    img, txt, _ = head.embed_batch(model, batch)  # one encoder pass per side
    texts = [tuple(r) for r in batch["tok_report"].ids.tolist()]
    same = torch.tensor([[a == b for b in texts] for a in texts])
    sim = img @ txt.T
    return {"n": n, "image_to_text": recall_at_k(sim, same), "text_to_image": recall_at_k(sim.T, same.T),
            "chance": chance_recall(same)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/ct/bundle"))
    p.add_argument("--registry", type=Path, default=Path("runs/ct/registry_crops.yaml"))
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--every", type=int, default=4, help="keep every n-th training crop")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    crops = args.out / "crops"
    crops.mkdir(parents=True, exist_ok=True)
    train, test, _ = split_crops()
    subset = train.select(list(range(0, len(train), args.every)))
    tokens = {}
    for split, data in (("train", subset), ("test", test)):  # separate folders: training never sees a test crop
        manifest = write_manifest(crops, split, data)
        tokens[split] = args.out / f"tokens_{split}"
        if not (tokens[split] / "index.json").exists():
            encode_manifest(manifest, tokens[split], registry_path=args.registry, progress=False,
                            resume=tokens[split].exists())
    config = TrainConfig.model_validate({
        "bundle": "ct-encoder", "seed": args.seed, "batch_size": 32, "max_steps": args.steps, "log_every": 50,
        "eval_every": args.steps, "checkpoint_every": args.steps,
        "model": {"d_model": 128, "num_heads": 4, "encoder_depth": 4, "decoder_depth": 2},
        "masking": {"input_budget": 128, "target_budget": 64},
        "optim": {"lr": 1e-3, "warmup_steps": 20},
        "heads": {"ct-alignment": {"head": "ct-alignment", "weight": 1.0}}})
    trainer = Trainer(tokens["train"], args.out / f"run-seed{args.seed}", config, progress=False)
    trainer.fit()
    result = {"train_crops": len(subset), "steps": args.steps, "held_out": retrieval(trainer, tokens["test"])}
    (args.out / f"retrieval-seed{args.seed}.json").write_text(json.dumps(result, indent=2))
    r = result["held_out"]
    for d in ("image_to_text", "text_to_image"):
        print(f"shared transformer + ct-alignment, held-out {d}: " + ", ".join(
            f"R@{k} {100 * r[d][f'R@{k}']:.1f} (chance {100 * r['chance'][f'R@{k}']:.1f})" for k in KS))
    return result


if __name__ == "__main__":
    main()
