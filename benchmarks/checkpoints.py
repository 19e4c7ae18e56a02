"""Checkpoint size and time: `python -m benchmarks.checkpoints`.

For the paper MLP (784-1024-1024-10) under SGD and Adam, and the quick local-loss
network (`fl.mlp(784, 256, 2, 10, groups=64)`, Adam), the size of one checkpoint
file of `experiments.runner` (`--checkpoint-every`) and the median time to write it
(serialise, SHA-256, write, fsync, rename, fsync of the folder) and to read it back
into a run, over `ROUNDS` repetitions in a temporary folder of the working
directory's file system; and each as a multiple of one backprop training step of
the same network and optimizer (batch 64, median of `STEPS`), timed in the same
process.
"""

import dataclasses
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from experiments import registry, runner

import fwdeqx
from fwdeqx import models


ROUNDS = 7
STEPS = 50
RECORD_POINTS = 200  # a 20,000-step run evaluated every 100 steps


@dataclasses.dataclass
class _Chunks:
    """Stands in for a run's data iterator: restoring sets its position."""

    state: Any = None

    def set_state(self, state: Any, sizes: list[int]) -> None:
        self.state = state


def _setups() -> dict[str, tuple[Any, Any]]:
    """name -> (model, optimizer): what a run's checkpoint holds."""
    key = jax.random.key(0)
    local = registry.make_local_network(
        "mlp", {"width": 256, "depth": 2, "groups": 64}, key=key
    )
    paper = registry.MODELS["mlp"](key=key)
    return {
        "paper MLP, SGD": (paper, registry.make_optimizer("sgd", 1e-3)),
        "paper MLP, Adam": (paper, registry.make_optimizer("adam", 1e-4)),
        "quick local-loss network, Adam": (
            local,
            registry.make_optimizer("adam", 3e-3),
        ),
    }


def _record() -> dict[str, Any]:
    curve = [float(i) for i in range(RECORD_POINTS)]
    names = ("iteration", "train_loss", "val_loss", "val_accuracy", "time")
    return {"curves": dict.fromkeys(names, curve), "train_time": 1.0}


def backprop_step_seconds(model: Any, optimizer: Any) -> float:
    """Median time of one jitted backprop training step on a batch of 64."""

    def loss(model, batch):
        return models.cross_entropy(model, *batch)

    step = fwdeqx.make_step(loss, optimizer, fwdeqx.Backprop())
    call = eqx.filter_jit(step.__call__)
    batch = (jnp.zeros((64, 784)), jnp.zeros((64,), jnp.int32))
    state, key = step.init(model), jax.random.key(0)
    times = []
    for _ in range(STEPS + 1):  # the first call compiles
        start = time.perf_counter()
        model, state, value = call(model, state, batch, key)
        jax.block_until_ready(value)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def measure(model: Any, optimizer: Any, folder: Path) -> dict[str, Any]:
    """Size, write and read times of one run's checkpoints in `folder`."""
    params = eqx.filter(model, eqx.is_array)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    training = runner.Training(
        runner.Program(lambda: None), (params, opt_state), jax.random.key(1)
    )
    training.data_state = {"grain": {"next_index": 0}, "config": {}}
    checkpoints = runner.RunCheckpoints(
        folder, {"run_id": folder.name}, runner.Every(steps=1)
    )
    writes, reads = [], []
    for step in range(1, ROUNDS + 1):
        training.done = step
        start = time.perf_counter()
        checkpoints.save(training, _record())
        writes.append(time.perf_counter() - start)
        start = time.perf_counter()
        checkpoints.restore(training, _Chunks(), [1] * (ROUNDS + 1))
        jax.block_until_ready(training.carry)
        reads.append(time.perf_counter() - start)
    (newest, *_) = sorted(folder.glob("step-*.ckpt"), reverse=True)
    num_params = sum(leaf.size for leaf in jax.tree.leaves(params))
    return {
        "parameters": int(num_params),
        "bytes": newest.stat().st_size,
        "array_bytes": 4 * sum(x.size for x in jax.tree.leaves((params, opt_state))),
        "write_s": statistics.median(writes),
        "read_s": statistics.median(reads),
        "backprop_step_s": backprop_step_seconds(model, optimizer),
    }


def run(quick: bool = False) -> dict[str, Any]:
    del quick  # already small: a few files of at most 23 MB
    results = {}
    with tempfile.TemporaryDirectory(dir=".") as root:
        for name, (model, optimizer) in _setups().items():
            folder = Path(root) / name.replace(" ", "-").replace(",", "")
            results[name] = measure(model, optimizer, folder)
    return {"rounds": ROUNDS, "results": results}


def main() -> None:
    print(f"jax {jax.__version__}, fwdeqx {fwdeqx.__version__}")
    measured = run()
    print("| run | parameters | file | write | read | write / backprop step |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in measured["results"].items():
        print(
            f"| {name} | {r['parameters']:,} | {r['bytes'] / 2**20:.2f} MiB | "
            f"{1e3 * r['write_s']:.0f} ms | {1e3 * r['read_s']:.0f} ms | "
            f"{r['write_s'] / r['backprop_step_s']:.1f} |"
        )


if __name__ == "__main__":
    main()
