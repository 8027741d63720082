"""Guided SpectralGPT speed, same run: pretraining throughput and MFU against the machine's own
matmul peak, the cost of the cross-attention guidance, and cubes/s through preprocess + encode.

    python benchmarks/bench_hsi.py [--quick] [--device cpu|cuda] [--batch 64] [--json out.json]

Inputs: real Indian Pines data (the cube shipped in mmtok-plugin-hsi): 9 x 9 px pixel-centred
chips resampled to 192 bands (400–2500 nm) for the model, 16 x 16 px tiles for the codec.
Contenders, each one call:

* ``unguided step``: one AdamW step of `GuidedSpectralGPT` without auxiliaries (SpectralGPT MAE,
  default config: 12-band x 3 x 3 px patches = 144 per cube, 4 x 128 encoder, 90% masking);
* ``guided step``: the same encoder plus the seed's three auxiliaries (IR, AF, thickness: 1-channel
  9 x 9 images, all present), i.e. three conditioner ViTs, a cross-attention layer after every
  block and the contrastive terms. The auxiliary images are real bands of the same chips
  (one per auxiliary), a stand-in with the right shapes: Indian Pines has no IR / AF / thickness;
* ``matmul peak``: square fp32 matmuls (bf16 on CUDA), the machine's own reference;
* ``preprocess`` / ``preprocess + encode``: the ``hsi-cube-fsq`` codec on a batch of 16 x 16 tiles
  (resampling 200 -> 192 bands from the valid bands, 64 FSQ tokens per cube).

Reported: patches/s (batch x 144 / step time: every patch is a target or an input), MFU =
counted FLOPs per step (``torch.utils.flop_counter``) / step time / matmul peak, the guided /
unguided step-time ratio, and cubes/s. Timing: `bench_train.Timing` (interleaved blocks, medians).
"""

import argparse
import contextlib
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_train import LOAD, Timing, _flop_mapping, finish, peak_fns, peak_result  # noqa: E402

import mmtok  # noqa: E402
from mmtok_plugin_hsi import HSICube, resample_bands, uniform_grid  # noqa: E402
from mmtok_plugin_hsi.model import AuxInput, GuidedSpectralGPT, GuidedSpectralGPTConfig  # noqa: E402

DATA = Path(__import__("mmtok_plugin_hsi").__file__).parent / "data"
AUX = ("infrared_image", "autofluorescence_image", "thickness_map")


def _pines() -> tuple[torch.Tensor, torch.Tensor]:
    with np.load(DATA / "indian_pines.npz", allow_pickle=False) as d:
        cube = torch.from_numpy(np.moveaxis(d["cube"].astype(np.float32) / 1e4, -1, 0).copy())
    return cube, torch.linspace(400.0, 2500.0, cube.shape[0])  # approximate axis: only speed is measured


class Step:
    """zero_grad, forward (MAE + contrastive), backward, AdamW step."""

    def __init__(self, model: GuidedSpectralGPT, x: torch.Tensor, aux: dict | None):
        self.model, self.x, self.aux = model.train(), x, aux
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        self.g = torch.Generator(device=x.device).manual_seed(0)

    def __call__(self, counter=None) -> None:
        self.opt.zero_grad(set_to_none=True)
        with counter or contextlib.nullcontext():
            self.model(self.x, self.aux, generator=self.g).loss.backward()
        self.opt.step()

    def flops(self) -> int:
        counter = FlopCounterMode(display=False, custom_mapping=_flop_mapping())
        self(counter)
        return counter.get_total_flops()


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    t_start, mark = time.perf_counter(), LOAD.read()
    torch.manual_seed(0)
    cube, wl = _pines()
    grid = uniform_grid(400, 2500, 192)
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(4, 141, args.batch), rng.integers(4, 141, args.batch)
    chips = torch.stack([cube[:, r - 4:r + 5, c - 4:c + 5] for r, c in zip(rows, cols)])
    x = resample_bands(chips, wl, grid).to(args.device)
    x = (x - x.mean()) / x.std()
    aux = {name: AuxInput(x[:, 40 * (i + 1):40 * (i + 1) + 1].contiguous(),
                          torch.ones(args.batch, dtype=torch.bool, device=args.device)) for i, name in enumerate(AUX)}
    unguided = GuidedSpectralGPT(GuidedSpectralGPTConfig()).to(args.device)
    guided = GuidedSpectralGPT(GuidedSpectralGPTConfig(auxiliaries={n: 1 for n in AUX})).to(args.device)
    steps = {"unguided": Step(unguided, x, None), "guided": Step(guided, x, aux)}
    flops = {k: s.flops() for k, s in steps.items()}

    codec = mmtok.get_plugin_manager().build_codec("hsi-cube-fsq").to(args.device).eval()
    tiles = torch.stack([cube[:, r:r + 16, c:c + 16] for r in range(0, 129, 16) for c in range(0, 129, 16)])
    cubes = HSICube(reflectance=tiles, wavelength_nm=wl.expand(len(tiles), -1).clone()).to(args.device)
    codec.fit_statistics(cubes)

    def pre():
        return codec.preprocess(cubes)

    def pre_encode():
        with torch.inference_mode():
            return codec.encode(cubes)

    sizes = (1024, 2048) if args.device == "cpu" else (4096, 8192)
    timing = Timing(args.device, args.quick)
    t_u, t_g, t_pre, t_enc, *t_peak = timing.compare(steps["unguided"], steps["guided"], pre, pre_encode,
                                                     *peak_fns(args.device, sizes))
    peak = peak_result(args.device, sizes, t_peak)
    n = unguided.num_patches
    res = {"env": {"device": args.device, "torch": torch.__version__, "threads": torch.get_num_threads(),
                   "quick": args.quick},
           "config": {"batch": args.batch, "patches_per_cube": n, "model": GuidedSpectralGPTConfig().model_dump(),
                      "params_unguided": sum(p.numel() for p in unguided.parameters()),
                      "params_guided": sum(p.numel() for p in guided.parameters())},
           "peak": peak}
    for name, t in (("unguided", t_u), ("guided", t_g)):
        s = t["median_s"]
        res[name] = {"step_s": s, "patches_per_s": args.batch * n / s, "gflop_per_step": flops[name] / 1e9,
                     "mfu": flops[name] / s / peak["peak_flops_per_s"], "foreign_share": t["foreign_share"]}
    res["guided_over_unguided_time"] = t_g["median_s"] / t_u["median_s"]
    res["guided_over_unguided_flops"] = flops["guided"] / flops["unguided"]
    res["codec"] = {"cubes": len(tiles), "tokens_per_cube": codec.num_tokens,
                    "preprocess_cubes_per_s": len(tiles) / t_pre["median_s"],
                    "encode_cubes_per_s": len(tiles) / t_enc["median_s"]}
    print(f"{args.device}, {res['env']['threads']} threads, batch {args.batch}, {n} patches per cube; "
          f"{peak['dtype']} matmul peak {peak['peak_flops_per_s'] / 1e9:.0f} GFLOP/s (same run)\n")
    print("| pretraining step | params | step (ms) | patches/s | GFLOP/step | MFU |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in ("unguided", "guided"):
        r = res[name]
        params = res["config"][f"params_{name}"]
        print(f"| {name} | {params / 1e6:.2f} M | {1e3 * r['step_s']:.0f} | {r['patches_per_s']:.0f} | "
              f"{r['gflop_per_step']:.2f} | {100 * r['mfu']:.1f}% |")
    print(f"\nguidance cost: guided / unguided step time {res['guided_over_unguided_time']:.2f}x "
          f"(FLOPs {res['guided_over_unguided_flops']:.2f}x)")
    c = res["codec"]
    print(f"hsi-cube-fsq on {c['cubes']} real 16 x 16 px tiles: preprocess {c['preprocess_cubes_per_s']:.0f} cubes/s, "
          f"preprocess + encode {c['encode_cubes_per_s']:.0f} cubes/s")
    res["env"]["wall_s"] = round(time.perf_counter() - t_start, 1)
    res["env"]["foreign_cpu_share"] = LOAD.since(mark) / res["env"]["wall_s"] if LOAD.ok else None
    finish(res, args.json)
    return res


if __name__ == "__main__":
    main()
