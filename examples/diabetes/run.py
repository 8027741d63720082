"""Tokenize the real diabetes study with the pretrained codecs that ship inside
mmtok-plugin-tabular, decode it again and report reconstruction per stream.

    python examples/diabetes/run.py [--registry registry.yaml] [--out runs/diabetes]

Steps: check registry.yaml against the installed plugins -> build each stream's codec from its
pretrained checkpoint (no training) -> encode all 442 patients into a TokenBatch and write it as
safetensors -> decode the 100 held-out patients (never seen when the codecs were fitted) and
print RMSE in the data's units, normalised RMSE and codebook usage per stream.
"""

import argparse
import json
import sys
from pathlib import Path

from safetensors.torch import save_file

import mmtok
from mmtok.io import atomic_write
from mmtok.fit import evaluate_codec
from mmtok_plugin_tabular import load_diabetes

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", type=Path, default=ROOT / "registry.yaml")
    parser.add_argument("--bundle", default="clinic")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "diabetes")
    args = parser.parse_args()

    registry = mmtok.Registry.load(args.registry)
    streams = registry.bundles[args.bundle].streams
    # only this bundle's streams and the bundle itself need to resolve: the registry also declares
    # streams of plugins this job does not use (CT), which need not be installed
    wanted = {f"streams.{k}" for k in streams} | {f"bundles.{args.bundle}"}
    problems = [p for p in registry.check() if ".".join(p.where.split(".")[:2]) in wanted]
    if problems:
        print("\n".join(f"{args.registry}: {p}" for p in problems), file=sys.stderr)
        return 1

    everyone, held_out = load_diabetes("all"), load_diabetes("test")
    by_modality = {m.name: m for m in (everyone.demographics, everyone.vitals, everyone.labs)}
    test_by_modality = {m.name: m for m in (held_out.demographics, held_out.vitals, held_out.labs)}

    tokens, rows = {}, []
    for key in streams:
        codec = registry.codec(key)
        modality = registry.streams[key].modality
        tokens[key] = codec.encode(by_modality[modality])
        report = evaluate_codec(codec, test_by_modality[modality])
        cols = ", ".join(f"{c} {r:.3g}" for c, r in
                         zip(codec.modality.columns, report.rmse_per_channel, strict=True))
        rows.append((key, registry.streams[key].checkpoint, report, cols))
    batch = mmtok.TokenBatch(tokens)

    args.out.mkdir(parents=True, exist_ok=True)
    shard = args.out / "tokens.safetensors"
    tensors = {f"{k}/ids": s.ids.contiguous() for k, s in batch.items()}
    meta = {k: json.dumps({"codec": s.codec, "fingerprint": s.fingerprint, "grid": list(s.grid),
                           "vocab_size": s.vocab_size}) for k, s in batch.items()}
    atomic_write(shard, lambda p: save_file(tensors, str(p), metadata=meta))

    print(f"encoded {batch.batch_size} patients -> {batch} -> {shard}\n")
    print("held-out reconstruction (last 100 patients, not used to fit the codecs):\n")
    print("| stream | pretrained codec | tokens | vocab | nRMSE | perplexity | codes used | RMSE per column (units) |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for key, ckpt, r, cols in rows:
        print(f"| {key} | {ckpt} | {r.num_tokens} | {r.vocab_size} | {r.nrmse:.3f} | "
              f"{r.perplexity:.1f} | {r.codes_used} ({100 * r.usage:.1f}%) | {cols} |")
    print("\nnRMSE = RMSE / std of each column, averaged (0 = exact, 1 = no better than the mean)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
