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


def test_read_npy_rows_reads_each_file_as_read_npy_and_flags_the_others(tmp_path):
    """`read_npy_rows` (the batched reader of `mmtok encode`) puts every file of the first readable
    file's header into its row, exactly as `read_npy` reads it; a file of another shape, dtype,
    order or size, a truncated or foreign file, a symlink (O_NOFOLLOW), a missing file or no path
    is flagged, never guessed."""
    import os

    rng = np.random.default_rng(0)
    want = {}
    for name in ("a0", "a1", "a2", "a3"):
        want[name] = rng.standard_normal((2, 3)).astype(np.float32)
        np.save(tmp_path / f"{name}.npy", want[name])
    np.save(tmp_path / "shape.npy", rng.standard_normal((3, 2)).astype(np.float32))  # same bytes, other header
    np.save(tmp_path / "dtype.npy", rng.standard_normal((2, 3)))
    np.save(tmp_path / "fortran.npy", np.asfortranarray(rng.standard_normal((2, 3)).astype(np.float32)))
    (tmp_path / "trunc.npy").write_bytes((tmp_path / "a0.npy").read_bytes()[:-4])
    (tmp_path / "long.npy").write_bytes((tmp_path / "a0.npy").read_bytes() + b"\0" * 4)
    (tmp_path / "text.npy").write_bytes(b"not numpy at all" * 8)
    (tmp_path / "link.npy").symlink_to(tmp_path / "a1.npy")
    names = ["trunc", "a0", "shape", "a1", "dtype", "fortran", None, "missing", "long", "text", "link", "a2", "a3"]
    paths = [None if n is None else str(tmp_path / f"{n}.npy") for n in names]
    block, ok = mmtok.readers.read_npy_rows(paths, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    expect_ok = [n is not None and n.startswith("a") for n in names]
    if not hasattr(os, "O_NOFOLLOW"):
        expect_ok[names.index("link")] = True
    assert ok == expect_ok
    assert block.shape == (len(names), 2, 3) and block.dtype == np.float32 and block.flags.writeable
    for j, n in enumerate(names):
        if ok[j] and n != "link":
            assert np.array_equal(block[j], want[n]) and np.array_equal(block[j], read_npy(paths[j])["data"])
    assert mmtok.readers.read_npy_rows([None, str(tmp_path / "missing.npy")]) == (None, [False, False])


def test_encode_chunk_reads_what_one_sample_at_a_time_reads(tmp_path):
    """`mmtok encode` reads plain .npy files a chunk at a time (`_SampleReader.chunk`, one array per
    modality); every sample gets the records and problems that reading it alone gives, whatever
    the chunk mixes: another shape, big-endian data, a renamed field, a symlink inside the folder,
    a missing file, a file outside the folder, a FIFO, a table row."""
    import json
    import os

    from mmtok.encode import _SampleReader

    rng = np.random.default_rng(1)
    data = tmp_path / "data"
    data.mkdir()
    for i in range(6):
        np.save(data / f"x{i}.npy", rng.standard_normal((1, 4, 4)).astype(np.float32))
    np.save(data / "wide.npy", rng.standard_normal((1, 4, 6)).astype(np.float32))
    np.save(data / "big.npy", rng.standard_normal((1, 4, 4)).astype(">f4"))
    np.save(tmp_path / "outside.npy", rng.standard_normal((1, 4, 4)).astype(np.float32))
    (data / "inlink.npy").symlink_to(data / "x1.npy")
    os.mkfifo(data / "pipe.npy")
    (data / "t.csv").write_text("id,v\nr0,1.5\nr1,2.5\n")
    image = {f"s{i}": f"data/x{i}.npy" for i in range(6)}
    image.update({"wide": "data/wide.npy", "big": "data/big.npy", "link": "data/inlink.npy",
                  "missing": "data/nope.npy", "escape": "data/../../outside.npy", "pipe": "data/pipe.npy",
                  "renamed": {"path": "data/x2.npy", "fields": {"flux": "data"}}})
    samples = [{"id": sid, "modalities": {"image": entry}} for sid, entry in image.items()]
    samples.insert(3, {"id": "row", "modalities": {"scalars": {"table": "t", "row": "r1"}}})
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"tables": {"t": {"path": "data/t.csv", "key": "id"}}, "samples": samples}))
    manager = mmtok.get_plugin_manager()

    def reader():
        manifest = Manifest.load(tmp_path / "manifest.json")
        return _SampleReader(manifest, [(0, i, s) for i, s in enumerate(manifest.samples)],
                             {"image", "scalars"}, manager)

    alone = [reader()[i] for i in range(len(samples))]
    chunked = reader()
    together = chunked.chunk(0, len(samples))
    assert [(t.id, t.shard, t.sample) for t in together] == [(a.id, a.shard, a.sample) for a in alone]
    for t, a in zip(together, alone):
        sid, records, problems, want_records, want_problems = t.id, t.records, t.problems, a.records, a.problems
        assert problems == want_problems, sid
        assert records.keys() == want_records.keys(), sid
        for key, record in records.items():
            assert record.keys() == want_records[key].keys(), sid
            for field, value in record.items():
                want = want_records[key][field]
                assert value.dtype == want.dtype and value.dtype.isnative and np.array_equal(value, want), sid
    rows = [t.records["image"]["data"] for t in together if t.id in ("s0", "s4", "s5")]
    assert all(r.base is not None and r.base is rows[0].base for r in rows)  # read as one block
    reasons = {t.id: t.problems[0][1] for t in together if t.problems}
    assert set(reasons) == {"missing", "escape", "pipe"}
    assert "FIFO" in reasons["pipe"] and "escapes" in reasons["escape"] and "not found" in reasons["missing"]

    # consecutive rows of the block make their batch without a copy: what from_records gives
    from mmtok.encode import _Builder
    from mmtok.modalities import Image

    members = [(pos, t) for pos, t in enumerate(together) if t.id in ("s0", "s1", "s2")]
    batch, bad = _Builder(chunked.manifest, manager).batch("image", members)
    want = Image.from_records([p.records["image"] for _, p in members])
    assert bad == {} and torch.equal(batch.flux, want.flux) and batch.flux.shape == (3, 1, 4, 4)
    assert batch.flux.data_ptr() == members[0][1].rows["image"][0].ctypes.data  # the block itself


def test_read_npy_rows_reuses_a_buffer_only_once_nothing_refers_to_it(tmp_path, monkeypatch):
    """`read_npy_rows` reads into pooled buffers (already-mapped memory), but never into one that an
    array, a view or a tensor still uses: the data a caller holds is never overwritten."""
    monkeypatch.setattr(mmtok.readers, "_ROW_BUFFERS", [])  # whatever earlier tests left pooled
    rng = np.random.default_rng(2)
    paths = []
    for i in range(4):
        np.save(tmp_path / f"f{i}.npy", rng.standard_normal((3, 7)))  # a shape no other test uses
        paths.append(str(tmp_path / f"f{i}.npy"))
    block1, ok = mmtok.readers.read_npy_rows(paths)
    assert all(ok)
    first = block1.ctypes.data
    held = torch.from_numpy(block1[1:3])  # a tensor on two rows keeps the buffer in use
    want = held.clone()
    del block1
    block2, _ = mmtok.readers.read_npy_rows(paths[::-1])
    assert block2.ctypes.data != first and torch.equal(held, want)
    del held
    block3, _ = mmtok.readers.read_npy_rows(paths)
    assert block3.ctypes.data == first  # free again: reused
    assert np.array_equal(block3[0], np.load(paths[0])) and np.array_equal(block2[0], np.load(paths[3]))
    # large buffers are never pooled: the pool stays small whatever the files
    np.save(tmp_path / "big.npy", np.zeros(mmtok.readers._POOLED_BYTES // 8 + 1))
    before = list(mmtok.readers._ROW_BUFFERS)
    big, ok = mmtok.readers.read_npy_rows([str(tmp_path / "big.npy")])
    assert ok == [True] and big.shape == (1, mmtok.readers._POOLED_BYTES // 8 + 1)
    assert [id(b) for b in mmtok.readers._ROW_BUFFERS] == [id(b) for b in before] and all(b.nbytes <= mmtok.readers._POOLED_BYTES for b in before)
