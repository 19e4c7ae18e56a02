"""CIFAR-10 in its official "python version" format: `cifar-10-python.tar.gz`,
holding `cifar-10-batches-py/data_batch_1` … `data_batch_5` and `test_batch`, each a
pickled dict with `b"data"` (10,000 × 3,072 uint8, every row one image's red, green
and blue 32 × 32 planes) and `b"labels"` (10,000 ints in 0-9).

The batches are pickles, and unpickling can run code: they are read with an
unpickler that builds NumPy arrays, lists, dicts, strings and numbers and nothing
else, so a tampered file fails to load instead of executing anything."""

import codecs
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
from jaxtyping import Int32, UInt8


CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
IMAGE_SHAPE = (3, 32, 32)
NUM_CLASSES = 10


class CifarFormatError(ValueError):
    """A CIFAR-10 file (the archive or one of its batches) is missing, truncated or
    not in the official format; the message names the file and the problem."""


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # NumPy 1.x
        from numpy.core.multiarray import _reconstruct  # pyright: ignore
    return _reconstruct


# What the official batches (written by Python 2's cPickle and an old NumPy) and
# batches pickled by a current NumPy need; nothing else is ever built.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # how Python 3's protocol 2 writes bytes
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def _read_batch(raw: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as error:  # any unpickling failure is a format error
        raise CifarFormatError(f"{name}: not a CIFAR-10 batch ({error})") from None
    if not isinstance(batch, dict) or not {b"data", b"labels"} <= set(batch):
        raise CifarFormatError(f"{name}: no b'data' and b'labels' entries")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise CifarFormatError(
            f"{name}: data must be uint8 (n, 3072), got {data.dtype} {data.shape}"
        )
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise CifarFormatError(
            f"{name}: {len(data)} images but labels of shape {labels.shape}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise CifarFormatError(f"{name}: labels outside 0-{NUM_CLASSES - 1}")
    return data.reshape(len(data), *IMAGE_SHAPE), labels.astype(np.int32)


def _batch_bytes(path: Path) -> dict[str, bytes]:
    """The batches' raw bytes by name, from the archive or an extracted folder."""
    names = (*TRAIN_BATCHES, TEST_BATCH)
    if path.is_dir():
        folder = path / CIFAR10_FOLDER if (path / CIFAR10_FOLDER).is_dir() else path
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise CifarFormatError(f"{folder}: missing {', '.join(missing)}")
        return {n: (folder / n).read_bytes() for n in names}
    try:
        with tarfile.open(path, "r:gz") as archive:
            members = {Path(m.name).name: m for m in archive.getmembers() if m.isfile()}
            missing = [n for n in names if n not in members]
            if missing:
                raise CifarFormatError(f"{path}: archive lacks {', '.join(missing)}")
            return {n: archive.extractfile(members[n]).read() for n in names}  # pyright: ignore
    except (tarfile.TarError, EOFError, OSError) as error:
        raise CifarFormatError(f"{path}: not a readable .tar.gz ({error})") from None


def read_cifar10(
    path: str | Path,
) -> tuple[
    UInt8[np.ndarray, "n_train 3 32 32"],
    Int32[np.ndarray, " n_train"],
    UInt8[np.ndarray, "n_test 3 32 32"],
    Int32[np.ndarray, " n_test"],
]:
    """Read CIFAR-10 from the official python-format archive or its extracted
    folder.

    **Arguments:**

    - `path`: `cifar-10-python.tar.gz`, or a folder holding `cifar-10-batches-py/`
        or the batch files themselves.

    **Returns:**

    `(train_images, train_labels, test_images, test_labels)`: uint8
    `(n, 3, 32, 32)` images (channels first, as stored) and int32 labels, the five
    training batches concatenated in order.

    **Raises:**

    `CifarFormatError` naming the file and what is wrong with it.
    """
    raw = _batch_bytes(Path(path))
    train = [_read_batch(raw[name], name) for name in TRAIN_BATCHES]
    test_images, test_labels = _read_batch(raw[TEST_BATCH], TEST_BATCH)
    train_images = np.concatenate([images for images, _ in train])
    train_labels = np.concatenate([labels for _, labels in train])
    return train_images, train_labels, test_images, test_labels
