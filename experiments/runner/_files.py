"""Output folders, atomic writes, runs.jsonl, `environment()`, headless plots.

The experiment layer owns files and plots; the library never writes to disk (except
the data cache).
"""

import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import matplotlib


matplotlib.use("Agg")  # headless: experiments run on machines without a display


def check_output_dir(path: str | os.PathLike) -> Path:
    """Check that `path` could be created and written, without creating it (so a
    command that fails later leaves no empty folder behind); exit with a one-line
    error otherwise."""
    out = Path(path)
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise SystemExit(
            f"error: output directory {out} is not writable ({existing} is a file)."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SystemExit(
            f"error: output directory {out} is not writable ({existing} is not "
            "writable)."
        )
    return out


def output_dir(path: str | os.PathLike) -> Path:
    """Create `path` (and parents) and check it is writable; exit with a one-line
    error otherwise."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"  # processes may share `out`
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise SystemExit(
            f"error: output directory {out} is not writable ({error})."
        ) from None
    return out


def write_atomic(path: Path, content: str | bytes) -> None:
    """Write `content` to `path` so that readers see the old or the new file, never
    a half-written one, even after a crash: temporary name, fsync, rename, fsync
    of the folder."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        # mkstemp creates the file 0600; give it the mode `open` would (0666 less
        # the umask), like the PNGs and runs.jsonl next to it.
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(content.encode() if isinstance(content, str) else content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; restore at once
    os.umask(mask)
    return mask


def save_figure(figure: Any, path: Path, dpi: int) -> None:
    """Save a matplotlib `figure` as the PNG `path` without the "Software" entry
    (matplotlib's version), so that the same data gives the same bytes on every
    rerun, and close it."""
    import matplotlib.pyplot as plt

    figure.savefig(path, dpi=dpi, metadata={"Software": None})
    plt.close(figure)


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, default=_to_builtin) + "\n")


def append_jsonl(path: Path, record: Any) -> None:
    """Append one JSON line with a single `write` on an `O_APPEND` file, then fsync:
    an interrupted run never leaves a partial line behind a complete one."""
    line = json.dumps(record, default=_to_builtin) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def read_runs(path: Path) -> dict[str, dict[str, Any]]:
    """Finished runs by `run_id` (a line cut short by a crash is skipped)."""
    runs: dict[str, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            runs[record["run_id"]] = record
    return runs


def versions() -> dict[str, str]:
    """The versions of fwdeqx and the libraries its numbers depend on."""
    import importlib.metadata

    found = {}
    for package in ("fwdeqx", "jax", "jaxlib", "equinox", "optax", "grain", "numpy"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def environment() -> dict[str, str]:
    """Versions and machine facts recorded with every result (experiments and
    benchmarks)."""
    import jax

    return {
        **versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_count": str(os.cpu_count()),
        "jax_backend": jax.default_backend(),
        "jax_devices": ", ".join(str(d) for d in jax.devices()),
    }


def _cpu_model() -> str:
    """The CPU's model name and vector extensions (Linux), which decide the code XLA
    generates and so the last bits of every float result (docs/mnist.md,
    "Reproducibility")."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    fields: dict[str, str] = {}
    for line in info.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    vector = [f for f in ("avx512f", "avx2", "fma", "avx") if f in flags]
    model = fields.get("model name", platform.processor() or "unknown")
    return f"{model} ({' '.join(vector) or 'no avx'})"


def _to_builtin(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "__array__"):
        return np.asarray(value).tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")
