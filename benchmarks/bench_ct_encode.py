"""CT volumes per second through preprocessing + encode at the default (seed) geometry.

    python benchmarks/bench_ct_encode.py [--quick] [--device cpu|cuda] [--batch 1] [--json out.json]

Input: the real DICOM series of examples/ct (20 x 512 x 512, 2 x 0.977 x 0.977 mm; read once,
not timed). Contenders, each one call = one batch of ``--batch`` volumes:

* ``preprocess``: resample to 3 x 0.75 x 0.75 mm, crop / pad to 64 x 512 x 512, soft-tissue window;
* ``preprocess + encode``: the ``ct-volume-fsq`` codec (default config: 16 x 32 x 32 = 16,384
  FSQ tokens per volume), what ``mmtok encode`` runs per batch;
* ``matmul peak``: square fp32 matmuls (bf16 on CUDA), the machine's own reference.

Reported: volumes/s, and the codec's utilisation = (its FLOPs per volume, counted by
``torch.utils.flop_counter``) x volumes/s / matmul peak, measured in the same run.
Timing: `bench_train.Timing` (interleaved blocks, medians).
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_train import Timing, peak_fns, peak_result  # noqa: E402

import mmtok  # noqa: E402
from mmtok_plugin_ct import CTVolume, preprocess_volume, read_dicom_series  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    dicom = read_dicom_series(HERE.parent / "examples" / "ct" / "data" / "dicom_series")
    one = CTVolume.from_record(dicom)
    vol = CTVolume.collate([one] * args.batch).to(args.device)
    codec = mmtok.get_plugin_manager().build_codec("ct-volume-fsq").to(args.device).eval()
    codec.fit_statistics(vol)
    cfg = codec.config.preprocessing()

    def pre():
        return preprocess_volume(vol.hu, vol.spacing_mm, cfg)

    def pre_encode():
        with torch.inference_mode():
            return codec.encode(vol)

    with FlopCounterMode(display=False) as counter:
        pre_encode()
    flops = counter.get_total_flops() / args.batch
    sizes = (1024, 2048) if args.device == "cpu" else (4096, 8192)
    timing = Timing(args.device, args.quick)
    t_pre, t_enc, *t_peak = timing.compare(pre, pre_encode, *peak_fns(args.device, sizes))
    peak = peak_result(args.device, sizes, t_peak)
    res = {"device": args.device, "batch": args.batch, "tokens_per_volume": codec.num_tokens,
           "geometry": codec.config.size, "spacing_mm": codec.config.spacing_mm,
           "preprocess_volumes_per_s": args.batch / t_pre["median_s"],
           "encode_volumes_per_s": args.batch / t_enc["median_s"],
           "codec_gflop_per_volume": flops / 1e9, "peak_gflops": peak["peak_flops_per_s"] / 1e9}
    res["utilisation"] = flops * res["encode_volumes_per_s"] / peak["peak_flops_per_s"]
    print(f"| device | batch | preprocess (vol/s) | preprocess + encode (vol/s) | codec GFLOP/vol | "
          f"{peak['dtype']} matmul peak (GFLOP/s) | codec utilisation |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| {args.device} | {args.batch} | {res['preprocess_volumes_per_s']:.2f} | {res['encode_volumes_per_s']:.2f} | "
          f"{res['codec_gflop_per_volume']:.1f} | {res['peak_gflops']:.0f} | {res['utilisation']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
