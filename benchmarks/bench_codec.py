"""Micro-benchmarks of mmtok's own overheads, measured against references from the same run.

    python benchmarks/bench_codec.py [--quick] [--device cpu|cuda] [--json out.json] [--dim 16]

Sections (see benchmarks/README.md for what each ratio means):

1. Quantizer adapter overhead. For FSQ [8,5,5,5], VQ 512, LFQ 256 and ResidualVQ 4x256 (eval mode,
   ``torch.no_grad``), on channel-last latents ``(64, 256, dim)``: ``adapter.quantize(z)`` vs the
   wrapped vector-quantize-pytorch module ``adapter.impl(z)`` (same weights), and
   ``adapter.ids_to_codes(ids)`` vs the library's ``indices_to_codes`` /
   ``get_output_from_indices`` on the library's own id layout.
2. Modality validation cost. Constructing ``Image(flux=(64, 3, 32, 32))`` (jaxtyping + beartype
   check and finiteness check in ``__post_init__``) vs one ``encode`` of the same batch with the
   built-in ``image-patch`` codec; likewise ``Scalars(values=(64, 4))`` vs ``table-mlp``.
3. Speed reference. ``image-patch`` encode throughput (samples/s), this machine's fp32 1024x1024
   matmul throughput (GFLOP/s), and the codec's achieved GFLOP/s (FLOPs counted with
   ``torch.utils.flop_counter.FlopCounterMode``).

Timing: ``time.perf_counter``; warm-up calls first; each measurement is ``repeats`` blocks of
``number`` calls (``number`` calibrated so that one block lasts ``block_s``); the median block
time divided by ``number`` is reported, with the interquartile range in the JSON. The two sides
of each comparison are interleaved block by block, so slow drift (thermal, other load) hits both.
On CUDA every block ends with ``torch.cuda.synchronize()``. The thread count is left at torch's
default (``torch.utils.benchmark.Timer`` would force one thread, hence not used).
"""

import argparse
import json
import math
import platform
import statistics
import time

import torch

import mmtok
from mmtok.modalities import Image, Scalars
from mmtok.plugins import get_plugin_manager
from mmtok.quantize import (
    FSQConfig,
    LFQConfig,
    ResidualVQConfig,
    VQConfig,
    build_quantizer,
)

BATCH = 64


# --------------------------------------------------------------------------- timing
class Timing:
    def __init__(self, device: str, quick: bool):
        self.cuda = device == "cuda"
        self.warmup = 3 if quick else 10
        self.repeats = 7 if quick else 31
        self.block_s = 0.01 if quick else 0.1

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def _block(self, fn, number: int) -> float:
        self.sync()
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        self.sync()
        return time.perf_counter() - t0

    def _number(self, fn) -> int:
        per_call = self._block(fn, 1)
        return max(1, min(10_000, math.ceil(self.block_s / max(per_call, 1e-7))))

    def compare(self, *fns) -> list[dict]:
        """Time each fn, blocks interleaved; per fn: median / q1 / q3 seconds per call."""
        for fn in fns:
            for _ in range(self.warmup):
                fn()
        numbers = [self._number(fn) for fn in fns]
        samples = [[] for _ in fns]
        for r in range(self.repeats):
            order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
            for i in order:
                samples[i].append(self._block(fns[i], numbers[i]) / numbers[i])
        out = []
        for s, n in zip(samples, numbers):
            q1, _, q3 = statistics.quantiles(s, n=4)
            out.append({"median_s": statistics.median(s), "q1_s": q1, "q3_s": q3, "number": n,
                        "repeats": len(s)})
        return out


# --------------------------------------------------------------------------- 1. quantizers
QUANTIZERS = {
    "FSQ [8,5,5,5]": FSQConfig(levels=[8, 5, 5, 5]),
    "VQ 512": VQConfig(codebook_size=512),
    "LFQ 256": LFQConfig(codebook_size=256),
    "ResidualVQ 4x256": ResidualVQConfig(num_quantizers=4, codebook_size=256),
}


def _library_decode(impl):
    """The library's own ids -> codes (with output projection) for this module."""
    return getattr(impl, "get_output_from_indices", None) or impl.indices_to_codes


@torch.no_grad()
def _bench_quantizer(t: Timing, name: str, cfg, z: torch.Tensor) -> list[dict]:
    torch.manual_seed(0)
    q = build_quantizer(cfg, z.shape[-1]).to(z.device).eval()
    decode = _library_decode(q.impl)
    ids = q.quantize(z).ids  # adapter layout: (b, n * depth) int64
    lib_ids = q.impl(z)[1]  # library layout: (b, n) or (b, n, depth), its own dtype
    # sanity: both paths give the same result
    assert torch.equal(q.quantize(z).z_q, q.impl(z)[0]), name
    assert torch.allclose(q.ids_to_codes(ids), decode(lib_ids), atol=1e-5), name
    fwd = t.compare(lambda: q.impl(z), lambda: q.quantize(z))
    dec = t.compare(lambda: decode(lib_ids), lambda: q.ids_to_codes(ids))
    return [{"quantizer": name, "op": op, "direct": direct, "adapter": adapter,
             "ratio": adapter["median_s"] / direct["median_s"]}
            for op, (direct, adapter) in (("quantize", fwd), ("ids_to_codes", dec))]


def bench_quantizers(t: Timing, device: str, dim: int) -> list[dict]:
    z = torch.randn(BATCH, 256, dim, device=device)
    return [row for name, cfg in QUANTIZERS.items() for row in _bench_quantizer(t, name, cfg, z)]


# --------------------------------------------------------------------------- 2. validation
def _encode_case(t: Timing, device: str, codec_name: str, make, field_shape, flops: bool) -> dict:
    codec = get_plugin_manager().build_codec(codec_name)
    x = torch.randn(*field_shape, device=device)
    m = make(x)
    codec.to(device)
    codec.fit_statistics(m)
    codec.eval()
    checker = type(m)._checker  # built (and cached) by the first construction above
    field = codec.field
    with torch.no_grad():
        build, enc, check, finite, fields = t.compare(
            lambda: make(x), lambda: codec.encode(m),
            lambda: checker(**{field: x}), lambda: bool(torch.isfinite(x).all()),
            type(m).tensor_fields)
    row = {"codec": codec_name, "modality": f"{type(m).__name__} {tuple(field_shape)}",
           "validate": build, "encode": enc,
           # parts of `validate`, timed alone: the cached jaxtyping+beartype checker, the
           # finiteness check, and tensor_fields() (cached per class)
           "jaxtyping_beartype": check, "isfinite": finite, "tensor_fields": fields,
           "ratio": build["median_s"] / enc["median_s"],
           "samples_per_s": field_shape[0] / enc["median_s"]}
    if flops:
        from torch.utils.flop_counter import FlopCounterMode

        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            codec.encode(m)
        row["encode_flops"] = counter.get_total_flops()
        row["encode_gflops_per_s"] = row["encode_flops"] / enc["median_s"] / 1e9
    return row


def bench_validation(t: Timing, device: str) -> list[dict]:
    return [
        _encode_case(t, device, "image-patch", lambda x: Image(flux=x), (BATCH, 3, 32, 32), True),
        _encode_case(t, device, "table-mlp", lambda x: Scalars(values=x), (BATCH, 4), True),
    ]


# --------------------------------------------------------------------------- 3. reference
def bench_matmul(t: Timing, device: str, n: int = 1024) -> dict:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    (res,) = t.compare(lambda: a @ b)
    return {"size": n, **res, "gflops_per_s": 2 * n**3 / res["median_s"] / 1e9}


# --------------------------------------------------------------------------- report
def _ms(r: dict) -> str:
    return f"{r['median_s'] * 1e3:.3f}"


def _us(r: dict) -> str:
    return f"{r['median_s'] * 1e6:.1f}"


def _spread(*rs: dict) -> str:
    """Worst relative interquartile range of the timings behind a ratio."""
    return f"±{max(100 * (r['q3_s'] - r['q1_s']) / r['median_s'] for r in rs):.0f}%"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def markdown(res: dict) -> str:
    env = res["env"]
    lines = [(f"mmtok {env['mmtok']}, torch {env['torch']}, vector-quantize-pytorch {env['vqp']}, "
              f"device {env['device']} ({env['device_name']}), {env['threads']} threads, "
              f"{'quick' if env['quick'] else 'full'} run, latents (64, 256, {env['dim']})"),
             "",
             "| quantizer | op | direct ms | adapter ms | adapter/direct | IQR |",
             "|---|---|---:|---:|---:|---:|"]
    for r in res["quantizers"]:
        lines.append(f"| {r['quantizer']} | {r['op']} | {_ms(r['direct'])} | {_ms(r['adapter'])} | "
                     f"{r['ratio']:.2f} | {_spread(r['direct'], r['adapter'])} |")
    lines += ["", ("| modality (construct) | codec (encode) | validation µs | encode µs | "
                   "validation/encode | of which: jaxtyping+beartype µs | isfinite µs | "
                   "tensor_fields() µs |"),
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in res["validation"]:
        lines.append(f"| {r['modality']} | {r['codec']} | {_us(r['validate'])} | {_us(r['encode'])} | "
                     f"{r['ratio']:.3f} | {_us(r['jaxtyping_beartype'])} | {_us(r['isfinite'])} | "
                     f"{_us(r['tensor_fields'])} |")
    img, mm = res["validation"][0], res["matmul"]
    lines += ["", "| reference | value |", "|---|---:|",
              f"| image-patch encode throughput (batch 64) | {img['samples_per_s']:,.0f} samples/s |",
              f"| fp32 matmul {mm['size']}x{mm['size']} | {mm['gflops_per_s']:.1f} GFLOP/s |",
              (f"| image-patch encode, achieved ({img['encode_flops'] / 1e6:.0f} MFLOP/batch) | "
               f"{img['encode_gflops_per_s']:.1f} GFLOP/s "
               f"({100 * img['encode_gflops_per_s'] / mm['gflops_per_s']:.0f}% of matmul) |")]
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer, shorter repeats (< 30 s)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dim", type=int, default=16, help="latent dim of the quantizer benchmark")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")

    import vector_quantize_pytorch

    t0 = time.perf_counter()
    t = Timing(args.device, args.quick)
    torch.manual_seed(0)
    res = {"env": {
        "mmtok": mmtok.__version__, "torch": torch.__version__,
        "vqp": getattr(vector_quantize_pytorch, "__version__", None) or _dist_version(),
        "python": platform.python_version(), "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device == "cuda" else _cpu_name(),
        "threads": torch.get_num_threads(), "quick": args.quick, "dim": args.dim,
        "warmup": t.warmup, "repeats": t.repeats, "block_s": t.block_s}}
    print("1/3 quantizer adapters ...", flush=True)
    res["quantizers"] = bench_quantizers(t, args.device, args.dim)
    print("2/3 modality validation vs encode ...", flush=True)
    res["validation"] = bench_validation(t, args.device)
    print("3/3 matmul reference ...", flush=True)
    res["matmul"] = bench_matmul(t, args.device)
    res["env"]["wall_s"] = round(time.perf_counter() - t0, 1)
    print()
    print(markdown(res))
    print(f"\n(total {res['env']['wall_s']} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
        print(f"wrote {args.json}")
    return res


def _dist_version():
    import importlib.metadata

    return importlib.metadata.version("vector-quantize-pytorch")


if __name__ == "__main__":
    main()
