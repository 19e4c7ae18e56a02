"""CIFAR-10 reading, on small files written in the official python format (the
real archive cannot be downloaded here)."""

import dataclasses
import hashlib
import http.server
import os
import pickle
import tarfile
import threading

import numpy as np
import pytest

from fwdeqx import data
from fwdeqx.data._cifar import (
    CIFAR10_ARCHIVE,
    CIFAR10_FOLDER,
    TEST_BATCH,
    TRAIN_BATCHES,
    CifarFormatError,
    read_cifar10,
)
from fwdeqx.data._download import RemoteFile
from fwdeqx.data._specs import SPECS


_PER_BATCH = 4


def _batch(rng, offset):
    data = rng.integers(0, 256, (_PER_BATCH, 3072), dtype=np.uint8)
    labels = [(offset + i) % 10 for i in range(_PER_BATCH)]
    return {b"batch_label": b"x", b"labels": labels, b"data": data, b"filenames": []}


def _write_folder(root, rng):
    folder = root / CIFAR10_FOLDER
    folder.mkdir(parents=True)
    batches = {}
    for i, name in enumerate((*TRAIN_BATCHES, TEST_BATCH)):
        batches[name] = _batch(rng, i)
        (folder / name).write_bytes(pickle.dumps(batches[name], protocol=2))
    return folder, batches


def _write_archive(path, folder, names=(*TRAIN_BATCHES, TEST_BATCH)):
    with tarfile.open(path, "w:gz") as archive:
        for name in names:
            archive.add(folder / name, arcname=f"{CIFAR10_FOLDER}/{name}")
    return path


@pytest.fixture
def cifar(tmp_path):
    return _write_folder(tmp_path / "extracted", np.random.default_rng(0))


def test_reads_archive_and_folder_alike(cifar, tmp_path):
    folder, batches = cifar
    archive = _write_archive(tmp_path / "cifar-10-python.tar.gz", folder)
    from_archive = read_cifar10(archive)
    for other in (folder, folder.parent):
        for a, b in zip(from_archive, read_cifar10(other), strict=True):
            np.testing.assert_array_equal(a, b)
    train_images, train_labels, test_images, test_labels = from_archive
    assert train_images.shape == (5 * _PER_BATCH, 3, 32, 32)
    assert train_images.dtype == np.uint8 and train_labels.dtype == np.int32
    assert test_images.shape == (_PER_BATCH, 3, 32, 32)
    # Rows are red, green, blue planes of 32x32, in row-major order.
    first = batches["data_batch_1"][b"data"][0]
    np.testing.assert_array_equal(train_images[0, 1, 2, 5], first[1024 + 2 * 32 + 5])
    last = batches["data_batch_5"][b"data"][-1]
    np.testing.assert_array_equal(train_images[-1].reshape(-1), last)
    np.testing.assert_array_equal(test_labels, batches[TEST_BATCH][b"labels"])


def test_missing_batch_is_named(cifar, tmp_path):
    folder, _ = cifar
    archive = _write_archive(tmp_path / "a.tar.gz", folder, names=TRAIN_BATCHES)
    with pytest.raises(CifarFormatError, match="lacks test_batch"):
        read_cifar10(archive)
    os.remove(folder / "data_batch_3")
    with pytest.raises(CifarFormatError, match="missing data_batch_3"):
        read_cifar10(folder)


def test_truncated_archive_is_refused(cifar, tmp_path):
    folder, _ = cifar
    archive = _write_archive(tmp_path / "a.tar.gz", folder)
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(CifarFormatError, match=r"a\.tar\.gz"):
        read_cifar10(archive)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize(
    "content, match",
    [
        ({b"data": _Exploit(), b"labels": []}, "refusing to load"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "outside"),
        ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, "uint8"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "labels of"),
        ({b"labels": [0]}, "b'data'"),
    ],
)
def test_bad_batches_are_refused(cifar, content, match):
    folder, _ = cifar
    (folder / "data_batch_2").write_bytes(pickle.dumps(content, protocol=2))
    with pytest.raises(CifarFormatError, match=match) as error:
        read_cifar10(folder)
    assert "data_batch_2" in str(error.value)


def _serve(body: bytes):
    """A local HTTP server answering every GET with `body`."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("FWDEQX_DATA_DIR", raising=False)
    return tmp_path


def test_load_dataset_from_data_dir_and_env(cifar, isolated, monkeypatch):
    folder, _ = cifar
    (isolated / "dir").mkdir()
    archive = _write_archive(isolated / "dir" / CIFAR10_ARCHIVE, folder)
    ds = data.load_dataset("cifar10", data_dir=archive.parent)
    assert ds.name == "cifar10" and ds.train_images.shape == (20, 3, 32, 32)
    assert ds.val_images.shape == (4, 3, 32, 32) and "test" in ds.validation
    monkeypatch.setenv("FWDEQX_DATA_DIR", str(folder.parent))
    from_env = data.load_dataset("cifar10", validation=5)
    assert from_env.source.endswith("($FWDEQX_DATA_DIR)")
    assert len(from_env.train_labels) == 15 and len(from_env.val_labels) == 5
    assert from_env.fingerprint != ds.fingerprint


def test_load_dataset_downloads_and_verifies(cifar, isolated, monkeypatch):
    folder, _ = cifar
    body = _write_archive(isolated / "served.tar.gz", folder).read_bytes()
    httpd = _serve(body)
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/"
        digest = hashlib.sha256(body).hexdigest()
        good = RemoteFile(CIFAR10_ARCHIVE, digest, len(body))
        spec = dataclasses.replace(SPECS["cifar10"], files=(good,), mirrors=(url,))
        monkeypatch.setitem(SPECS, "cifar10", spec)
        ds = data.load_dataset("cifar10", progress=False)
        assert ds.source.endswith("(downloaded)")
        assert ds.train_images.shape == (20, 3, 32, 32)
        # A wrong checksum is never accepted: nothing found, no fallback.
        bad = RemoteFile(CIFAR10_ARCHIVE, "0" * 64, len(body))
        spec = dataclasses.replace(spec, files=(bad,))
        monkeypatch.setitem(SPECS, "cifar10", spec)
        monkeypatch.setenv("XDG_CACHE_HOME", str(isolated / "other"))
        with pytest.raises(
            data.DatasetNotFoundError, match=r"cifar-10-python\.tar\.gz"
        ):
            data.load_dataset("cifar10", progress=False)
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_empty_data_dir_names_what_is_wanted(isolated):
    (isolated / "empty").mkdir()
    with pytest.raises(data.DatasetNotFoundError, match="cifar-10-batches-py"):
        data.load_dataset("cifar10", data_dir=isolated / "empty")


def test_pipeline_keeps_colour_channels(cifar, isolated):
    folder, batches = cifar
    ds = data.load_dataset("cifar10", data_dir=folder.parent)
    x, _ = next(
        iter(
            data.batches(
                ds.train_images,
                ds.train_labels,
                batch_size=4,
                seed=0,
                num_steps=1,
                layout="image",
            )
        )
    )
    assert x.shape == (4, 3, 32, 32) and x.dtype == np.float32
    flat = data.to_float(ds.train_images, layout="flat")
    assert flat.shape == (20, 3072)
    first = batches["data_batch_1"][b"data"][0]
    np.testing.assert_array_equal(flat[0], first / np.float32(255))
    images = data.to_float(ds.train_images, layout="image")
    np.testing.assert_array_equal(images.reshape(20, -1), flat)
