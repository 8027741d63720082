"""ECG: the WFDB reader against a plain-numpy decoding of MIT-BIH record 100, its one-line errors,
beat / sliding-window segmentation on hand-computed cases, and a small fit -> encode round trip of
the ecg-beat-fsq codec on real beats (held-out later minutes)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import mmtok
from mmtok.fit import evaluate_codec, fit_codec
from mmtok.manifest import Manifest
from mmtok_plugin_tabular import (AAMI_CLASSES, EcgBeat, SegmentationError, WfdbError, aami_class, beat_windows,
                                  read_annotations, read_wfdb, read_wfdb_record, sliding_windows)

RECORD_DIR = Path(__file__).resolve().parents[3] / "docs" / "tutorial_data" / "mitbih"
RECORD = RECORD_DIR / "100"


def numpy_record_100() -> np.ndarray:
    """(650000, 2) mV: format 212 decoded with numpy only (shared/data/README.md, section 9)."""
    b = np.fromfile(RECORD.with_suffix(".dat"), np.uint8).reshape(-1, 3).astype(np.int16)
    s0 = b[:, 0] | ((b[:, 1] & 0x0F) << 8)
    s1 = b[:, 2] | ((b[:, 1] & 0xF0) << 4)
    adc = np.stack([s0, s1], 1)
    adc[adc > 2047] -= 4096
    return (adc - 1024) / 200.0


def numpy_annotations_100() -> tuple[np.ndarray, np.ndarray]:
    """Sample positions and codes of 100.atr decoded with numpy only (same README)."""
    w = np.fromfile(RECORD.with_suffix(".atr"), "<u2")
    t, k, pos, code = 0, 0, [], []
    while k < len(w):
        a, i = int(w[k]) >> 10, int(w[k]) & 0x3FF
        if a == 0 and i == 0:
            break
        if a == 59:
            t += (int(w[k + 1]) << 16) | int(w[k + 2])
            k += 3
            continue
        if a == 63:
            k += 1 + (i + 1) // 2
            continue
        if a in (60, 61, 62):
            k += 1
            continue
        t += i
        pos.append(t)
        code.append(a)
        k += 1
    return np.array(pos), np.array(code)


# ---------------------------------------------------------------------------------- reader
def test_reader_matches_plain_numpy_decoding():
    ref = numpy_record_100()
    rec = read_wfdb_record(RECORD)
    assert rec.names == ("MLII", "V5") and rec.fs == 360.0 and rec.units == ("mV", "mV")
    assert rec.signal.shape == (650000, 2) and rec.signal.dtype == np.float32
    np.testing.assert_array_equal(rec.signal, ref.astype(np.float32))
    # the manifest reader: a slice of one channel, channels first
    out = read_wfdb(RECORD.with_suffix(".hea"), channels=["V5"], start=1000, stop=1252)
    assert out["sample_rate"] == 360.0
    np.testing.assert_array_equal(out["values"], ref[1000:1252, 1][None].astype(np.float32))


def test_annotations_match_plain_numpy_decoding():
    samples, symbols = read_annotations(RECORD)
    pos, code = numpy_annotations_100()
    np.testing.assert_array_equal(samples, pos)
    symbol_of = {1: "N", 5: "V", 8: "A", 28: "+"}
    assert symbols == [symbol_of[c] for c in code]
    counts = {s: symbols.count(s) for s in set(symbols)}
    assert counts == {"N": 2239, "A": 33, "V": 1, "+": 1}
    assert [aami_class(s) for s in "NAV+"] == [0, 1, 2, None] and AAMI_CLASSES[1] == "S"


def _broken_copy(tmp_path: Path, name: str, edit=lambda h: h, data: bytes | None = None, write_dat=True) -> Path:
    """Record ``name`` in tmp_path: the real 100.hea edited by ``edit``, and a data file."""
    header = (RECORD_DIR / "100.hea").read_text()
    header = header.replace("100 2 360", f"{name} 2 360").replace("100.dat", f"{name}.dat")
    (tmp_path / f"{name}.hea").write_text(edit(header))
    if write_dat:
        (tmp_path / f"{name}.dat").write_bytes(data if data is not None else (RECORD_DIR / "100.dat").read_bytes())
    return tmp_path / f"{name}.hea"


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and isinstance(err.value, mmtok.MmtokError)
    return msg


def test_missing_dat_is_one_line(tmp_path):
    hea = _broken_copy(tmp_path, "nodat", write_dat=False)
    with pytest.raises(WfdbError) as err:
        read_wfdb(hea)
    msg = _one_line(err)
    assert "record nodat" in msg and "data file nodat.dat" in msg and "missing" in msg


def test_sample_count_disagreeing_with_dat_size(tmp_path):
    hea = _broken_copy(tmp_path, "short", data=(RECORD_DIR / "100.dat").read_bytes()[:30000])
    with pytest.raises(WfdbError) as err:
        read_wfdb(hea)
    msg = _one_line(err)
    assert "record short" in msg and "650000 samples" in msg and "1950000 bytes" in msg and "found 30000 bytes" in msg
    # too long is refused too (one extra frame of 3 bytes)
    hea = _broken_copy(tmp_path, "long", data=(RECORD_DIR / "100.dat").read_bytes() + b"\0\0\0")
    with pytest.raises(WfdbError, match="found 1950003 bytes"):
        read_wfdb(hea)


def test_unknown_storage_format(tmp_path):
    hea = _broken_copy(tmp_path, "fmt", edit=lambda h: h.replace(" 212 ", " 999 "))
    with pytest.raises(WfdbError) as err:
        read_wfdb(hea)
    msg = _one_line(err)
    assert "record fmt" in msg and "storage format '999'" in msg and "212" in msg and "'MLII'" in msg


def test_bad_options_and_manifest_error(tmp_path):
    with pytest.raises(WfdbError, match=r"no channel\(s\) \['II'\]; its channels are \['MLII', 'V5'\]"):
        read_wfdb(RECORD.with_suffix(".hea"), channels=["II"])
    with pytest.raises(WfdbError, match="start=10, stop=700000 is outside"):
        read_wfdb(RECORD.with_suffix(".hea"), start=10, stop=700000)
    # through a manifest the problem is the sample's, one line naming the file
    _broken_copy(tmp_path, "fmt", edit=lambda h: h.replace(" 212 ", " 999 "))
    (tmp_path / "manifest.json").write_text(json.dumps({"version": 1, "samples": [
        {"id": "b0", "modalities": {"ecg_beat": {"path": "fmt.hea", "options": {"channels": ["MLII"]}}}}]}))
    problems = Manifest.load(tmp_path / "manifest.json").validate()
    assert len(problems) == 1 and "b0" in str(problems[0]) and "storage format '999'" in str(problems[0])


# ------------------------------------------------------------------------------ segmentation
def test_beat_windows_hand_computed():
    signal = np.arange(20.0)
    windows, kept, keep = beat_windows(signal, np.array([1, 5, 10, 18]), fs=10, before=0.2, after=0.3)
    # 2 samples before, 3 after: peak 1 starts before 0, peak 18 ends past 20
    np.testing.assert_array_equal(kept, [5, 10])
    np.testing.assert_array_equal(keep, [1, 2])
    np.testing.assert_array_equal(windows, [[[3, 4, 5, 6, 7]], [[8, 9, 10, 11, 12]]])
    two = np.stack([signal, -signal])
    w2, _, _ = beat_windows(two, np.array([5]), fs=10, before=0.2, after=0.3)
    assert w2.shape == (1, 2, 5) and w2[0, 1].tolist() == [-3, -4, -5, -6, -7]
    with pytest.raises(SegmentationError, match="expected .t,. or .c, t., found shape"):
        beat_windows(np.zeros((1, 2, 3)), np.array([1]), fs=10)


def test_beat_windows_on_record_100_match_readme():
    rec = read_wfdb_record(RECORD)
    samples, symbols = read_annotations(RECORD)
    beats = np.array([aami_class(s) is not None for s in symbols])
    windows, kept, _ = beat_windows(rec.signal.T, samples[beats], rec.fs)
    assert windows.shape == (2271, 2, 252)  # 0.25 s + 0.45 s at 360 Hz; first and last beat dropped
    ref = numpy_record_100()
    p = int(kept[100])
    np.testing.assert_array_equal(windows[100], ref[p - 90:p + 162].T.astype(np.float32))


def test_sliding_windows_hand_computed():
    windows, starts = sliding_windows(np.arange(10), window=4, hop=3)
    np.testing.assert_array_equal(starts, [0, 3, 6])
    np.testing.assert_array_equal(windows[:, 0], [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]])
    windows, starts = sliding_windows(np.arange(11), window=4, hop=4)  # no overlap, partial tail dropped
    np.testing.assert_array_equal(starts, [0, 4])
    assert sliding_windows(np.arange(3), window=4, hop=1)[0].shape == (0, 1, 4)
    with pytest.raises(SegmentationError, match="hop >= 1"):
        sliding_windows(np.arange(10), window=4, hop=0)


# -------------------------------------------------------------------------- codec round trip
def test_fit_encode_round_trip_on_real_beats(tmp_path):
    """ecg-beat-fsq (narrowed) on beats of minutes 0-3, scored on minute 10: fitting must cut
    the held-out error of the untrained codec by more than half."""
    torch.manual_seed(0)
    rec = read_wfdb_record(RECORD, channels=["MLII"])
    samples, symbols = read_annotations(RECORD)
    beats = samples[[aami_class(s) is not None for s in symbols]]
    windows, kept, _ = beat_windows(rec.signal[:, 0], beats, rec.fs)
    minute = kept // int(60 * rec.fs)
    train = EcgBeat(values=torch.from_numpy(windows[minute < 2][:160]), sample_rate=360.0)
    test = EcgBeat(values=torch.from_numpy(windows[minute == 10][:40]), sample_rate=360.0)
    codec = mmtok.get_plugin_manager().build_codec("ecg-beat-fsq", {"hidden": 16, "blocks": 1})
    codec.fit_statistics(train)
    codec.eval()
    untrained = evaluate_codec(codec, test).nrmse
    fit_codec(codec, train, steps=120, batch_size=32, lr=5e-3, seed=0, progress=False)
    report = evaluate_codec(codec, test)
    assert report.nrmse < 0.5 * untrained and report.nrmse < 0.45, (untrained, report.nrmse)
    assert report.num_tokens == 16 and report.vocab_size == 1000
    # saved and reloaded, the codec gives the same tokens for a beat read through a manifest entry
    codec.save_pretrained(tmp_path / "codec")
    data = tmp_path / "data"
    data.mkdir()
    for suffix in (".hea", ".dat"):
        shutil.copy(RECORD.with_suffix(suffix), data / f"100{suffix}")
    p = int(kept[minute == 10][0])
    (tmp_path / "manifest.json").write_text(json.dumps({"version": 1, "samples": [{"id": "m10-b0", "modalities": {
        "ecg_beat": {"path": "data/100.hea", "options": {"channels": ["MLII"], "start": p - 90, "stop": p + 162}}}}]}))
    manager = mmtok.get_plugin_manager()
    manifest = Manifest.load(tmp_path / "manifest.json")
    beat = manifest.load_modality(manifest.samples[0], "ecg_beat", manager)
    assert type(beat) is EcgBeat and beat.values.shape == (1, 1, 252) and beat.sample_rate == 360.0
    reloaded = manager.load_codec(tmp_path / "codec")
    assert torch.equal(reloaded.encode(beat).ids, codec.encode(test[:1]).ids)
