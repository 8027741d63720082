"""The core readers agree with numpy and fail with one clear line."""

from pathlib import Path

import numpy as np
import pytest
import torch

import mmtok
from mmtok.errors import MmtokError
from mmtok.manifest import Manifest
from mmtok.readers import read_csv, read_npy, read_npz

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("array", [
    np.arange(24, dtype=np.float32).reshape(2, 3, 4),
    np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4)),
    np.arange(5, dtype=">i4"),
    np.array(3.5),
    np.zeros((0, 4), np.uint8),
    np.array([True, False]),
])
def test_npy_matches_numpy(tmp_path, array):
    np.save(tmp_path / "a.npy", array)
    for _ in range(2):  # second read uses the cached header
        got = read_npy(tmp_path / "a.npy")["data"]
        want = np.load(tmp_path / "a.npy", allow_pickle=False)
        assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want)
        assert got.flags.f_contiguous == want.flags.f_contiguous


def test_npy_errors(tmp_path):
    np.save(tmp_path / "t.npy", np.zeros((5, 8, 8), np.float32))
    with open(tmp_path / "t.npy", "r+b") as fh:
        fh.truncate(200)
    with pytest.raises(MmtokError, match="truncated"):
        read_npy(tmp_path / "t.npy")
    (tmp_path / "x.npy").write_bytes(b"hello")
    with pytest.raises(MmtokError, match="bad magic"):
        read_npy(tmp_path / "x.npy")
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(MmtokError, match="pickle"):
        read_npy(tmp_path / "o.npy")
    np.savez(tmp_path / "o.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(MmtokError, match="cannot read as .npz"):
        read_npz(tmp_path / "o.npz")


def test_csv(tmp_path):
    (tmp_path / "t.csv").write_text("id,x\na,1.5\nb,2\n")
    cols = read_csv(tmp_path / "t.csv")
    assert cols["id"].tolist() == ["a", "b"] and cols["x"].tolist() == [1.5, 2.0]
    (tmp_path / "bad.csv").write_text("id,x\na,1,2\n")
    with pytest.raises(MmtokError, match="line 2 has 3 values"):
        read_csv(tmp_path / "bad.csv")


def _sample_manifest(root, path):
    import json

    (root / "manifest.json").write_text(json.dumps({"samples": [{"id": "s", "modalities": {"scalars": path}}]}))
    return Manifest.load(root / "manifest.json")


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_big_endian_arrays_are_converted_for_every_reader(tmp_path, suffix):
    """Big-endian data (real corn spectra saved as >f8 / >i4) is valid: it loads with the values of
    the little-endian file; the conversion happens once, for whatever reader read it."""
    with np.load(DATA / "corn_m5_mp5.npz") as d:
        props = d["propvals"][0]  # (4,) float64
    for dtype in (">f8", ">f4"):
        want = props.astype(dtype)
        if suffix == ".npy":
            np.save(tmp_path / f"p{suffix}", want)
        else:
            np.savez(tmp_path / f"p{suffix}", values=want)
        manifest = _sample_manifest(tmp_path, f"p{suffix}")
        assert manifest.validate() == []
        m = manifest.load_modality(manifest.samples[0], "scalars", mmtok.get_plugin_manager())
        assert m.values.dtype == torch.float32 and torch.equal(m.values[0], torch.tensor(want.astype("<f4")))
        record = manifest.record(manifest.samples[0], "scalars", mmtok.get_plugin_manager())
        assert all(v.dtype.isnative for v in record.values())


def _fifo_with_writer(path):
    """A FIFO and a thread ready to write to it, so that code that (wrongly) opens it for
    reading gets an empty file instead of hanging the test. Returns a list that says whether it
    was opened, and the function that releases the writer."""
    import os
    import threading

    os.mkfifo(path)
    opened = []
    writer = threading.Thread(target=lambda: opened.append(open(path, "wb").close()), daemon=True)
    writer.start()

    def release():
        if not opened:
            os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
        writer.join(5)

    return opened, release


def test_a_fifo_or_device_as_data_file_is_refused_without_opening_it(tmp_path):
    """A FIFO named as a data file or as the manifest would block a reader forever: refused by
    its kind, without opening it; so is a device."""
    import os

    opened, release = _fifo_with_writer(tmp_path / "p.npy")
    manifest = _sample_manifest(tmp_path, "p.npy")
    problems = [str(p) for p in manifest.validate()]
    assert not opened  # nobody opened it for reading
    release()
    assert problems == ["sample 's', scalars: not a regular file (a FIFO): p.npy; mmtok reads only regular "
                        "files (reading a FIFO or a device could block forever)"]
    if os.path.exists("/dev/zero"):  # would read forever
        manifest.allow_absolute = True
        with pytest.raises(MmtokError, match=r"not a regular file \(a character device\): /dev/zero"):
            manifest.resolve("/dev/zero", sample="s", key="scalars")
    opened, release = _fifo_with_writer(tmp_path / "m.json")
    try:
        with pytest.raises(MmtokError, match=r"m.json: not a regular file \(a FIFO\)"):
            Manifest.load(tmp_path / "m.json")
        assert not opened
    finally:
        release()


def test_csv_integer_ids_beyond_float64_precision_stay_exact(tmp_path):
    # Gaia DR3 source_ids have 19 digits: as float64 two of them would collide
    path = tmp_path / "gaia.csv"
    path.write_text("source_id,g,big\n5937083312552714752,12.5,1e300\n5937083312552714753,13.0,2\n")
    columns = read_csv(path)
    assert columns["source_id"].dtype == np.int64
    assert columns["source_id"].tolist() == [5937083312552714752, 5937083312552714753]
    assert columns["g"].dtype == np.float64 and columns["big"].dtype == np.float64
    path.write_text("id\n123456789012345678901234\n7\n")  # beyond int64: kept as text, not rounded
    assert read_csv(path)["id"].tolist() == ["123456789012345678901234", "7"]
