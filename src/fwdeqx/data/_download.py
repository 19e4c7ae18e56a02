"""Verified downloads: each file is fetched from a list of mirrors, hashed while it
streams into a temporary file next to its destination, and renamed into place only
once its SHA-256 matches, so an interrupted or corrupt download never leaves a file
that looks valid."""

import dataclasses
import hashlib
import http.client
import logging
import os
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path


logger = logging.getLogger("fwdeqx.data")

_CHUNK = 1 << 16


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    """One file to download: its name on the mirrors (and on disk), its SHA-256 and
    (optionally) its size in bytes, used for the progress bar.

    **Attributes:**

    - `name`: the file name on the mirrors and on disk.
    - `sha256`: the expected hex SHA-256 of the file.
    - `size`: the size in bytes, for the progress bar, or `None` if unknown
        (default).
    """

    name: str
    sha256: str
    size: int | None = None


class DownloadError(OSError):
    """No mirror delivered a file with the expected checksum. `attempts` lists one
    line per mirror tried."""

    def __init__(self, message: str, attempts: Sequence[str] = ()):
        super().__init__(message)
        self.attempts = tuple(attempts)


class _MirrorUnreachable(Exception):
    """The mirror could not be reached at all (DNS, refused, timeout): skip it for
    the remaining files instead of timing out once per file."""


def sha256_file(path: str | os.PathLike) -> str:
    """The hex SHA-256 of a file, read in chunks.

    **Arguments:**

    - `path`: the file to hash.

    **Returns:**

    The SHA-256 digest as a lowercase hex string.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class _PlainProgress:
    """Fallback progress display when tqdm is not installed: a few lines on stderr."""

    def __init__(self, total: int | None, desc: str):
        self.total, self.desc, self.done, self.next_report = total, desc, 0, 0.25

    def update(self, n: int):
        self.done += n
        if self.total and self.done >= self.next_report * self.total:
            print(f"{self.desc}: {self.done / self.total:.0%}", file=sys.stderr)
            self.next_report += 0.25

    def close(self):
        pass


def _progress_bar(total: int | None, desc: str, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _PlainProgress(total, desc)
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, leave=False)


def _fetch(url: str, tmp_handle, *, timeout: float, progress: bool, size: int | None):
    """Stream `url` into `tmp_handle`; returns the hex SHA-256 of what was written."""
    digest = hashlib.sha256()
    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.HTTPError:
        raise
    except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
        raise _MirrorUnreachable(str(getattr(error, "reason", error))) from error
    received = 0
    with response:
        length = response.headers.get("Content-Length")
        declared = int(length) if length and length.isdigit() else None
        bar = _progress_bar(declared or size, url.rsplit("/", 1)[-1], progress)
        try:
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                tmp_handle.write(chunk)
                received += len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
    if declared is not None and received != declared:
        raise ConnectionError(f"connection closed after {received} of {declared} bytes")
    return digest.hexdigest()


def download_file(
    remote: RemoteFile,
    directory: str | os.PathLike,
    mirrors: Sequence[str],
    *,
    timeout: float = 30.0,
    progress: bool = True,
    unreachable: set[str] | None = None,
) -> Path:
    """Download one file into `directory`, trying each mirror in turn.

    The bytes go to a temporary file in `directory`; it is renamed to
    `directory / remote.name` only once its SHA-256 equals `remote.sha256`, and
    deleted on any failure (wrong checksum, HTTP error, refused connection, dropped
    connection, interruption).

    **Arguments:**

    - `remote`: the file's name, SHA-256 and size.
    - `directory`: where to put it (created if missing).
    - `mirrors`: base URLs; the file's URL is `mirror.rstrip("/") + "/" + name`.
    - `timeout`: socket timeout in seconds per connection attempt and read.
    - `progress`: show a progress bar (tqdm if installed, else plain lines on stderr).
    - `unreachable`: a set of mirrors already found unreachable, skipped here and
        extended with any mirror that cannot be reached (shared across files).

    **Returns:**

    The path of the verified file.

    **Raises:**

    `DownloadError` listing what each mirror did.
    """
    directory = Path(directory)
    destination = directory / remote.name
    unreachable = set() if unreachable is None else unreachable
    attempts = []
    directory.mkdir(parents=True, exist_ok=True)
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + remote.name
        if mirror in unreachable:
            attempts.append(f"{url}: skipped (mirror unreachable earlier)")
            continue
        fd, tmp_name = tempfile.mkstemp(
            dir=directory, prefix=f".{remote.name}.", suffix=".part"
        )
        try:
            with os.fdopen(fd, "wb") as handle:
                logger.info("fwdeqx.data: downloading %s", url)
                got = _fetch(
                    url, handle, timeout=timeout, progress=progress, size=remote.size
                )
            if got != remote.sha256:
                attempts.append(
                    f"{url}: SHA-256 mismatch (got {got}, expected {remote.sha256})"
                )
                logger.warning("fwdeqx.data: %s", attempts[-1])
                continue
            os.replace(tmp_name, destination)
            logger.info("fwdeqx.data: verified %s (sha256 %s)", destination, got)
            return destination
        except _MirrorUnreachable as error:
            unreachable.add(mirror)
            attempts.append(f"{url}: unreachable ({error})")
        except urllib.error.HTTPError as error:
            attempts.append(f"{url}: HTTP {error.code} {error.reason}")
        except (OSError, ValueError, http.client.HTTPException) as error:
            # A dropped connection, a full disk, a malformed response, ...
            attempts.append(f"{url}: failed ({type(error).__name__}: {error})")
        finally:
            # On success the temporary file was renamed away; otherwise remove it.
            Path(tmp_name).unlink(missing_ok=True)
        logger.info("fwdeqx.data: %s", attempts[-1])
    if not mirrors:
        attempts.append("no mirrors configured")
    raise DownloadError(
        f"could not download {remote.name} into {directory}:\n  "
        + "\n  ".join(attempts),
        attempts,
    )


def download_files(
    remotes: Sequence[RemoteFile],
    directory: str | os.PathLike,
    mirrors: Sequence[str],
    *,
    timeout: float = 30.0,
    progress: bool = True,
) -> list[Path]:
    """Download every file of `remotes` missing from `directory` with
    `download_file` (files already there are kept: they were only ever renamed into
    place after verification). A mirror that cannot be reached is not tried again
    for the following files.

    **Arguments:**

    - `remotes`: the files to get (name, SHA-256, size).
    - `directory`: where to put them (created if a file must be downloaded).
    - `mirrors`: base URLs; each file's URL is `mirror.rstrip("/") + "/" + name`.
    - `timeout`: socket timeout in seconds per connection attempt and read.
    - `progress`: show a progress bar (tqdm if installed, else plain lines on stderr).

    **Returns:**

    The paths of all the files, in the order of `remotes`.
    """
    directory = Path(directory)
    unreachable: set[str] = set()
    paths = []
    for remote in remotes:
        path = directory / remote.name
        if not path.exists():
            path = download_file(
                remote,
                directory,
                mirrors,
                timeout=timeout,
                progress=progress,
                unreachable=unreachable,
            )
        paths.append(path)
    return paths
