"""Overhead of the MNIST experiment's training loop beyond the raw step time.

Three ways to run the same steps (paper MLP, SGD, minibatch 64), timed in
interleaved rounds so that drift of the machine hits them alike:

- `raw`: `fwdeqx.make_step` called in a Python loop on one batch already on the
  device, synchronised once at the end: the cost of the steps alone.
- `scan` (what `experiments.mnist_compare` runs): the experiments' loop,
  `experiments.runner.train_chunks`, i.e. chunks of `steps` steps in one jitted
  `lax.scan`, fed by `fwdeqx.data.batches` (the next chunk is loaded while the
  device computes), losses fetched once per chunk; its training time excludes
  compilation and evaluation, as in the experiment.
- `python`: the alternative: the jitted step in a Python loop fed by
  `fwdeqx.data.batches` one batch at a time, losses kept on the device and fetched
  once per chunk.

`overhead = loop time per step / raw time per step - 1`; the goal is < 10%.
`run()` writes no files.
"""

import time
import types
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._timing import median_of_self_timed


GOAL = 0.10


def _synthetic_dataset(num_train: int, num_val: int) -> types.SimpleNamespace:
    rng = np.random.default_rng(0)
    return types.SimpleNamespace(
        name="synthetic",
        train_images=rng.integers(0, 256, (num_train, 28, 28), dtype=np.uint8),
        train_labels=rng.integers(0, 10, num_train).astype(np.int32),
        val_images=rng.integers(0, 256, (num_val, 28, 28), dtype=np.uint8),
        val_labels=rng.integers(0, 10, num_val).astype(np.int32),
    )


def run_setup(
    estimator: str, model: str, dataset, cache, *, seed: int, steps: int, lr: float
) -> dict[str, Any]:
    """What `experiments.mnist_compare` trains for one run with plain SGD, from the
    registry and the runner: the step, the `runner.Training` of its chunk program
    (shared through the `runner.Cache` `cache`, initial state from `key(seed)`)
    and its first `steps` batches (seed `seed`'s order) stacked as one chunk."""
    from experiments import registry, runner

    import fwdeqx
    from fwdeqx import data, models

    model_key, train_key = jax.random.split(jax.random.key(seed))
    network = registry.MODELS[model](key=model_key)
    step = fwdeqx.make_step(
        lambda m, b: models.cross_entropy(m, *b),
        registry.make_optimizer("sgd", lr),
        registry.make_estimator(estimator),
    )
    params, static = eqx.partition(network, eqx.is_array)
    program = cache.program(
        (estimator, model, lr), lambda: runner.make_chunk_fn(step, static)
    )
    layout = "image" if model == "cnn" else "flat"
    batches = data.batches(dataset.train_images, dataset.train_labels, seed=seed,
                           num_steps=steps, layout=layout)  # fmt: skip
    return {
        "step": step,
        "static": static,
        "training": runner.Training(program, (params, step.init(network)), train_key),
        "chunk": next(runner.StackedChunks(batches, [steps])),
    }


def _raw(step, model, opt_state, batch, keys) -> float:
    start = time.perf_counter()
    loss = None
    for key in keys:
        model, opt_state, loss = step(model, opt_state, batch, key)
    jax.block_until_ready(loss)
    return (time.perf_counter() - start) / len(keys)


def _python_loop(step, model, opt_state, batch_iter, key, steps: int) -> float:
    start = time.perf_counter()
    losses = []
    for index in range(steps):
        x, y = next(batch_iter)
        model, opt_state, loss = step(
            model, opt_state, (x, y), jax.random.fold_in(key, index)
        )
        losses.append(loss)
    np.asarray(jnp.stack(losses))  # the one fetch per chunk
    return (time.perf_counter() - start) / steps


def _measure(estimator: str, dataset, steps: int, repeats: int) -> dict[str, Any]:
    from experiments import runner

    from fwdeqx import data

    cache = runner.Cache()
    setup = run_setup(estimator, "mlp", dataset, cache, seed=0, steps=steps, lr=1e-3)
    step = setup["step"]
    model = eqx.combine(setup["training"].carry[0], setup["static"])
    opt_state = step.init(model)
    first = next(iter(data.batches(dataset.train_images, dataset.train_labels)))
    batch = (jnp.asarray(first[0]), jnp.asarray(first[1]))
    keys = list(jax.random.split(jax.random.key(1), steps))
    batch_iter = iter(data.batches(dataset.train_images, dataset.train_labels))

    def scan_loop() -> float:
        run = run_setup(estimator, "mlp", dataset, cache, seed=0, steps=steps, lr=1e-3)
        chunks = runner.train_chunks(run["training"], iter([run["chunk"]]), [steps])
        return sum(chunk.seconds for chunk in chunks) / steps

    runners = {
        "raw": lambda: _raw(step, model, opt_state, batch, keys),
        "scan": scan_loop,
        "python": lambda: _python_loop(
            step, model, opt_state, batch_iter, jax.random.key(2), steps
        ),
    }
    per_step, samples = median_of_self_timed(runners, repeats)
    raw = per_step["raw"]
    return {
        "raw_ms": 1e3 * raw,
        "scan_ms": 1e3 * per_step["scan"],
        "python_ms": 1e3 * per_step["python"],
        "scan_overhead": per_step["scan"] / raw - 1,
        "python_overhead": per_step["python"] / raw - 1,
        "faster_loop": "scan" if per_step["scan"] <= per_step["python"] else "python",
        "samples_ms": {k: [1e3 * v for v in vs] for k, vs in samples.items()},
    }


def run(quick: bool = False) -> dict:
    """Measure the loop overheads; returns a JSON-ready dict (writes nothing)."""
    steps, repeats = (20, 2) if quick else (200, 5)
    dataset = _synthetic_dataset(2048 if quick else 10_000, 256 if quick else 1000)
    estimators = ("backprop", "fwd-gaussian")
    result: dict[str, Any] = {
        "name": "loop",
        "quick": quick,
        "device": str(jax.devices()[0].device_kind),
        "model": "mlp 784-1024-1024-10, SGD, batch 64",
        "steps_per_chunk": steps,
        "repeats": repeats,
        "goal_overhead": GOAL,
        "estimators": {},
    }
    with jax.numpy_dtype_promotion("standard"):
        for estimator in estimators:
            row = _measure(estimator, dataset, steps, repeats)
            result["estimators"][estimator] = row
            print(
                f"[loop] {estimator}: raw {row['raw_ms']:.2f} ms/step, "
                f"experiment loop (scan) {row['scan_ms']:.2f} ms "
                f"({100 * row['scan_overhead']:+.1f}%), python loop "
                f"{row['python_ms']:.2f} ms ({100 * row['python_overhead']:+.1f}%)",
                flush=True,
            )
    result["max_scan_overhead"] = max(
        row["scan_overhead"] for row in result["estimators"].values()
    )
    result["meets_goal"] = result["max_scan_overhead"] < GOAL
    return result


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
