"""The core readers agree with numpy and fail with one clear line."""

import numpy as np
import pytest

from mmtok.errors import MmtokError
from mmtok.readers import read_csv, read_npy, read_npz


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
