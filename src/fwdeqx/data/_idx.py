"""Reading and writing IDX files (the format of MNIST and Fashion-MNIST), with every
header field checked: a corrupt or truncated file is an error naming the file and the
problem, never silently cropped."""

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np


# IDX dtype codes (third magic byte). Multi-byte values are big-endian on disk.
_CODE_TO_DTYPE: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_DTYPE_TO_CODE: dict[np.dtype, int] = {
    dtype.newbyteorder("="): code for code, dtype in _CODE_TO_DTYPE.items()
}
_GZIP_MAGIC = b"\x1f\x8b"


class IdxFormatError(ValueError):
    """An IDX file is malformed (bad magic, dtype code, dimensions or size), or
    does not hold what the caller expects. The message names the file."""


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise IdxFormatError(f"{path}: cannot be read: {error}") from error
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise IdxFormatError(
            f"{path}: corrupt or truncated gzip data ({error}); delete the file and "
            "obtain it again"
        ) from error


def read_idx(
    path: str | os.PathLike,
    *,
    dtype: np.dtype | type | None = None,
    ndim: int | None = None,
) -> np.ndarray:
    """Read one IDX file, raw or gzip-compressed (detected from its content, not its
    name).

    **Arguments:**

    - `path`: the file.
    - `dtype`: if given, the element type the file must hold (e.g. `np.uint8`).
    - `ndim`: if given, the number of dimensions the file must declare.

    **Returns:**

    A NumPy array of the declared shape in native byte order. `uint8` data is a
    read-only view of the file's bytes (no copy).

    **Raises:**

    [`fwdeqx.data.IdxFormatError`][] naming the file and the problem: a magic number
    that is not `0x00 0x00 <dtype code> <ndim>`, an unknown dtype code, missing or
    zero dimensions, a data size that does not match the dimensions (truncated or
    trailing bytes), corrupt gzip data, or a dtype/ndim other than the expected one.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise IdxFormatError(
            f"{path}: too short to be an IDX file ({len(data)} bytes, header needs 4)"
        )
    if data[0] != 0 or data[1] != 0:
        raise IdxFormatError(
            f"{path}: bad magic number 0x{data[:4].hex()}: an IDX file starts with two "
            "zero bytes, a dtype code and the number of dimensions"
        )
    code, file_ndim = data[2], data[3]
    if code not in _CODE_TO_DTYPE:
        known = ", ".join(f"0x{c:02x}" for c in _CODE_TO_DTYPE)
        raise IdxFormatError(
            f"{path}: unknown IDX dtype code 0x{code:02x} (known: {known})"
        )
    file_dtype = _CODE_TO_DTYPE[code]
    if file_ndim == 0:
        raise IdxFormatError(f"{path}: declares 0 dimensions")
    header_size = 4 + 4 * file_ndim
    if len(data) < header_size:
        raise IdxFormatError(
            f"{path}: truncated header: {file_ndim} dimensions need {header_size} "
            f"header bytes, the file has {len(data)}"
        )
    shape = struct.unpack(f">{file_ndim}I", data[4:header_size])
    if ndim is not None and file_ndim != ndim:
        raise IdxFormatError(
            f"{path}: has {file_ndim} dimensions {shape}, expected {ndim}"
        )
    if dtype is not None and file_dtype.newbyteorder("=") != np.dtype(dtype):
        raise IdxFormatError(
            f"{path}: holds {file_dtype.newbyteorder('=')} (code 0x{code:02x}), "
            f"expected {np.dtype(dtype)}"
        )
    expected = int(np.prod(shape, dtype=np.int64)) * file_dtype.itemsize
    actual = len(data) - header_size
    if actual < expected:
        raise IdxFormatError(
            f"{path}: truncated: dimensions {shape} of {file_dtype.newbyteorder('=')} "
            f"need {expected} data bytes, the file has {actual}"
        )
    if actual > expected:
        raise IdxFormatError(
            f"{path}: {actual - expected} unexpected trailing bytes after the "
            f"{expected} data bytes of dimensions {shape}"
        )
    array = np.frombuffer(data, dtype=file_dtype, offset=header_size).reshape(shape)
    if file_dtype.itemsize > 1:
        array = array.astype(file_dtype.newbyteorder("="))
    return array


def write_idx(path: str | os.PathLike, array: np.ndarray, *, compress: bool = False):
    """Write `array` as an IDX file (gzip-compressed if `compress`); the inverse of
    [`fwdeqx.data.read_idx`][]. Used to make test fixtures and small datasets.

    **Arguments:**

    - `path`: the file to write.
    - `array`: a NumPy array of dtype uint8, int8, int16, int32, float32 or float64
        with at least one dimension.
    - `compress`: gzip the output.
    """
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in _DTYPE_TO_CODE:
        raise ValueError(f"IDX cannot store dtype {array.dtype}")
    if array.ndim == 0:
        raise ValueError("IDX needs at least one dimension")
    header = bytes([0, 0, _DTYPE_TO_CODE[native], array.ndim])
    header += struct.pack(f">{array.ndim}I", *array.shape)
    body = np.ascontiguousarray(array, dtype=native.newbyteorder(">")).tobytes()
    payload = header + body
    if compress:
        payload = gzip.compress(payload, compresslevel=1)
    Path(path).write_bytes(payload)
