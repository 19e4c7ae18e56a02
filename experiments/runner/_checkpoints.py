"""Checkpoints inside a run: its training state every N steps or minutes, so that a
run killed at any point resumes where its last checkpoint left it.

A checkpoint holds what determines the rest of the run: the chunk function's carry
(model and optimizer state) and constants (key), the steps done, the data
iterator's position (Grain's `get_state`) and the run's record so far (curves,
times). Restarted with the same command, a run continues from it and ends with the
numbers of an uninterrupted run, bit for bit (steps use `fold_in(key, step)` and
checkpoints fall on chunk boundaries, so the remaining chunks compute exactly what
they would have).

**Format.** One file per checkpoint, `<out>/checkpoints/<run id>/step-<step>.ckpt`:
a first line `fwdeqx-checkpoint 1`, a line of JSON (the run's identity, the step,
the data position, the record so far, and the length and SHA-256 of what follows),
then the arrays in `equinox.tree_serialise_leaves`' format. Equinox's serialisation
was chosen over orbax-checkpoint: the arrays of these runs are replicated (each
process holds all of them), so process 0 alone writes one small file, and Equinox
is already a dependency; orbax's multi-host sharded writes and async saving would
add a dependency tree (tensorstore and more) for features these runs do not use.

**Safety.** A checkpoint is written to a temporary name, fsynced, renamed into
place and its folder fsynced: a crash while writing leaves the previous checkpoint
intact. The two newest are kept. A damaged file (bad length or checksum) is
refused with a warning and the one before it is used; a checkpoint of another
configuration or data set is refused with what differs. When a run finishes, its
last checkpoint (the trained model) stays and the older ones are deleted.
"""

import dataclasses
import hashlib
import io
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import equinox as eqx

from ._files import write_atomic
from ._processes import agree, from_host, is_writer, to_host


MAGIC = b"fwdeqx-checkpoint 1\n"
KEEP = 2
_UNITS = {"s": 1, "m": 60, "h": 3600}


@dataclasses.dataclass(frozen=True)
class Every:
    """How often a run saves: every `steps` steps or every `seconds` seconds
    (checked at chunk boundaries)."""

    steps: int | None = None
    seconds: float | None = None

    @classmethod
    def parse(cls, text: str) -> "Every":
        """`"500"` (steps), `"30s"`, `"10m"`, `"1h"`; exits with a one-line error
        otherwise."""
        match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([smh]?)\s*", text)
        if match is None or float(match.group(1)) <= 0:
            raise SystemExit(
                f"error: --checkpoint-every {text!r}: give a positive number of steps "
                "(500) or a time (30s, 10m, 1h)"
            )
        number, unit = match.groups()
        if not unit:
            if "." in number:
                raise SystemExit(
                    f"error: --checkpoint-every {text!r}: a number of steps must be "
                    "a whole number"
                )
            return cls(steps=int(number))
        return cls(seconds=float(number) * _UNITS[unit])


class CheckpointError(Exception):
    """A checkpoint file that cannot be used: truncated, corrupt or not one."""


@dataclasses.dataclass
class RunCheckpoints:
    """The checkpoints of one run, in `folder`.

    `identity` (JSON-ready: the run's id and full configuration, data identity
    included) must match for a checkpoint to be used."""

    folder: Path
    identity: dict[str, Any]
    every: Every
    _saved_step: int = 0
    _saved_time: float = dataclasses.field(default_factory=time.monotonic)

    def restore(
        self, training: Any, chunks: Any, sizes: list[int]
    ) -> tuple[list[int], dict[str, Any] | None]:
        """Load the newest usable checkpoint into `training` (carry, constants,
        steps done) and `chunks` (the data position).

        **Returns:**

        The chunk sizes still to run and the run's record so far (`None`: no
        checkpoint, start from step 0; the sizes are then `sizes`)."""
        found = self._newest_usable()
        agree(-1 if found is None else found[0]["step"], "the checkpoint to resume")
        if found is None:
            return sizes, None
        header, payload = found
        like = to_host((training.carry, training.consts))
        try:
            leaves = eqx.tree_deserialise_leaves(io.BytesIO(payload), like)
        except (RuntimeError, ValueError) as error:  # shapes of another model
            raise SystemExit(
                f"error: checkpoint {self.folder} does not fit this run's model or "
                f"optimizer ({error}); delete it to start the run again"
            ) from None
        training.carry, training.consts = from_host(
            leaves, (training.carry, training.consts)
        )
        training.done = self._saved_step = header["step"]
        remaining = (
            [] if header["final"] else _remaining(sizes, header["step"], self.folder)
        )
        if remaining:
            try:
                chunks.set_state(header["data_state"], remaining)
            except ValueError as error:
                raise SystemExit(
                    f"error: checkpoint in {self.folder}: {error}"
                ) from None
        return remaining, header["record"]

    def due(self, done: int) -> bool:
        """Whether a checkpoint is due after `done` steps."""
        if self.every.steps is not None:
            return done - self._saved_step >= self.every.steps
        assert self.every.seconds is not None
        return time.monotonic() - self._saved_time >= self.every.seconds

    def save(
        self, training: Any, record: dict[str, Any], *, final: bool = False
    ) -> None:
        """Write a checkpoint of `training` (at `training.done` steps, data
        position `training.data_state`) with the run's `record` so far; `final`:
        the run is over (its last checkpoint, kept). Only process 0 writes."""
        self._saved_step, self._saved_time = training.done, time.monotonic()
        if not is_writer():
            return
        buffer = io.BytesIO()
        eqx.tree_serialise_leaves(buffer, to_host((training.carry, training.consts)))
        payload = buffer.getvalue()
        header = {
            "identity": self.identity,
            "step": training.done,
            "final": final,
            "data_state": training.data_state,
            "record": record,
            "payload_bytes": len(payload),
            "payload_sha256": hashlib.sha256(payload).hexdigest(),
            "saved_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        }
        text = json.dumps(header).encode() + b"\n"  # key order kept: curves are ordered
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomic(
            self.folder / f"step-{training.done:09d}.ckpt", MAGIC + text + payload
        )
        for old in self._files()[KEEP if not final else 1 :]:
            old.unlink(missing_ok=True)

    def _files(self) -> list[Path]:
        """This run's checkpoint files, newest first."""
        return sorted(self.folder.glob("step-*.ckpt"), reverse=True)

    def _newest_usable(self) -> tuple[dict[str, Any], bytes] | None:
        files = self._files()
        damaged = []
        for path in files:
            try:
                header, payload = read_checkpoint(path)
            except CheckpointError as error:
                damaged.append(path.name)
                print(f"warning: {error}; trying an older one", file=sys.stderr)
                continue
            self._check_identity(path, header["identity"])
            return header, payload
        if damaged:
            raise SystemExit(
                f"error: every checkpoint in {self.folder} is damaged "
                f"({', '.join(damaged)}); delete the folder to start the run again"
            )
        return None

    def _check_identity(self, path: Path, saved: dict[str, Any]) -> None:
        if saved == self.identity:
            return
        differs = _differences(saved, self.identity)
        raise SystemExit(
            f"error: checkpoint {path} belongs to another run ({'; '.join(differs)}); "
            "move it away or delete it to start this run again"
        )


def read_checkpoint(path: Path) -> tuple[dict[str, Any], bytes]:
    """A checkpoint file's header and array payload; `CheckpointError` when it is
    not a whole, intact checkpoint."""
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        raise CheckpointError(f"{path} is not an fwdeqx checkpoint")
    line_end = data.find(b"\n", len(MAGIC))
    try:
        header = json.loads(data[len(MAGIC) : line_end])
        payload = data[line_end + 1 :]
        size, digest = header["payload_bytes"], header["payload_sha256"]
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(
            f"checkpoint {path} is damaged (unreadable header)"
        ) from None
    if line_end < 0 or len(payload) != size:
        raise CheckpointError(
            f"checkpoint {path} is truncated ({len(payload)} of {size} bytes)"
        )
    if hashlib.sha256(payload).hexdigest() != digest:
        raise CheckpointError(f"checkpoint {path} is damaged (checksum mismatch)")
    return header, payload


def _differences(saved: Any, current: Any, path: str = "") -> list[str]:
    """What differs between two JSON values, as `key: saved X, this run Y`."""
    if isinstance(saved, dict) and isinstance(current, dict):
        found = []
        for key in sorted(set(saved) | set(current)):
            found += _differences(
                saved.get(key), current.get(key), f"{path}.{key}" if path else key
            )
        return found
    if saved == current:
        return []
    return [f"{path or 'identity'}: saved {saved!r}, this run {current!r}"]


def _remaining(sizes: list[int], step: int, folder: Path) -> list[int]:
    """The chunk sizes after the first `step` steps (a chunk boundary)."""
    done = 0
    for index, size in enumerate(sizes):
        if done == step:
            return sizes[index:]
        done += size
    if done == step:
        return []
    raise SystemExit(
        f"error: checkpoint in {folder} is at step {step}, which is not a chunk "
        "boundary of this run; delete it to start the run again"
    )


@dataclasses.dataclass(frozen=True)
class Checkpointing:
    """Checkpoints for every run of a job: each run's in `root/<run id>/`, saved
    `every` so often."""

    root: Path
    every: Every

    def run(self, run_id: str, config: dict[str, Any]) -> RunCheckpoints:
        """The checkpoints of the run `run_id` with configuration `config`."""
        # As JSON stores it (tuples become lists), to compare with saved ones.
        identity = json.loads(json.dumps({"run_id": run_id, "config": config}))
        return RunCheckpoints(self.root / run_id, identity, self.every)


class NoCheckpoints:
    """A run without checkpoints: the interface of `RunCheckpoints`, doing
    nothing."""

    def restore(
        self, training: Any, chunks: Any, sizes: list[int]
    ) -> tuple[list[int], None]:
        return sizes, None

    def due(self, done: int) -> bool:
        return False

    def save(self, training: Any, record: dict[str, Any], *, final: bool = False):
        pass


def run_checkpoints(
    checkpointing: Checkpointing | None, config: Any
) -> RunCheckpoints | NoCheckpoints:
    """The checkpoints of the run `config` (a dataclass with a `run_id`; all its
    fields are its identity), or `NoCheckpoints()` without `checkpointing`."""
    if checkpointing is None:
        return NoCheckpoints()
    return checkpointing.run(config.run_id, dataclasses.asdict(config))
