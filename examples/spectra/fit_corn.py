"""Fit the generic `SpectrumCodec` on real NIR corn spectra with each quantizer family and
report held-out reconstruction and codebook usage.

    python examples/spectra/fit_corn.py [--steps 300]

Data: tests/data/corn_m5_mp5.npz (Eigenvector/Cargill corn, instrument m5, 80 x 700 channels;
see tests/data/README.md). Samples 0-59 train, 60-79 are held out.
"""

import argparse
from pathlib import Path

import numpy as np
import torch

from mmtok.codecs import SpectrumCodec
from mmtok.fit import evaluate_codec, fit_codec
from mmtok.modalities import Spectrum

DATA = Path(__file__).resolve().parents[2] / "tests" / "data" / "corn_m5_mp5.npz"
QUANTIZERS = {
    "FSQ [8,5,5,5]": {"kind": "fsq", "levels": [8, 5, 5, 5]},
    "VQ 256": {"kind": "vq", "codebook_size": 256},
    "LFQ 256": {"kind": "lfq", "codebook_size": 256},
    "residual VQ 2x128": {"kind": "rvq", "num_quantizers": 2, "codebook_size": 128},
    "continuous": {"kind": "continuous"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    with np.load(DATA, allow_pickle=False) as d:
        x = torch.tensor(d["m5spec"]).unsqueeze(1)  # (80, 1, 700)
    train, test = Spectrum(values=x[:60]), Spectrum(values=x[60:])
    print(f"| quantizer | tokens | vocab | untrained nRMSE | held-out nRMSE after {args.steps} steps "
          "| perplexity | codes used |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, quantizer in QUANTIZERS.items():
        torch.manual_seed(0)
        codec = SpectrumCodec({"modality": "spectrum", "channels": 1, "size": [700], "patch": [20],
                               "quantizer": quantizer}, modality=Spectrum)
        codec.fit_statistics(train)
        before = evaluate_codec(codec, test)
        r = fit_codec(codec, train, val=test, steps=args.steps, batch_size=32, progress=False)
        usage = f"{r.perplexity:.1f} | {r.codes_used} ({100 * r.usage:.1f}%)" if r.vocab_size else "– | –"
        print(f"| {label} | {r.num_tokens} | {r.vocab_size or 'continuous'} | {before.nrmse:.3f} | "
              f"{r.nrmse:.3f} | {usage} |")


if __name__ == "__main__":
    main()
