"""MIT-BIH record 100 -> beats.csv, manifest.json (every beat) and manifest_codec.json (training
minutes only, for `mmtok fit-codec`).

    python examples/ecg/make_manifest.py

One sample is one beat: lead MLII from 0.25 s before to 0.45 s after its annotated R peak (252
samples at 360 Hz), read straight from `data/100.hea` by the plugin's `wfdb` reader (the entry's
`options` give the sample range). Its id `m07-b0421` says minute 7, beat 421: `mmtok train`'s
`val_group` holds out whole minutes by hashing `m07`, and the codec, the CNN baseline and the
baselines use the same minutes (`HELD_OUT`).

- Beats whose window reaches into the neighbouring minute are left out, so no ECG sample is in a
  training and a held-out window at once (`dropped at minute boundaries` below).
- Missing streams, on purpose: every 10th beat (index % 10 == 3) has no beat class (as an
  unannotated beat would), and every 25th (index % 25 == 7) has no waveform (as a lead-off stretch
  would; its class stays in the manifest, so a few samples hold the class alone).
"""

import csv
import io
from pathlib import Path

import numpy as np

import mmtok
from mmtok.io import atomic_write, write_json
from mmtok_plugin_tabular import AAMI_CLASSES, aami_class, beat_windows, read_annotations, read_wfdb_record

HERE = Path(__file__).resolve().parent
RECORD = HERE / "data" / "100"
BEFORE, AFTER = 0.25, 0.45  # seconds around the R peak
VAL_FRACTION, VAL_GROUP = 0.2, r"^(m\d+)-"  # = train.yaml's val_fraction / val_group


def held_out(sample_id: str) -> bool:
    """The split of `mmtok train` (train.yaml): whole minutes, by hash of `mNN`."""
    return mmtok.held_out(sample_id, VAL_FRACTION, VAL_GROUP)


def beats() -> list[dict]:
    """Every beat of record 100 that gets a sample: id, R peak, window start / stop, label, split."""
    rec = read_wfdb_record(RECORD, channels=["MLII"])
    peaks, symbols = read_annotations(RECORD, "atr")
    labelled = [(p, aami_class(s)) for p, s in zip(peaks, symbols) if aami_class(s) is not None]  # '+' is rhythm
    r = np.array([p for p, _ in labelled])
    _, kept, keep = beat_windows(rec.signal[:, 0], r, rec.fs, BEFORE, AFTER)
    lo, hi = round(BEFORE * rec.fs), round(AFTER * rec.fs)
    minute_len = int(60 * rec.fs)
    out = []
    for i, p in zip(keep.tolist(), kept.tolist()):
        minute = p // minute_len
        if (p - lo) // minute_len != minute or (p + hi - 1) // minute_len != minute:
            continue  # the window crosses into the next / previous minute
        sid = f"m{minute:02d}-b{i:04d}"
        out.append({"id": sid, "peak": p, "start": p - lo, "stop": p + hi, "label": labelled[i][1],
                    "index": i, "held_out": held_out(sid)})
    return out, len(labelled), len(kept)


def main() -> None:
    rows, n_beats, n_inside = beats()
    samples, codec_samples, table = [], [], []
    for b in rows:
        wave = {"path": "data/100.hea", "options": {"channels": ["MLII"], "start": b["start"], "stop": b["stop"]}}
        has_wave, has_label = b["index"] % 25 != 7, b["index"] % 10 != 3
        modalities = {}
        if has_wave:
            modalities["ecg_beat"] = wave
        if has_label:
            modalities["beat_class"] = {"table": "beats", "row": b["id"]}
            table.append({"id": b["id"], "label": b["label"]})
        samples.append({"id": b["id"], "modalities": modalities})
        if has_wave and not b["held_out"]:
            codec_samples.append({"id": b["id"], "modalities": {"ecg_beat": wave}})

    buf = io.StringIO()
    writer = csv.DictWriter(buf, ["id", "label"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    atomic_write(HERE / "beats.csv", lambda p: p.write_text(buf.getvalue()))
    tables = {"beats": {"path": "beats.csv", "key": "id"}}
    write_json(HERE / "manifest.json", {"version": 1, "tables": tables, "samples": samples})
    write_json(HERE / "manifest_codec.json", {"version": 1, "samples": codec_samples})

    def count(sel) -> str:
        c = np.bincount([b["label"] for b in sel], minlength=len(AAMI_CLASSES))
        return ", ".join(f"{AAMI_CLASSES[k]} {int(c[k])}" for k in range(len(c)) if c[k])

    train = [b for b in rows if not b["held_out"]]
    test = [b for b in rows if b["held_out"]]
    minutes = sorted({b["id"][:3] for b in test})
    print(f"record 100: {n_beats} annotated beats, {n_beats - n_inside} too close to the record's ends, "
          f"{n_inside - len(rows)} dropped at minute boundaries -> {len(rows)} samples ({count(rows)})")
    print(f"training minutes: {len(train)} beats ({count(train)}); held-out minutes {', '.join(minutes)}: "
          f"{len(test)} beats ({count(test)})")
    print(f"missing on purpose: {sum('beat_class' not in s['modalities'] for s in samples)} without a class, "
          f"{sum('ecg_beat' not in s['modalities'] for s in samples)} without a waveform; "
          f"manifest_codec.json: {len(codec_samples)} training-minute waveforms")


if __name__ == "__main__":
    main()
