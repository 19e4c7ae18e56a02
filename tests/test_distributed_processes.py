"""`fwdeqx.distributed` across real OS processes: 2 and 4 processes on 127.0.0.1
with JAX's multi-controller runtime and Gloo CPU collectives.

Each launch runs `tests/_distributed_worker.py` (every estimator in one launch)
next to a single-process reference run, each with a free port chosen at run time.
Every wait has a deadline, and every process is killed (its whole process group)
when the test ends, so nothing hangs CI or outlives the test.
"""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import equinox as eqx
import jax
import jax.tree_util as jtu
import numpy as np
import pytest
from experiments import mnist_compare

import fwdeqx.distributed
from fwdeqx.models import MLP

from . import _distributed_worker as worker
from .helpers import write_random_mnist
from .test_checkpoints import final_payloads, runs_without_times


ROOT = Path(__file__).resolve().parent.parent
WORKER = ["-m", "tests._distributed_worker"]
TIMEOUT = 240  # seconds for a whole launch; a healthy one takes a fraction
RTOL, ATOL = 1e-5, 1e-6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    # Tiny programs: compile them fast (the same flags for every run compared).
    env["XLA_FLAGS"] = (
        "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    )
    return env


def _launch(
    commands: list[list[str]],
    logs: Path,
    watch: Callable[[list[subprocess.Popen]], None] | None = None,
) -> list[tuple[int, str]]:
    """Run the commands at once from the repository root; (return code, output)
    of each. `watch(processes)`, when given, runs once they are started (e.g. to
    kill one). Fails the test if they are not all done within `TIMEOUT` seconds;
    kills every process group that is left, whatever happens."""
    logs.mkdir(exist_ok=True)
    running: list[subprocess.Popen] = []
    with contextlib.ExitStack() as files:
        try:
            outputs = []
            for i, command in enumerate(commands):
                outputs.append(files.enter_context(open(logs / f"{i}.log", "w+")))
                running.append(
                    subprocess.Popen(
                        [sys.executable, *command],
                        cwd=ROOT,
                        env=_env(),
                        stdout=outputs[-1],
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # its own process group
                    )
                )
            if watch is not None:
                watch(running)
            deadline = time.monotonic() + TIMEOUT
            for process in running:
                try:
                    process.wait(timeout=max(deadline - time.monotonic(), 0.1))
                except subprocess.TimeoutExpired:
                    pytest.fail(f"still running after {TIMEOUT} s: {commands}")
            for output in outputs:
                output.seek(0)
            return [
                (p.returncode, o.read()) for p, o in zip(running, outputs, strict=True)
            ]
        finally:
            for process in running:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=10)


def _workers(num_processes: int, out: Path, *extra: str) -> list[list[str]]:
    port = _free_port()
    return [
        [
            *WORKER,
            f"--coordinator=127.0.0.1:{port}",
            f"--num-processes={num_processes}",
            f"--process-id={i}",
            f"--out={out}",
            *extra,
        ]
        for i in range(num_processes)
    ]


def _check_ok(results: list[tuple[int, str]]) -> None:
    for i, (code, output) in enumerate(results):
        assert code == 0, f"process {i} exited with {code}:\n{output[-4000:]}"


def _check_against_reference(out: Path, num_processes: int, names) -> None:
    reference = json.loads((out / "reference.json").read_text())
    runs = [
        json.loads((out / f"process-{i}.json").read_text())
        for i in range(num_processes)
    ]
    # Data: the processes' shards of each step make up the one-process batches.
    whole = list(worker.batches())
    for step, (x, y) in enumerate(whole):
        shards = [run["batches"][step] for run in runs]
        np.testing.assert_array_equal(np.concatenate([s[0] for s in shards]), x)
        np.testing.assert_array_equal(np.concatenate([s[1] for s in shards]), y)
    # Training: every process holds the single-process result.
    for run in runs:
        assert run["process_count"] == num_processes
        assert sorted(run["variants"]) == sorted([*names, "fg-data-global"])
        for name, got in run["variants"].items():
            want = reference[name.removesuffix("-global")]
            np.testing.assert_allclose(got["losses"], want["losses"], RTOL, ATOL)
            np.testing.assert_allclose(got["params"], want["params"], RTOL, ATOL)


def test_two_processes_every_estimator(tmp_path):
    """Two processes, every step `fwdeqx.distributed` offers (forward gradient
    data- and tangent-parallel, backprop, SPSA, the `fwdeqx.local` estimators),
    each process feeding its Grain shard of every batch: after 3 steps the
    parameters equal single-process `fwdeqx.make_step`'s on the whole batches,
    also when the batch comes as global `jax.Array`s."""
    commands = _workers(2, tmp_path)
    commands.append([*WORKER, "--reference", f"--out={tmp_path}"])
    _check_ok(_launch(commands, tmp_path / "logs"))
    _check_against_reference(tmp_path, 2, list(worker.variants()))


FOUR_PROCESS_VARIANTS = ("fg-data", "activity-data")


def test_four_processes_and_a_lost_peer(tmp_path):
    """Four processes: data-parallel forward gradient (one all-reduce per step)
    and activity perturbation (partitioned by XLA) equal the single-process
    steps. Then the last process is killed
    (SIGKILL) while the others wait for it: JAX's heartbeat stops them with an
    error naming the dead process, within the launch's deadline."""
    variants = ",".join(FOUR_PROCESS_VARIANTS)
    commands = _workers(4, tmp_path, f"--variants={variants}", "--lose-peer")
    commands.append(
        [*WORKER, "--reference", f"--variants={variants}", f"--out={tmp_path}"]
    )
    results = _launch(commands, tmp_path / "logs")
    *survivors, (killed, _), reference = results
    _check_ok([reference])
    assert killed == -signal.SIGKILL
    for code, output in survivors:
        assert code != 0
        assert re.search(r"tasks are unhealthy|another task died", output), output[
            -4000:
        ]
    _check_against_reference(tmp_path, 4, FOUR_PROCESS_VARIANTS)


def _recipe(path: Path) -> None:
    """Write the recipe of docs/distributed.md to `path`."""
    text = (ROOT / "docs" / "distributed.md").read_text()
    match = re.search(r"<!-- recipe: train.py .*?-->\n```python\n(.*?)```", text, re.S)
    assert match, "the recipe block of docs/distributed.md is missing"
    path.write_text(match.group(1))


def _load(path: Path):
    like = MLP(key=jax.random.key(0), in_size=64, width=32, depth=1, out_size=4)
    return eqx.tree_deserialise_leaves(path, like)


def test_docs_recipe_trains_on_two_processes(tmp_path):
    """The recipe of docs/distributed.md, run literally as 2 processes on
    127.0.0.1 with the shell loop's arguments, trains: its parameters after 3 steps
    equal the same script's with single-process `fwdeqx.make_step`."""
    script = tmp_path / "train.py"
    _recipe(script)
    port = _free_port()
    commands = [
        [
            *WORKER,
            "--recipe",
            str(script),
            "--steps=3",
            f"--out={tmp_path / 'reference.eqx'}",
        ]
    ]
    commands += [  # `python train.py ...`, as the shell loop of the docs
        [
            str(script),
            f"--coordinator=127.0.0.1:{port}",
            "--num-processes=2",
            f"--process-id={i}",
            "--steps=3",
            f"--out={tmp_path / 'model.eqx'}",
        ]
        for i in range(2)
    ]
    _check_ok(_launch(commands, tmp_path / "logs"))
    got, want = _load(tmp_path / "model.eqx"), _load(tmp_path / "reference.eqx")
    got, want = eqx.filter((got, want), eqx.is_array)
    for a, b in zip(jtu.tree_leaves(got), jtu.tree_leaves(want), strict=True):
        np.testing.assert_allclose(a, b, RTOL, ATOL)


def test_bad_process_arguments():
    """Checked before anything starts: no runtime is needed."""
    with pytest.raises(ValueError, match=r"process_id` must be in 0\.\.1"):
        fwdeqx.distributed.initialize("127.0.0.1:1", 2, 2)
    with pytest.raises(ValueError, match="at least 1"):
        fwdeqx.distributed.initialize("127.0.0.1:1", 0, 0)
    with pytest.raises(ValueError, match="'host:port'"):
        fwdeqx.distributed.initialize("127.0.0.1", 2, 1)


def test_unreachable_coordinator_times_out():
    """A process other than 0 waits a bounded time for the coordinator, then
    raises an error naming it (JAX alone would abort the process)."""
    port = _free_port()  # nothing listens there
    with pytest.raises(TimeoutError, match=f"coordinator at 127.0.0.1:{port}"):
        fwdeqx.distributed.initialize(f"127.0.0.1:{port}", 2, 1, timeout=1)


def test_mismatched_num_processes(tmp_path):
    """Process 1 says there are 3 processes, process 0 (the coordinator) says 2:
    JAX alone would go on with 2; both processes stop with an error listing what
    each one passed."""
    first, second = _workers(2, tmp_path)
    second[second.index("--num-processes=2")] = "--num-processes=3"
    for code, output in _launch([first, second], tmp_path / "logs"):
        assert code != 0
        assert "disagree on `num_processes` (process 0: 2, process 1: 3" in output


# ------------------------------------------------------- the jobs on processes


def _job(out: Path, argv: list[str], num_processes: int = 2) -> list[list[str]]:
    """`python -m experiments.mnist_compare ARGV --out OUT` on `num_processes`
    processes, as docs/distributed.md launches it on one machine."""
    port = _free_port()
    return [
        [
            "-m",
            "experiments.mnist_compare",
            *argv,
            f"--out={out}",
            f"--coordinator=127.0.0.1:{port}",
            f"--num-processes={num_processes}",
            f"--process-id={i}",
        ]
        for i in range(num_processes)
    ]


def _kill_second_after_checkpoints(out: Path, count: int = 2):
    def watch(processes: list[subprocess.Popen]) -> None:
        deadline = time.monotonic() + TIMEOUT
        while len(list(out.glob("checkpoints/*/step-*.ckpt"))) < count:
            assert all(p.poll() is None for p in processes), "a process ended early"
            assert time.monotonic() < deadline, "no checkpoint written in time"
            time.sleep(0.02)
        os.killpg(processes[1].pid, signal.SIGKILL)

    return watch


def test_mnist_compare_on_two_processes_killed_and_resumed(tmp_path):
    """`experiments.mnist_compare` on 2 processes (each reading its half of every
    batch): only process 0 reports and writes, and the run matches the
    single-process one up to float rounding. Killed mid-run (SIGKILL of process
    1), process 0 stops with an error naming the dead task; the same command
    started again resumes from the last checkpoint and ends bit-identical to the
    uninterrupted 2-process run."""
    data = write_random_mnist(tmp_path / "data", train=256, test=64)
    argv = [
        "--model", "logreg", "--data-dir", str(data), "--iterations", "600",
        "--eval-every", "10", "--seeds", "1", "--estimators", "fwd-gaussian",
        "--optimizers", "sgd", "--lrs", "0.01", "--checkpoint-every", "1",
    ]  # fmt: skip
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    (first, output0), (second, output1) = _launch(_job(whole, argv), tmp_path / "a")
    _check_ok([(first, output0), (second, output1)])
    assert "[1/1] sgd 0.01 fwd-gaussian seed 0: val loss" in output0
    assert "[1/1]" not in output1 and "Outputs in" not in output1

    mnist_compare.main([*argv, "--out", str(tmp_path / "single")])
    (got,), (want,) = (
        runs_without_times(whole),
        runs_without_times(tmp_path / "single"),
    )
    np.testing.assert_allclose(got["train_loss"], want["train_loss"], rtol=1e-4)
    np.testing.assert_allclose(got["val_loss"], want["val_loss"], rtol=1e-4)

    results = _launch(
        _job(killed, argv), tmp_path / "b", _kill_second_after_checkpoints(killed)
    )
    (survivor, output), (code, _) = results
    assert code == -signal.SIGKILL and survivor != 0
    assert re.search(r"tasks are unhealthy|another task died", output), output[-4000:]

    _check_ok(_launch(_job(killed, argv), tmp_path / "c"))
    assert runs_without_times(killed) == runs_without_times(whole)
    assert final_payloads(killed) == final_payloads(whole)
