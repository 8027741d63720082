"""Modality-separating VAEs speed, same run: training images/s and MFU against the machine's own
matmul peak, and images/s through ``mmtok encode`` against the bare codec.

    python benchmarks/bench_medimg.py [--quick] [--device cpu|cuda] [--batch 64] [--json out.json]

Inputs: the plugin's real data set (`build_dataset`, 64 x 64 px, 3 channels, training split) and
the real example manifest (`examples/medimg/manifest.json`: DICOM, PNG / JPEG, SVS, NIfTI).
Contenders, each one call:

* ``baseline step`` / ``disentangled step``: one AdamW step (forward with every loss term,
  backward, update) of `ConditionalVAE` / `DisentangledConditionalVAE` (default configs) on a
  batch of real images;
* ``matmul peak``: square fp32 matmuls (bf16 on CUDA), the machine's own reference;
* ``mmtok encode``: `mmtok.encode_manifest` of the example manifest repeated 8 times (224 samples:
  reading every file, preprocessing, the `medimg-vae-fsq` codec shipped in the wheel, writing the
  shards), against ``codec.encode`` of the same 224 images already in memory (the bare codec).

Reported: images/s (batch / step time), MFU = counted FLOPs per step (``torch.utils.flop_counter``)
/ step time / matmul peak, and encode images/s with its ratio to the bare codec. Timing:
`bench_train.Timing` (interleaved blocks, medians).
"""

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_train import LOAD, Timing, _flop_mapping, finish, peak_fns, peak_result  # noqa: E402

import mmtok  # noqa: E402
from mmtok_plugin_medimg.datasets import build_dataset  # noqa: E402
from mmtok_plugin_medimg.experiments import build_variant, model_labels  # noqa: E402

EXAMPLE = HERE.parent / "examples" / "medimg"
COPIES = 8


class Step:
    """zero_grad, forward (all loss terms), backward, AdamW step."""

    def __init__(self, model, x, y):
        self.model, self.x, self.y = model.train(), x, y
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def __call__(self, counter=None) -> None:
        self.opt.zero_grad(set_to_none=True)
        with counter or contextlib.nullcontext():
            self.model(self.x, self.y).loss.backward()
        self.opt.step()

    def flops(self) -> int:
        counter = FlopCounterMode(display=False, custom_mapping=_flop_mapping())
        self(counter)
        return counter.get_total_flops()


def _encode_setup(tmp: Path):
    """A manifest of the example's samples repeated, and a registry with the shipped VAE stream."""
    base = json.loads((EXAMPLE / "manifest.json").read_text())
    shutil.copytree(EXAMPLE / "data", tmp / "data")
    samples = [{**s, "id": f"{s['id']}_{k}"} for k in range(COPIES) for s in base["samples"]]
    (tmp / "manifest.json").write_text(json.dumps({"version": 1, "samples": samples}))
    (tmp / "registry.yaml").write_text(
        "version: 1\nstreams:\n  tok_medimg_latent:\n    modality: medical_image\n    codec: medimg-vae-fsq\n"
        "    vocab_size: 4096\n    num_tokens: 4\n    checkpoint: medimg/disentangled-vae-fsq\n")
    return tmp / "manifest.json", tmp / "registry.yaml", len(samples)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    t_start, mark = time.perf_counter(), LOAD.read()
    torch.manual_seed(0)
    data = build_dataset(size=64, channels=3).subset("train")
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(data.labels), generator=g)[:args.batch]
    x = data.pixels[idx].to(args.device)
    steps, params = {}, {}
    for variant in ("baseline", "disentangled"):
        model = build_variant(variant, data).to(args.device)
        steps[variant] = Step(model, x, model_labels(model, data.labels[idx]).to(args.device))
        params[variant] = sum(q.numel() for q in model.parameters())
    flops = {k: s.flops() for k, s in steps.items()}

    manager = mmtok.get_plugin_manager()
    codec = manager.load_pretrained("medimg/disentangled-vae-fsq").to(args.device).eval()
    tmp = Path(tempfile.mkdtemp(prefix="bench_medimg_"))
    manifest_path, registry_path, n_encode = _encode_setup(tmp)
    from mmtok.manifest import Manifest

    manifest = Manifest.load(manifest_path)
    images = [manifest.load_modality(s, "medical_image", manager) for s in manifest.samples]
    counter = iter(range(10 ** 6))

    def encode_run():
        mmtok.encode_manifest(manifest_path, tmp / f"tokens_{next(counter)}", registry_path=registry_path,
                              batch_size=64, progress=False)

    def bare_codec():
        with torch.inference_mode():
            for im in images:  # one image per call: each has its own size (bucketed alike by encode)
                codec.encode(im.to(args.device))

    sizes = (1024, 2048) if args.device == "cpu" else (4096, 8192)
    timing = Timing(args.device, args.quick)
    t_b, t_d, t_enc, t_bare, *t_peak = timing.compare(steps["baseline"], steps["disentangled"], encode_run,
                                                      bare_codec, *peak_fns(args.device, sizes))
    shutil.rmtree(tmp, ignore_errors=True)
    peak = peak_result(args.device, sizes, t_peak)
    res = {"env": {"device": args.device, "torch": torch.__version__, "threads": torch.get_num_threads(),
                   "quick": args.quick},
           "config": {"batch": args.batch, "image": [3, 64, 64], "params": params}, "peak": peak}
    for name, t in (("baseline", t_b), ("disentangled", t_d)):
        s = t["median_s"]
        res[name] = {"step_s": s, "images_per_s": args.batch / s, "gflop_per_step": flops[name] / 1e9,
                     "mfu": flops[name] / s / peak["peak_flops_per_s"], "foreign_share": t["foreign_share"]}
    res["encode"] = {"samples": n_encode, "encode_images_per_s": n_encode / t_enc["median_s"],
                     "bare_codec_images_per_s": n_encode / t_bare["median_s"]}
    res["encode"]["ratio"] = res["encode"]["encode_images_per_s"] / res["encode"]["bare_codec_images_per_s"]
    print(f"{args.device}, {res['env']['threads']} threads, batch {args.batch} of real 64 x 64 x 3 images; "
          f"{peak['dtype']} matmul peak {peak['peak_flops_per_s'] / 1e9:.0f} GFLOP/s (same run)\n")
    print("| training step | params | step (ms) | images/s | GFLOP/step | MFU |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in ("baseline", "disentangled"):
        r = res[name]
        print(f"| {name} | {params[name] / 1e6:.2f} M | {1e3 * r['step_s']:.0f} | {r['images_per_s']:.0f} | "
              f"{r['gflop_per_step']:.2f} | {100 * r['mfu']:.1f}% |")
    e = res["encode"]
    print(f"\nmmtok encode of {e['samples']} real files (DICOM / PNG / JPEG / SVS / NIfTI) with medimg-vae-fsq: "
          f"{e['encode_images_per_s']:.0f} images/s; the bare codec on the same images in memory "
          f"{e['bare_codec_images_per_s']:.0f} images/s (encode / bare {e['ratio']:.2f}x)")
    res["env"]["wall_s"] = round(time.perf_counter() - t_start, 1)
    res["env"]["foreign_cpu_share"] = LOAD.since(mark) / res["env"]["wall_s"] if LOAD.ok else None
    finish(res, args.json)
    return res


if __name__ == "__main__":
    main()
