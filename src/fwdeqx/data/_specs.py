"""The datasets' specifications: their files with SHA-256 and sizes, how they are
found and read, the download mirrors and known system install directories
(`SPECS`), and the names [`fwdeqx.data.load_dataset`][] accepts."""

import abc
import dataclasses
from pathlib import Path

import numpy as np

from ._cifar import CIFAR10_ARCHIVE, CIFAR10_FOLDER, read_cifar10
from ._download import RemoteFile
from ._splits import read_idx_dataset


Splits = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@dataclasses.dataclass(frozen=True)
class DatasetSpec(abc.ABC):
    """Where a dataset lives: its files as named on the mirrors, the download
    mirrors, and known system install directories; subclasses say how the files are
    found in a directory and read. Replace entries of `SPECS` to change mirrors or
    checksums.

    **Attributes:**

    - `name`: the dataset's name, e.g. `"mnist"`.
    - `files`: the `RemoteFile`s (name, SHA-256, size) downloaded.
    - `mirrors`: base URLs the files are downloaded from, tried in turn.
    - `system_dirs`: directories where a system package installs the files
        (default: none).
    """

    name: str
    files: tuple[RemoteFile, ...]
    mirrors: tuple[str, ...]
    system_dirs: tuple[str, ...] = ()

    def find(self, directory: Path) -> list[Path] | str:
        """The paths `read` takes, found in `directory`, or why not."""
        if not directory.exists():
            return "does not exist"
        if not directory.is_dir():
            return "is not a directory"
        return self._find_in(directory)

    @abc.abstractmethod
    def _find_in(self, directory: Path) -> list[Path] | str:
        """`find` in a directory that exists."""

    @abc.abstractmethod
    def read(self, paths: list[Path]) -> Splits:
        """`(train_images, train_labels, test_images, test_labels)`."""

    @abc.abstractmethod
    def wanted(self) -> str:
        """What a directory must hold, for error messages."""


class IdxSpec(DatasetSpec):
    """An IDX dataset: four files, train images, train labels, test images, test
    labels in that order, each raw or gzipped."""

    def _find_in(self, directory: Path) -> list[Path] | str:
        found, missing = [], []
        for remote in self.files:
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

    def read(self, paths: list[Path]) -> Splits:
        return read_idx_dataset(paths)

    def wanted(self) -> str:
        names = ", ".join(r.name for r in self.files)
        return f"the four files {names} (gzipped or not)"


class Cifar10Spec(DatasetSpec):
    """CIFAR-10's python-format archive, or the folder it extracts to."""

    def _find_in(self, directory: Path) -> list[Path] | str:
        for candidate in (directory / CIFAR10_ARCHIVE, directory / CIFAR10_FOLDER):
            if candidate.exists():
                return [candidate]
        return f"no {CIFAR10_ARCHIVE} or {CIFAR10_FOLDER}/"

    def read(self, paths: list[Path]) -> Splits:
        return read_cifar10(paths[0])

    def wanted(self) -> str:
        return f"{CIFAR10_ARCHIVE} (or the {CIFAR10_FOLDER}/ folder it extracts to)"


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
    "mnist": IdxSpec(
        "mnist",
        _MNIST_FILES,
        (
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
    ),
    "fashion-mnist": IdxSpec(
        "fashion-mnist",
        _FASHION_MNIST_FILES,
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        system_dirs=("/usr/share/datasets/fashion-mnist",),
    ),
    # SHA-256 and size of the official archive, as Keras's cifar10.load_data checks
    # it (its MD5, c58f30108f718f92721af3b95e74349a, is the one on the CIFAR page).
    "cifar10": Cifar10Spec(
        "cifar10",
        (
            RemoteFile(
                CIFAR10_ARCHIVE,
                "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
                170498071,
            ),
        ),
        ("https://www.cs.toronto.edu/~kriz/",),
    ),
}
"""The downloadable datasets by name: files, SHA-256, mirrors, system install
directories. Replace entries to change mirrors or checksums."""
DATASET_NAMES = ("mnist", "fashion-mnist", "mnist-5k", "cifar10")
"""The names accepted by `load_dataset`."""
