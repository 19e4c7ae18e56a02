"""IDX parsing: round trips, and every kind of corruption is an error that names the
file and the problem."""

import gzip
import struct

import numpy as np
import pytest

from fwdeqx import data
from fwdeqx.data._idx import write_idx


def _write_raw(path, payload: bytes, compress: bool = False):
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


def _header(code: int, *dims: int) -> bytes:
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize(
    "dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]
)
def test_round_trip(tmp_path, dtype, compress):
    array = (np.arange(2 * 3 * 4) - 5).astype(dtype).reshape(2, 3, 4)
    path = tmp_path / "x.idx"
    write_idx(path, array, compress=compress)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == compress
    loaded = data.read_idx(path)
    assert loaded.dtype == np.dtype(dtype)
    assert loaded.dtype.isnative
    np.testing.assert_array_equal(loaded, array)


def test_known_bytes(tmp_path):
    """The MNIST label header layout, written by hand: magic 0x00000801, count 3."""
    path = _write_raw(tmp_path / "labels", bytes.fromhex("00000801 00000003 070009"))
    np.testing.assert_array_equal(data.read_idx(path), [7, 0, 9])
    path = _write_raw(tmp_path / "int16", _header(0x0B, 2) + bytes.fromhex("0102fffe"))
    np.testing.assert_array_equal(data.read_idx(path), [258, -2])


def test_uint8_is_read_only_view(tmp_path):
    path = tmp_path / "x.idx"
    write_idx(path, np.zeros((3, 28, 28), np.uint8))
    loaded = data.read_idx(path, dtype=np.uint8, ndim=3)
    assert not loaded.flags.writeable


_CORRUPTIONS = {
    # name: (payload, words expected in the message)
    "too short": (b"\x00\x00", "too short"),
    "bad magic": (b"\x12\x34\x08\x01" + struct.pack(">I", 1) + b"\x00", "bad magic"),
    "bad dtype code": (_header(0x07, 1) + b"\x00", "unknown IDX dtype code 0x07"),
    "zero dims": (bytes([0, 0, 8, 0]), "0 dimensions"),
    "truncated header": (
        bytes([0, 0, 8, 3]) + struct.pack(">I", 2),
        "truncated header",
    ),
    "truncated data": (_header(0x08, 2, 28, 28) + bytes(28 * 28), "truncated"),
    "trailing bytes": (_header(0x08, 1, 2, 2) + bytes(7), "3 unexpected trailing"),
    "truncated int32": (_header(0x0C, 2) + bytes(7), "need 8 data bytes"),
}


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("kind", sorted(_CORRUPTIONS))
def test_corrupt_file_names_file_and_problem(tmp_path, kind, compress):
    payload, words = _CORRUPTIONS[kind]
    path = _write_raw(tmp_path / "corrupt-idx3-ubyte", payload, compress)
    with pytest.raises(data.IdxFormatError) as info:
        data.read_idx(path)
    assert str(path) in str(info.value)
    assert words in str(info.value)


def test_truncated_gzip(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    write_idx(path, np.ones((10, 28, 28), np.uint8), compress=True)
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(data.IdxFormatError, match="corrupt or truncated gzip") as info:
        data.read_idx(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(data.IdxFormatError, match="cannot be read"):
        data.read_idx(tmp_path / "nope")


def test_expected_dtype_and_ndim(tmp_path):
    path = tmp_path / "x"
    write_idx(path, np.zeros((4, 5), np.int32))
    with pytest.raises(
        data.IdxFormatError, match=r"has 2 dimensions \(4, 5\), expected 3"
    ):
        data.read_idx(path, ndim=3)
    with pytest.raises(data.IdxFormatError, match=r"holds int32.*expected uint8"):
        data.read_idx(path, dtype=np.uint8)


def test_write_rejects_unsupported(tmp_path):
    with pytest.raises(ValueError, match="cannot store"):
        write_idx(tmp_path / "x", np.zeros(3, np.uint16))
    with pytest.raises(ValueError, match="at least one dimension"):
        write_idx(tmp_path / "x", np.zeros((), np.uint8))


def _write_split(directory, n_train=12, n_test=6, *, shape=(28, 28), compress=True):
    rng = np.random.default_rng(0)
    names = [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ]
    arrays = [
        rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        rng.integers(0, 10, n_train, dtype=np.uint8),
        rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        rng.integers(0, 10, n_test, dtype=np.uint8),
    ]
    suffix = ".gz" if compress else ""
    paths = [directory / (name + suffix) for name in names]
    for path, array in zip(paths, arrays, strict=True):
        write_idx(path, array, compress=compress)
    return paths, arrays


def test_read_idx_dataset(tmp_path):
    paths, arrays = _write_split(tmp_path)
    loaded = data.read_idx_dataset(paths)
    for got, want in zip(loaded, arrays, strict=True):
        np.testing.assert_array_equal(got, want)
    assert [a.dtype for a in loaded] == [np.uint8, np.int32, np.uint8, np.int32]


def test_image_label_count_mismatch_names_both_files(tmp_path):
    paths, _ = _write_split(tmp_path)
    write_idx(paths[1], np.zeros(11, np.uint8), compress=True)
    with pytest.raises(data.IdxFormatError, match="count mismatch") as info:
        data.read_idx_dataset(paths)
    assert str(paths[0]) in str(info.value) and str(paths[1]) in str(info.value)
    assert "12 images" in str(info.value) and "11 labels" in str(info.value)


def test_wrong_image_size(tmp_path):
    paths, _ = _write_split(tmp_path, shape=(32, 32))
    with pytest.raises(data.IdxFormatError, match="32x32, expected 28x28"):
        data.read_idx_dataset(paths)


def test_wrong_dims_for_labels(tmp_path):
    paths, _ = _write_split(tmp_path)
    write_idx(paths[3], np.zeros((6, 1), np.uint8), compress=True)
    with pytest.raises(data.IdxFormatError, match="expected 1") as info:
        data.read_idx_dataset(paths)
    assert str(paths[3]) in str(info.value)


def test_label_out_of_range(tmp_path):
    paths, _ = _write_split(tmp_path)
    write_idx(paths[3], np.full(6, 10, np.uint8), compress=True)
    with pytest.raises(data.IdxFormatError, match="labels outside 0-9"):
        data.read_idx_dataset(paths)
