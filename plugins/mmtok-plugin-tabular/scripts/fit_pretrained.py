"""Fit the shipped pretrained codecs on the diabetes study and measure them on held-out patients.

    python plugins/mmtok-plugin-tabular/scripts/fit_pretrained.py            # fit, save, report
    python plugins/mmtok-plugin-tabular/scripts/fit_pretrained.py --check    # report only, no writes

Split: the first 342 patients (file order) train, the last 100 are held out. Each codec is
built with seed 0, fitted with `mmtok.fit_codec` (2000 AdamW steps for the FSQ table codecs,
statistics only for the quantile codec), evaluated with `mmtok.fit.evaluate_codec` on the held-out
100 and saved with ``save_pretrained`` to ``src/mmtok_plugin_tabular/data/pretrained/diabetes-<x>/``
with its metrics in ``metrics.json``. Prints a markdown table (the one in README.md).
For reference it also reports ``table-quantile`` (one 64-bin quantile token per column) on the
same columns; that codec is not saved. About 10 s on 2 CPU cores.
"""

import argparse
import json
import time
from pathlib import Path

import torch

import mmtok
from mmtok import evaluate_codec, fit_codec
from mmtok_plugin_tabular import load_diabetes
from mmtok_plugin_tabular.modalities import Table

OUT = Path(__file__).resolve().parents[1] / "src" / "mmtok_plugin_tabular" / "data" / "pretrained"
SEED = 0
STEPS = 2000

#: pretrained directory -> (codec name, field of load_diabetes())
CODECS = {
    "diabetes-demographics-fsq": ("demographics-fsq", "demographics"),
    "diabetes-vitals-quantile": ("vitals-quantile", "vitals"),
    "diabetes-labs-fsq": ("labs-fsq", "labs"),
}


def fmt_row(name: str, columns, report, train_report, tokens: str) -> str:
    rmse = ", ".join(f"{c} {v:.3g}" for c, v in zip(columns, report.rmse_per_channel))
    usage = (f"{report.perplexity:.1f} | {report.codes_used} / {report.vocab_size}"
             if report.vocab_size else "- | -")
    return (f"| {name} | {tokens} | {rmse} | {report.nrmse:.3f} | {train_report.nrmse:.3f} | "
            f"{usage} |")


def as_table(m) -> Table:
    """A fixed-column modality as a generic Table with the same values: (b, c)."""
    return Table(values=m.values, columns=tuple(m.columns))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fit and report, write nothing")
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    manager = mmtok.get_plugin_manager()
    train, test = load_diabetes("train"), load_diabetes("test")
    rows = []
    t0 = time.perf_counter()
    for directory, (codec_name, field) in CODECS.items():
        torch.manual_seed(SEED)  # the initial weights
        codec = manager.build_codec(codec_name)
        tr, te = getattr(train, field), getattr(test, field)
        steps = STEPS if isinstance(codec, mmtok.NeuralCodec) else 0  # quantile codecs fit statistics only
        train_report = fit_codec(codec, tr, steps=steps, seed=SEED, progress=False)
        report = evaluate_codec(codec, te)
        metrics = {
            "codec": codec_name, "pretrained": f"tabular/{directory}",
            "data": "diabetes study (Efron et al. 2004), data/diabetes.csv",
            "split": {"train": f"patients 0-{len(tr) - 1}", "test": f"patients {len(tr)}-{len(tr) + len(te) - 1}"},
            "seed": SEED, "steps": steps,
            "columns": list(tr.columns), "fingerprint": codec.fingerprint(),
            "train": {k: v for k, v in train_report.to_dict().items() if k != "history"},
            "test": {k: v for k, v in report.to_dict().items() if k != "history"},
        }
        if not args.check:
            codec.save_pretrained(OUT / directory)
            (OUT / directory / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
            for path in (OUT / directory).iterdir():  # save_pretrained's temp files are 0600
                path.chmod(0o644)
        rows.append(fmt_row(f"`tabular/{directory}`", tr.columns, report, train_report,
                            f"{codec.num_tokens} x {codec.vocab_size}"))
    for field in ("demographics", "labs"):  # reference: independent quantile tokens per column
        tr, te = as_table(getattr(train, field)), as_table(getattr(test, field))
        codec = manager.build_codec("table-quantile", {"columns": tr.values.shape[1]})
        train_report = fit_codec(codec, tr, steps=0, progress=False)
        report = evaluate_codec(codec, te)
        rows.append(fmt_row(f"reference: `table-quantile` on {field}", tr.columns, report,
                            train_report, f"{codec.num_tokens} x {codec.vocab_size}"))
    print(f"fitted in {time.perf_counter() - t0:.1f} s; "
          f"{'nothing written (--check)' if args.check else f'saved to {OUT}'}\n")
    print("| codec | tokens x vocab | held-out RMSE per column (original units) | held-out nRMSE "
          "| train nRMSE | perplexity | codes used / vocab |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
