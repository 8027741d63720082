"""Train the seed's CT encoder (`CTReportAligner`) on real CT crops and measure retrieval.

    python examples/ct/retrieval.py [--out runs/ct/retrieval] [--seeds 0 1 2] [--steps 400]
                                    [--width 128] [--depth 4] [--batch 48] [--text words wordllama]

Samples are the crops of `ct_data.py`: training crops from slices 0-21 of the NIfTI case, held-out
crops from its slices 22-29 (no shared voxel), and every crop of the DICOM case (a patient never
seen in training). The text side is the templated findings report of each crop (made from the
TotalSegmentator masks; no real reports exist for these volumes).

Two report sides, each with the same vision encoder and split: ``words`` (the `report-words`
vocabulary fitted on the training reports + a small transformer trained from scratch) and
``wordllama`` (the frozen `report-wordllama` codec: one pretrained 256-d WordLlama embedding per
report line; only a small adapter on top is trained).

For each report side, seed and for two inputs — volume + anatomy mask (the seed's design) and the volume
alone (the mask replaced by background) — it reports image->text and text->image Recall@1/5/10
over the held-out crops, next to chance (exact expectation under a random ranking; a report
shared by several crops counts as a hit for each of them). Writes ``metrics.json``,
``retrieval.png`` (similarity matrix) and ``attention.png`` (slice-aware and region-aware
attention of one held-out crop).
"""

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from ct_data import CROP, split_crops  # noqa: E402

import mmtok  # noqa: E402
from mmtok_plugin_ct import ReportText  # noqa: E402
from mmtok_plugin_ct.model.encoder import CTEncoderConfig, CTReportAligner  # noqa: E402
from mmtok_plugin_ct.regions import NUM_REGIONS  # noqa: E402
from mmtok_plugin_ct.text import ReportTextCodec, step_index, step_regions  # noqa: E402

KS = (1, 5, 10)
MAX_STEPS = 7


TEXTS = ("words", "wordllama")


def tokenized(crops, words: ReportTextCodec, wordllama=None) -> dict:
    """Both report sides of the crops: word ids (b, T) + step index, and (with ``wordllama``, the
    `report-wordllama` codec) frozen line embeddings (b, MAX_STEPS, 256)."""
    ids = words.ids(crops.reports)
    out = {"volume": crops.volumes.float(), "regions": crops.regions.long(), "ids": ids,
           "steps": step_index(ids), "step_region": step_regions(crops.reports, MAX_STEPS),
           "reports": crops.reports}
    if wordllama is not None:
        out["emb"] = wordllama.encode(ReportText.from_texts(crops.reports)).values
    return out


def text_input(data: dict, text: str, idx=slice(None)) -> tuple:
    """(text_ids or line embeddings, step index) of the chosen report side."""
    return (data["emb"][idx], None) if text == "wordllama" else (data["ids"][idx], data["steps"][idx])


def recall_at_k(sim: torch.Tensor, same: torch.Tensor, ks=KS) -> dict[str, float]:
    """sim (n, n) query x candidate; same (n, n) bool: candidate j is a correct answer for query i."""
    order = sim.argsort(dim=1, descending=True)
    hits = same.gather(1, order)
    return {f"R@{k}": float(hits[:, :k].any(1).float().mean()) for k in ks}


def chance_recall(same: torch.Tensor, ks=KS) -> dict[str, float]:
    """Expected Recall@k of a uniformly random ranking: 1 - C(n - m, k) / C(n, k) per query."""
    n = same.shape[1]
    out = {}
    for k in ks:
        vals = [1.0 - math.comb(n - m, k) / math.comb(n, k) for m in same.sum(1).tolist()]
        out[f"R@{k}"] = sum(vals) / len(vals)
    return out


@torch.no_grad()
def evaluate(model: CTReportAligner, data: dict, use_mask: bool, text: str = "words") -> dict:
    model.eval()
    regions = data["regions"] if use_mask else torch.zeros_like(data["regions"])
    v = torch.cat([model.embed_volumes(data["volume"][i:i + 64], regions[i:i + 64])
                   for i in range(0, len(data["reports"]), 64)])
    t = model.embed_texts(*text_input(data, text))
    reports = data["reports"]
    same = torch.tensor([[a == b for b in reports] for a in reports])
    sim = v @ t.T
    model.train()
    return {"image_to_text": recall_at_k(sim, same), "text_to_image": recall_at_k(sim.T, same.T),
            "chance": chance_recall(same), "n": len(reports), "sim": sim}


def train(seed: int, train_data: dict, vocab: int, steps: int, use_mask: bool, text: str = "words",
          batch: int = 48, lr: float = 5e-4, width: int = 128, depth: int = 4) -> CTReportAligner:
    torch.manual_seed(seed)
    side = ({"text_input": "embeddings", "text_embed_dim": train_data["emb"].shape[2],
             "text_max_tokens": train_data["emb"].shape[1]} if text == "wordllama"
            else {"text_input": "ids", "text_max_tokens": train_data["ids"].shape[1]})
    config = CTEncoderConfig(img_size=CROP, patch_size=(4, 16, 16), embed_dim=width, depth=depth, num_heads=4,
                             num_regions=NUM_REGIONS, shared_dim=width, vocab_size=vocab, text_depth=2,
                             mask_hidden=32, **side)
    model = CTReportAligner(config)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    gen = torch.Generator().manual_seed(seed)
    n = len(train_data["reports"])
    for step in range(steps):
        idx = torch.randint(n, (batch,), generator=gen)
        vol = train_data["volume"][idx]
        vol = vol + 0.02 * torch.randn(vol.shape, generator=gen)  # scanner noise
        regions = train_data["regions"][idx] if use_mask else torch.zeros_like(train_data["regions"][idx])
        out = model(vol, regions, *text_input(train_data, text, idx), train_data["step_region"][idx])
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            parts = " ".join(f"{k} {float(v.detach()):.3f}" for k, v in out.parts.items())
            print(f"  {text} seed {seed} mask={use_mask} step {step}: loss {float(out.loss.detach()):.3f} ({parts})", flush=True)
    return model


@torch.no_grad()
def attention_maps(vision, volume: torch.Tensor, regions: torch.Tensor) -> dict[str, torch.Tensor]:
    """Attention weights of the last block: slice-aware (1, h, n, n) and region-aware (1, h, n, r)."""
    vision.eval()
    x, anatomy, slices = vision.patch_embed(volume), vision.anatomy(regions), vision.patch_embed.grid[0]
    for block in vision.blocks[:-1]:
        x = block(x, vision.patch_z, anatomy, num_slices=slices)
    last = vision.blocks[-1]
    out, slice_attn = last.slice_attn(last.norm1(x), vision.patch_z, return_attention=True, num_slices=slices)
    x = x + out
    _, region_attn = last.region_attn(last.norm2(x), last.norm_regions(anatomy.region_embeds),
                                      anatomy.patch_to_region, anatomy.region_present, return_attention=True)
    return {"slice_attention": slice_attn, "region_attention": region_attn}


def plot(out: Path, model: CTReportAligner, test: dict, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    im = ax.imshow(result["sim"].numpy(), cmap="viridis")
    ax.set_xlabel("report (held-out crops)")
    ax.set_ylabel("CT crop (held-out)")
    ax.set_title("cosine similarity, volume+mask model")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(out / "retrieval.png", dpi=120)
    plt.close(fig)

    # attention of one held-out crop: slice-aware self-attention of the centre patch, and the
    # region-aware attention mass each patch puts on its dominant region
    i = int(torch.argmax(torch.tensor([len(set(r.splitlines())) for r in test["reports"]])))
    maps = attention_maps(model.vision, test["volume"][i:i + 1], test["regions"][i:i + 1])
    grid = model.vision.patch_embed.grid
    slice_attn = maps["slice_attention"][0].mean(0)  # (n, n), mean over heads
    centre = (grid[0] // 2) * grid[1] * grid[2] + (grid[1] // 2) * grid[2] + grid[2] // 2
    region_attn = maps["region_attention"][0].mean(0)  # (n, r)
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.6))
    mid = CROP[0] // 2
    axes[0].imshow(test["volume"][i, 0, mid].numpy(), cmap="gray")
    axes[0].set_title("held-out crop (soft-tissue window)")
    axes[1].imshow(test["regions"][i, 0, mid].numpy(), cmap="tab20", vmin=0, vmax=NUM_REGIONS - 1)
    axes[1].set_title("region groups")
    a = slice_attn[centre].reshape(grid)[grid[0] // 2].numpy()
    axes[2].imshow(a, cmap="magma")
    axes[2].set_title("slice-aware attn of centre patch")
    dominant = region_attn.argmax(-1).reshape(grid)[grid[0] // 2].numpy()
    axes[3].imshow(dominant, cmap="tab20", vmin=0, vmax=NUM_REGIONS - 1)
    axes[3].set_title("region each patch attends most")
    for ax in axes:
        ax.axis("off")
    fig.suptitle(test["reports"][i].splitlines()[0], fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "attention.png", dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/ct/retrieval"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--width", type=int, default=128, help="encoder width (embed_dim = shared_dim)")
    p.add_argument("--depth", type=int, default=4, help="vision transformer blocks")
    p.add_argument("--batch", type=int, default=48)
    p.add_argument("--text", nargs="+", choices=TEXTS, default=list(TEXTS), help="report sides to compare")
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    start = time.perf_counter()
    train_crops, test_crops, cross_crops = split_crops()
    words = ReportTextCodec({"modality": "report_text", "vocab_size": 256, "num_tokens": 112})
    words.fit_statistics(ReportText.from_texts(train_crops.reports))
    wordllama = (mmtok.get_plugin_manager().build_codec("report-wordllama", {"num_tokens": MAX_STEPS})
                 if "wordllama" in args.text else None)
    data = {name: tokenized(c, words, wordllama) for name, c in
            (("train", train_crops), ("test", test_crops), ("cross", cross_crops))}
    print(f"crops: train {len(train_crops)}, held-out slab {len(test_crops)} "
          f"({len(set(test_crops.reports))} distinct reports), unseen patient {len(cross_crops)}")
    results: dict = {"train": len(train_crops), "test": len(test_crops), "cross": len(cross_crops),
                     "steps": args.steps, "seeds": args.seeds, "texts": args.text,
                     "width": args.width, "depth": args.depth, "batch": args.batch, "runs": [],
                     "wordllama_fingerprint": wordllama.fingerprint() if wordllama else None}
    keep = None
    for text in args.text:
        for use_mask in (True, False):
            for seed in args.seeds:
                model = train(seed, data["train"], words.vocab_size, args.steps, use_mask, text, batch=args.batch,
                              width=args.width, depth=args.depth)
                run = {"text": text, "seed": seed, "mask": use_mask}
                for split in ("test", "cross"):
                    r = evaluate(model, data[split], use_mask, text)
                    if keep is None and use_mask and split == "test":
                        keep = (model, r)
                    run[split] = {k: v for k, v in r.items() if k != "sim"}
                results["runs"].append(run)
                print(f"{text} seed {seed} mask={use_mask}: held-out i->t {run['test']['image_to_text']} "
                      f"t->i {run['test']['text_to_image']}; unseen patient i->t {run['cross']['image_to_text']}",
                      flush=True)
    summary = {}
    for text in args.text:
        for use_mask in (True, False):
            runs = [r for r in results["runs"] if r["mask"] == use_mask and r["text"] == text]
            name = "volume+mask" if use_mask else "volume only"
            for split in ("test", "cross"):
                for direction in ("image_to_text", "text_to_image"):
                    for k in KS:
                        vals = [r[split][direction][f"R@{k}"] for r in runs]
                        summary[f"{text}/{name}/{split}/{direction}/R@{k}"] = {
                            "mean": statistics.mean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                            "chance": runs[0][split]["chance"][f"R@{k}"]}
    results["summary"] = summary
    results["seconds"] = time.perf_counter() - start
    (args.out / "metrics.json").write_text(json.dumps(results, indent=2))
    print("\n| report side | input | split | direction | R@1 | R@5 | R@10 |\n|---|---|---|---|---|---|---|")
    for name in ("volume+mask", "volume only"):
        for split, label in (("test", "held-out slab"), ("cross", "unseen patient")):
            for direction in ("image_to_text", "text_to_image"):
                for text in args.text:
                    cells = [summary[f"{text}/{name}/{split}/{direction}/R@{k}"] for k in KS]
                    print(f"| {text} | {name} | {label} | {direction.replace('_', ' ')} | " + " | ".join(
                        f"{100 * c['mean']:.1f} ± {100 * c['std']:.1f} (chance {100 * c['chance']:.1f})"
                        for c in cells) + " |")
    if not args.no_plots and keep is not None:
        plot(args.out, keep[0], data["test"], keep[1])
    print(f"({results['seconds']:.0f} s; {args.out / 'metrics.json'})")
    return results


if __name__ == "__main__":
    main()
