"""The IDX datasets' specifications: their four files with SHA-256 and sizes, the
download mirrors and known system install directories (`SPECS`), and the names
[`fwdeqx.data.load_dataset`][] accepts."""

import dataclasses

from ._download import RemoteFile


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Where an IDX dataset lives: its four files (train images, train labels, test
    images, test labels, in that order, as named on the mirrors), the download
    mirrors, and known system install directories. Replace entries of `SPECS` to
    change mirrors or checksums.

    **Attributes:**

    - `name`: the dataset's name, e.g. `"mnist"`.
    - `files`: the four `RemoteFile`s (name, SHA-256, size): train images, train
        labels, test images, test labels, in that order.
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
