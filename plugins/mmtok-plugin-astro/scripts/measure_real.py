"""Measure the plugin on the shipped real cutouts; prints the numbers in the plugin README.

    python plugins/mmtok-plugin-astro/scripts/measure_real.py

1. FITS reader: shapes, dtype and WCS pixel scale of Cut_HSC.fits / Cut_HST.fits.
2. SurveyAligner HSC 0.168 -> Legacy 0.262 arcsec/px on each real HSC cutout: output size,
   worst relative total-flux error over the 5 bands and worst centroid shift; for comparison,
   torch.nn.functional.interpolate ("area" and antialiased "bilinear") onto the same output size,
   rescaled by the ratio of pixel counts. HST 0.03 -> HSC 0.168 as well.
3. hsc-image-fsq (untrained, statistics fitted on the 3 cutouts): token shapes and timings.
"""

import time

import torch
import torch.nn.functional as F

import mmtok
from mmtok_plugin_astro import (HSC_CUTOUTS, HST_FITS, HSCImage, LegacySurveyImage, SurveyAligner,
                                load_hsc_batch, read_cutout, read_fits)


def total_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Worst relative difference of per-band total flux."""
    a, b = out.double().sum((-2, -1)), ref.double().sum((-2, -1))
    return float(((a - b) / b).abs().max())


def centroid(flux: torch.Tensor, scale: float) -> torch.Tensor:
    h, w = flux.shape[-2:]
    f = flux.double()
    yy = (torch.arange(h, dtype=torch.float64) + 0.5 - h / 2) * scale
    xx = (torch.arange(w, dtype=torch.float64) + 0.5 - w / 2) * scale
    t = f.sum((-2, -1))
    return torch.stack([(f.sum(-1) * yy).sum(-1) / t, (f.sum(-2) * xx).sum(-1) / t], -1)


def main() -> None:
    torch.manual_seed(0)
    print("## FITS reader")
    for path in (HSC_CUTOUTS["cut_hsc"], HST_FITS):
        r = read_fits(path)
        print(f"{path.name}: flux {r['flux'].dtype} {r['flux'].shape}, "
              f"pixel_scale_arcsec {float(r['pixel_scale_arcsec']):.6f}")

    print("\n## SurveyAligner HSC 0.168 -> Legacy 0.262 arcsec/px (worst band)")
    print("| cutout | in | out | exact-overlap flux error | centroid shift (arcsec) | "
          "interpolate area | interpolate bilinear+antialias |")
    print("|---|---|---|---:|---:|---:|---:|")
    aligner = SurveyAligner.between(HSCImage, LegacySurveyImage)
    for name in HSC_CUTOUTS:
        x = HSCImage.from_record(read_cutout(name), sample_id=name).flux
        y = aligner(x)
        shift = float((centroid(y, 0.262) - centroid(x, 0.168)).abs().max())
        n_ratio = x.shape[-2] * x.shape[-1] / (y.shape[-2] * y.shape[-1])
        area = F.interpolate(x, size=y.shape[-2:], mode="area") * n_ratio
        bil = F.interpolate(x, size=y.shape[-2:], mode="bilinear", antialias=True,
                            align_corners=False) * n_ratio
        print(f"| {name} | {tuple(x.shape[-2:])} | {tuple(y.shape[-2:])} | {total_error(y, x):.1e} | "
              f"{shift:.3f} | {total_error(area, x):.1e} | {total_error(bil, x):.1e} |")
    hst = read_fits(HST_FITS)
    x = torch.from_numpy(hst["flux"])[None, None]
    y = SurveyAligner(float(hst["pixel_scale_arcsec"]), 0.168)(x)
    print(f"HST 0.03 -> HSC 0.168: {tuple(x.shape[-2:])} -> {tuple(y.shape[-2:])}, "
          f"flux error {total_error(y, x):.1e}")

    print("\n## hsc-image-fsq on the 3 real cutouts (48 x 48 centre crops; untrained codec)")
    codec = mmtok.get_plugin_manager().build_codec("hsc-image-fsq")
    batch = load_hsc_batch()
    codec.fit_statistics(batch)
    print("arcsinh softening per band (nanomaggies):",
          ", ".join(f"{b} {s:.2e}" for b, s in zip(HSCImage.bands, codec.norm.scale.tolist())))
    t0 = time.perf_counter()
    stream = codec.encode(batch)
    t1 = time.perf_counter()
    out = codec.decode(stream)
    t2 = time.perf_counter()
    print(f"flux {tuple(batch.flux.shape)} -> ids {tuple(stream.ids.shape)} (vocab {stream.vocab_size}) "
          f"-> flux {tuple(out.flux.shape)}; encode {1e3 * (t1 - t0):.1f} ms, "
          f"decode {1e3 * (t2 - t1):.1f} ms")


if __name__ == "__main__":
    main()
