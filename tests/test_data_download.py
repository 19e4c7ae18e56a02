"""Verified downloads against a local HTTP server on 127.0.0.1: good files, wrong
checksums, refused connections, HTTP errors and dropped connections, with mirror
fallback; no failure ever leaves a file that looks valid."""

import hashlib
import http.server
import socket
import threading

import numpy as np
import pytest

from fwdeqx import data
from fwdeqx.data import _download
from fwdeqx.data._download import (
    DownloadError,
    RemoteFile,
    download_file,
    download_files,
    sha256_file,
)
from fwdeqx.data._idx import write_idx
from fwdeqx.data._specs import SPECS, IdxSpec


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves `server.routes[path] = (body, mode)`; mode "ok", or "partial" (declares
    the full length, sends half, closes)."""

    def do_GET(self):
        self.server.requests.append(self.path)
        route = self.server.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        body, mode = route
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "partial":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.routes, httpd.requests = {}, []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def mirror(server):
    """`mirror(name)` -> base URL of a fresh mirror path on the local server."""
    server.routes.clear()
    server.requests.clear()
    base = f"http://127.0.0.1:{server.server_address[1]}"

    def make(name: str, files: dict[str, bytes] | None = None, mode: str = "ok"):
        for filename, body in (files or {}).items():
            server.routes[f"/{name}/{filename}"] = (body, mode)
        return f"{base}/{name}/"

    return make


@pytest.fixture
def refused_url():
    """A URL on a port where nothing listens (the connection is refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def _remote(name: str, body: bytes) -> RemoteFile:
    return RemoteFile(name, hashlib.sha256(body).hexdigest(), len(body))


_BODY = bytes(range(256)) * 1000


def _listing(directory):
    """The directory holds exactly the downloaded file and no temporary leftovers."""
    return sorted(p.name for p in directory.iterdir())


def test_good_download(tmp_path, mirror):
    url = mirror("good", {"file.gz": _BODY})
    path = download_file(
        _remote("file.gz", _BODY), tmp_path / "d", [url], progress=False
    )
    assert path == tmp_path / "d" / "file.gz"
    assert path.read_bytes() == _BODY
    assert sha256_file(path) == hashlib.sha256(_BODY).hexdigest()
    assert _listing(tmp_path / "d") == ["file.gz"]


def test_wrong_checksum_falls_back_to_next_mirror(tmp_path, mirror, caplog):
    bad = mirror("bad", {"file.gz": b"not the file"})
    good = mirror("good", {"file.gz": _BODY})
    path = download_file(
        _remote("file.gz", _BODY), tmp_path, [bad, good], progress=False
    )
    assert path.read_bytes() == _BODY
    assert "SHA-256 mismatch" in caplog.text
    assert _listing(tmp_path) == ["file.gz"]


def test_wrong_checksum_everywhere_is_an_error(tmp_path, mirror):
    bad1 = mirror("bad1", {"file.gz": b"nope"})
    bad2 = mirror("bad2", {"file.gz": _BODY[:-1]})
    with pytest.raises(DownloadError) as info:
        download_file(_remote("file.gz", _BODY), tmp_path, [bad1, bad2], progress=False)
    assert len(info.value.attempts) == 2
    assert all("SHA-256 mismatch" in line for line in info.value.attempts)
    assert bad1 in str(info.value) and bad2 in str(info.value)
    assert _listing(tmp_path) == []


def test_connection_refused_falls_back_and_is_skipped_afterwards(
    tmp_path, mirror, refused_url, server
):
    good = mirror("good", {"a.gz": b"aaa", "b.gz": b"bbbb"})
    remotes = [_remote("a.gz", b"aaa"), _remote("b.gz", b"bbbb")]
    unreachable: set[str] = set()
    for remote in remotes:
        download_file(
            remote,
            tmp_path,
            [refused_url, good],
            progress=False,
            unreachable=unreachable,
        )
    assert unreachable == {refused_url}
    assert _listing(tmp_path) == ["a.gz", "b.gz"]
    with pytest.raises(DownloadError) as info:
        download_file(_remote("c.gz", b"c"), tmp_path, [refused_url], unreachable=set())
    assert "unreachable" in info.value.attempts[0]


def test_http_404_falls_back(tmp_path, mirror):
    empty = mirror("empty")
    good = mirror("good", {"file.gz": _BODY})
    path = download_file(
        _remote("file.gz", _BODY), tmp_path, [empty, good], progress=False
    )
    assert path.read_bytes() == _BODY


def test_dropped_connection_leaves_nothing(tmp_path, mirror):
    partial = mirror("partial", {"file.gz": _BODY}, mode="partial")
    with pytest.raises(DownloadError) as info:
        download_file(_remote("file.gz", _BODY), tmp_path, [partial], progress=False)
    assert "connection closed after" in info.value.attempts[0]
    assert _listing(tmp_path) == []


def test_interrupted_download_leaves_nothing(tmp_path, mirror, monkeypatch):
    """Ctrl-C halfway through: the exception propagates, the partial file is gone."""
    url = mirror("good", {"file.gz": _BODY})

    def interrupted_fetch(url, handle, **kwargs):
        handle.write(_BODY[:1000])
        raise KeyboardInterrupt

    monkeypatch.setattr(_download, "_fetch", interrupted_fetch)
    with pytest.raises(KeyboardInterrupt):
        download_file(_remote("file.gz", _BODY), tmp_path, [url], progress=False)
    assert _listing(tmp_path) == []


def test_no_mirrors(tmp_path):
    with pytest.raises(DownloadError, match="no mirrors configured"):
        download_file(_remote("file.gz", b"x"), tmp_path, [], progress=False)


def test_download_files_keeps_existing_files(tmp_path, mirror, server):
    good = mirror("good", {"a.gz": b"aaa", "b.gz": b"bbbb"})
    (tmp_path / "a.gz").write_bytes(b"aaa")
    remotes = [_remote("a.gz", b"aaa"), _remote("b.gz", b"bbbb")]
    paths = download_files(remotes, tmp_path, [good], progress=False)
    assert paths == [tmp_path / "a.gz", tmp_path / "b.gz"]
    assert server.requests == ["/good/b.gz"]


@pytest.mark.parametrize("tqdm_available", [True, False])
def test_progress_display(tmp_path, mirror, monkeypatch, capsys, tqdm_available):
    """With tqdm missing, progress falls back to plain lines on stderr."""
    if not tqdm_available:
        import builtins

        real_import = builtins.__import__

        def no_tqdm(name, *args, **kwargs):
            if name.startswith("tqdm"):
                raise ImportError(name)
            return real_import(name, *args, **kwargs)

        monkeypatch.setattr(builtins, "__import__", no_tqdm)
    url = mirror("good", {"file.gz": _BODY})
    download_file(_remote("file.gz", _BODY), tmp_path, [url], progress=True)
    err = capsys.readouterr().err
    assert "file.gz" in err
    if not tqdm_available:
        assert "file.gz: 100%" in err


def test_load_dataset_downloads_into_cache_then_reuses_it(
    tmp_path, mirror, refused_url, monkeypatch, server
):
    """Step 4 of the chain end to end: the files land in $XDG_CACHE_HOME/fwdeqx/mnist
    (verified) and the next load finds them in the cache without any request."""
    rng = np.random.default_rng(0)
    arrays = [
        rng.integers(0, 256, (30, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, 30, dtype=np.uint8),
        rng.integers(0, 256, (7, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, 7, dtype=np.uint8),
    ]
    names = [r.name for r in SPECS["mnist"].files]
    bodies = {}
    for name, array in zip(names, arrays, strict=True):
        path = tmp_path / "src" / name
        path.parent.mkdir(exist_ok=True)
        write_idx(path, array, compress=True)
        bodies[name] = path.read_bytes()
    url = mirror("mnist", bodies)
    spec = IdxSpec(
        "mnist",
        tuple(_remote(name, body) for name, body in bodies.items()),
        (refused_url, url),
    )
    monkeypatch.setitem(SPECS, "mnist", spec)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("FWDEQX_DATA_DIR", raising=False)
    ds = data.load_dataset("mnist", progress=False)
    cache = tmp_path / "cache" / "fwdeqx" / "mnist"
    assert ds.name == "mnist" and ds.source == f"{cache} (downloaded)"
    assert sorted(p.name for p in cache.iterdir()) == sorted(names)
    np.testing.assert_array_equal(ds.train_images, arrays[0])
    np.testing.assert_array_equal(ds.val_labels, arrays[3])
    server.requests.clear()
    again = data.load_dataset("mnist", progress=False)
    assert again.source == f"{cache} (user cache)"
    assert server.requests == []
