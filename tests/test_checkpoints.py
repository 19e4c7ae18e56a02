"""Checkpoints inside a run (`--checkpoint-every`): a run killed with SIGKILL and
started again with the same command ends bit-identical to an uninterrupted one;
damaged checkpoints and checkpoints of another run are refused.

The killed runs are real subprocesses (`python -m experiments...`) killed as soon
as checkpoints are on disk, so the kill lands mid-run; every wait has a
deadline and every process is killed when its test ends.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from experiments import local_losses, mnist_compare, runner

from .helpers import write_random_mnist


ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 120  # seconds a killed run may take to write its first checkpoint
TIMES = ("time", "train_time", "compile_time", "wall_s", "compile_s")


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    return write_random_mnist(tmp_path_factory.mktemp("idx"), train=256, test=64)


def _mnist_argv(idx_dir, out, *extra):
    return [
        "--model", "logreg", "--data-dir", str(idx_dir), "--iterations", "1000",
        "--eval-every", "10", "--seeds", "1", "--estimators", "fwd-gaussian",
        "--optimizers", "adam", "--lrs", "0.01", "--checkpoint-every", "1",
        "--out", str(out), *extra,
    ]  # fmt: skip


def kill_after_checkpoints(command: list[str], out: Path, count: int = 1) -> None:
    """Start `python <command>`, SIGKILL it as soon as `count` checkpoints of its
    first run are on disk; fail unless it was still running then."""
    process = subprocess.Popen(
        [sys.executable, *command],
        cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + DEADLINE
        while len(list(out.glob("checkpoints/*/step-*.ckpt"))) < count:
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no checkpoint written in time"
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert not (out / "runs.jsonl").exists() or not (out / "runs.jsonl").read_text()


def runs_without_times(out: Path) -> list[dict]:
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    return [
        {
            key: value
            for key, value in run.items()
            if key not in TIMES and key != "history"
        }
        | (
            {"history": {k: v for k, v in run["history"].items() if k != "time"}}
            if "history" in run
            else {}
        )
        for run in runs
    ]


def final_payloads(out: Path) -> dict[str, bytes]:
    """The arrays (model, optimizer state, key) of each run's last checkpoint."""
    payloads = {}
    for folder in sorted((out / "checkpoints").iterdir()):
        (path,) = folder.glob("step-*.ckpt")  # a finished run keeps one
        header, payload = runner.read_checkpoint(path)
        assert header["final"]
        payloads[folder.name] = payload
    return payloads


@pytest.fixture(scope="module")
def uninterrupted(idx_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    mnist_compare.main(_mnist_argv(idx_dir, out))
    return out


def test_sigkill_then_same_command_is_bit_identical(
    idx_dir, uninterrupted, tmp_path, capsys
):
    """mnist_compare killed mid-run, its newest checkpoint then damaged as by a
    crash while writing (truncated): the rerun warns, resumes from the previous
    checkpoint, and ends with the uninterrupted run's parameters, optimizer state
    and key (byte for byte) and records (apart from wall times)."""
    out = tmp_path / "killed"
    argv = _mnist_argv(idx_dir, out)
    kill_after_checkpoints(["-m", "experiments.mnist_compare", *argv], out, count=2)
    newest = sorted(out.glob("checkpoints/*/step-*.ckpt"))[-1]
    newest.write_bytes(newest.read_bytes()[:-100])
    mnist_compare.main(argv)
    assert f"checkpoint {newest} is truncated" in capsys.readouterr().err
    assert runs_without_times(out) == runs_without_times(uninterrupted)
    assert final_payloads(out) == final_payloads(uninterrupted)


def test_local_losses_sigkill_then_same_command_is_bit_identical(idx_dir, tmp_path):
    """The same for experiments.local_losses, killed inside an epoch (its record
    so far includes the epoch's partial training objectives)."""
    argv = [
        "--data-dir", str(idx_dir), "--dataset", "mnist", "--model", "mlp",
        "--width", "32", "--depth", "1", "--groups", "4", "--epochs", "6",
        "--batch-size", "16", "--methods", "lg-fg-a", "--seeds", "1",
        "--checkpoint-every", "1",
    ]  # fmt: skip
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    local_losses.main([*argv, "--out", str(reference)])
    command = ["-m", "experiments.local_losses", *argv, "--out", str(killed)]
    kill_after_checkpoints(command, killed)
    local_losses.main([*argv, "--out", str(killed)])
    assert runs_without_times(killed) == runs_without_times(reference)
    assert final_payloads(killed) == final_payloads(reference)


def _doctor(path: Path, change) -> None:
    """Rewrite the header of checkpoint `path` with `change(header)`."""
    data = path.read_bytes()
    magic_end = data.index(b"\n") + 1
    header_end = data.index(b"\n", magic_end)
    header = json.loads(data[magic_end:header_end])
    change(header)
    path.write_bytes(data[:magic_end] + json.dumps(header).encode() + data[header_end:])


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda h: h["identity"]["config"].update(lr=0.02),
            "belongs to another run (config.lr: saved 0.02, this run 0.01)",
        ),
        (
            lambda h: h["identity"]["config"].update(data="256+64-0123456789ab"),
            "config.data: saved '256+64-0123456789ab'",
        ),
        (lambda h: h.update(payload_sha256="0" * 64), "every checkpoint in"),
    ],
    ids=["other-config", "other-data", "corrupt"],
)
def test_foreign_or_damaged_checkpoint_is_refused(
    idx_dir, uninterrupted, tmp_path, capsys, change, message
):
    """A checkpoint of another configuration or data set is refused with what
    differs; a corrupt one (checksum) with nothing older to fall back on is
    refused, saying how to start again. Nothing is trained or written."""
    out = tmp_path / "out"
    (folder,) = (uninterrupted / "checkpoints").iterdir()
    (path,) = folder.glob("step-*.ckpt")
    target = out / "checkpoints" / folder.name / path.name
    target.parent.mkdir(parents=True)
    target.write_bytes(path.read_bytes())
    _doctor(target, lambda h: h.update(final=False))
    _doctor(target, change)
    with pytest.raises(SystemExit) as info:
        mnist_compare.main(_mnist_argv(idx_dir, out))
    assert message in str(info.value)
    assert not (out / "runs.jsonl").exists()


@pytest.mark.parametrize(
    "text, every",
    [
        ("500", runner.Every(steps=500)),
        ("30s", runner.Every(seconds=30.0)),
        ("10m", runner.Every(seconds=600.0)),
        ("1.5h", runner.Every(seconds=5400.0)),
    ],
)
def test_checkpoint_every_parses_steps_and_times(text, every):
    assert runner.Every.parse(text) == every


@pytest.mark.parametrize("text", ["0", "-5", "2.5", "10x", "m", ""])
def test_checkpoint_every_refuses_bad_values(text):
    with pytest.raises(SystemExit, match="--checkpoint-every"):
        runner.Every.parse(text)


def test_checkpoints_train_one_run_at_a_time(idx_dir, tmp_path):
    """Batched runs have no checkpoints: an explicit --batch-runs above 1 is
    refused before any work."""
    argv = _mnist_argv(idx_dir, tmp_path / "out", "--batch-runs", "2")
    with pytest.raises(SystemExit, match="--batch-runs 2: --checkpoint-every"):
        mnist_compare.main(argv)
