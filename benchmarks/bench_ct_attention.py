"""Cost of the CT encoder's slice-aware attention against plain SDPA self-attention, same run.

    python benchmarks/bench_ct_attention.py [--quick] [--device cpu|cuda] [--dtype fp32|bf16]
        [--grid 16 8 8] [--dim 256] [--heads 8] [--batch 2] [--max-slice-distance 32]
        [--no-explicit] [--json out.json]

One call is forward + backward of one attention layer (``qkv`` Linear, attention, ``proj``
Linear) on a random (batch, N, dim) input, N = prod(grid) patches in row-major (z, y, x) order;
the gradient w.r.t. the input and all parameters is computed (``.grad`` reset to None each
call). Contenders:

* ``plain SDPA``: ``F.scaled_dot_product_attention(q, k, v)`` without a mask (the fused kernel).
* ``slice-aware, augmented q/k (default)``: `mmtok_plugin_ct.model.layers.SliceAwareAttention` (mode
  ``augment``, what `CTVisionEncoder` runs) with a random (heads, max_slice_distance) table: the
  slice bias enters as g = grid z extra q/k channels (one-hot slice of the query, the slice-pair
  bias column of the key; padded to a multiple of 8, v zero-padded), so SDPA keeps its fused
  kernel and no (N, N) tensor exists. The table gets its gradient.
* ``slice-aware, float attn_mask``: the same layer in mode ``mask``: per call the (1, heads, N, N)
  bias is gathered from the table with the (N, N) distance index and passed to SDPA as a float
  ``attn_mask`` (needing a mask gradient, SDPA runs its unfused path).
* ``slice-aware, explicit softmax``: ``return_attention=True``: the seed's
  ``softmax(q k^T / sqrt(d) + bias) v`` written out (materialises the (B, heads, N, N) weights).
  ``--no-explicit`` skips it.

The seed's full grid (16, 32, 32) = 16,384 patches at 12 heads: the float-mask and explicit
contenders need a (12, 16384, 16384) bias (12.9 GB in fp32, plus as much again for its gradient;
the explicit one also B times that for the weights): not a CPU benchmark. The default (16, 8, 8) =
1,024 patches at width 256 and 8 heads runs on a laptop; ``--device cuda --dtype bf16 --grid 16 32
32 --dim 768 --heads 12 --no-explicit`` measures the seed's size on a big GPU.

Timing: `bench_train.Timing` (warm-up calls, then ``repeats`` blocks per contender, blocks
interleaved with the order reversed every other block, median block time / calls per block;
CPU load by other processes flagged with ⚠; ``torch.cuda.synchronize()`` around CUDA blocks).
The ratio slice-aware / plain is of medians measured in the same run.
"""

import argparse
import math
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_codec import _cpu_name
from bench_train import LOAD, NOISY, Timing, _spread, finish
from mmtok_plugin_ct.model.layers import SliceAwareAttention

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class PlainAttention(nn.Module):
    """The baseline: the same projections, SDPA without a mask."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


def make_calls(args) -> list[tuple[str, nn.Module, object]]:
    device, dtype = args.device, DTYPES[args.dtype]
    torch.manual_seed(0)
    n = math.prod(args.grid)
    x = torch.randn(args.batch, n, args.dim, device=device, dtype=dtype, requires_grad=True)
    z = torch.arange(args.grid[0], device=device).repeat_interleave(n // args.grid[0])
    g = args.grid[0]
    plain = PlainAttention(args.dim, args.heads).to(device, dtype)
    layers = {}
    for mode in ("augment", "mask"):
        torch.manual_seed(1)
        layers[mode] = SliceAwareAttention(args.dim, args.heads, args.max_slice_distance, mode=mode).to(device, dtype)
        with torch.no_grad():
            layers[mode].slice_bias.normal_(0, 1.0)

    def step(module, fn):
        def call():
            x.grad = None
            for p in module.parameters():
                p.grad = None
            fn().float().sum().backward()
        return call

    aug, mask = layers["augment"], layers["mask"]
    calls = [("plain SDPA", plain, step(plain, lambda: plain(x))),
             ("slice-aware, augmented q/k (default)", aug, step(aug, lambda: aug(x, z, num_slices=g))),
             ("slice-aware, float attn_mask", mask, step(mask, lambda: mask(x, z, num_slices=g)))]
    if not args.no_explicit:
        calls.append(("slice-aware, explicit softmax", mask,
                      step(mask, lambda: mask(x, z, return_attention=True)[0])))
    return calls


def markdown(res: dict) -> str:
    env, cfg = res["env"], res["config"]
    lines = [(f"torch {env['torch']}, device {env['device']} ({env['device_name']}), {env['threads']} threads, "
              f"{cfg['dtype']}, {'quick' if env['quick'] else 'full'} run ({env['repeats']} blocks per contender)."),
             (f"One attention layer, forward + backward: batch {cfg['batch']}, grid {tuple(cfg['grid'])} = "
              f"{cfg['tokens']:,} patches, width {cfg['dim']}, {cfg['heads']} heads, max slice distance "
              f"{cfg['max_slice_distance']} (the float-mask bias: {cfg['bias_mib']:.1f} MiB per call)."),
             "",
             "| contender | fwd+bwd ms (median) | IQR | time / plain SDPA |",
             "|---|---:|---:|---:|"]
    base = res["contenders"][0]["timing"]["median_s"]
    for r in res["contenders"]:
        t = r["timing"]
        lines.append(f"| {r['name']} | {1e3 * t['median_s']:.2f} | {_spread(t)} | {t['median_s'] / base:.2f} |")
    if any((r["timing"].get("foreign_share") or 0) > NOISY for r in res["contenders"]):
        lines += ["", (f"⚠ = other processes used > {100 * NOISY:.0f}% of a CPU during these blocks: "
                       "rerun on a quiet machine.")]
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 warm-up calls and 3 blocks per contender (full: 3 and 9)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    p.add_argument("--grid", type=int, nargs=3, default=[16, 8, 8], metavar=("GZ", "GY", "GX"),
                   help="patch grid (z, y, x); the seed's 64 x 512 x 512 volume in 4 x 16 x 16 patches is 16 32 32")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--max-slice-distance", type=int, default=32)
    p.add_argument("--no-explicit", action="store_true", help="skip the explicit-softmax contender")
    p.add_argument("--json", metavar="PATH", help="also write every number as JSON")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")
    if args.dim % args.heads:
        p.error(f"--dim {args.dim} is not divisible by --heads {args.heads}")

    t_start = time.perf_counter()
    mark = LOAD.read()
    timing = Timing(args.device, args.quick)
    n = math.prod(args.grid)
    res = {"env": {"torch": torch.__version__, "python": platform.python_version(), "device": args.device,
                   "device_name": torch.cuda.get_device_name() if args.device == "cuda" else _cpu_name(),
                   "threads": torch.get_num_threads(), "quick": args.quick, "warmup": timing.warmup,
                   "repeats": timing.repeats, "block_s": timing.block_s},
           "config": {"grid": args.grid, "tokens": n, "dim": args.dim, "heads": args.heads, "batch": args.batch,
                      "dtype": args.dtype, "max_slice_distance": args.max_slice_distance,
                      "bias_mib": args.heads * n * n * DTYPES[args.dtype].itemsize / 2**20}}
    calls = make_calls(args)
    print(f"timing {len(calls)} contenders ({timing.warmup} warm-up calls, {timing.repeats} blocks each) ...",
          flush=True)
    timings = timing.compare(*[c for _, _, c in calls])
    res["contenders"] = [{"name": name, "params": sum(p.numel() for p in m.parameters()), "timing": t}
                         for (name, m, _), t in zip(calls, timings)]
    base = timings[0]["median_s"]
    res["ratios"] = {r["name"]: r["timing"]["median_s"] / base for r in res["contenders"][1:]}
    res["env"]["wall_s"] = round(time.perf_counter() - t_start, 1)
    res["env"]["foreign_cpu_share"] = LOAD.since(mark) / res["env"]["wall_s"] if LOAD.ok else None
    print()
    print(markdown(res))
    finish(res, args.json)
    return res


if __name__ == "__main__":
    main()
