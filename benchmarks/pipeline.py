"""Input-pipeline cost per batch of 64 against a backprop step of the paper's MLP
(784-1024-1024-10), measured in the same process.

`run(quick)` returns the numbers; `python -m benchmarks.pipeline [--quick]` prints
them as JSON. Writes nothing (the `python -m benchmarks` runner stores results).

Measured:

- `step_ms`: one jitted `fwdeqx.make_step(..., Backprop())` step on a batch already
  on the device (median over repeats).
- `pipeline_us`: one `next()` of `fwdeqx.data.batches` (shuffle, gather, uint8 ->
  float32) on MNIST-sized data (60,000 x 28 x 28 uint8), synchronous, in the
  consumer's thread: the CPU time the pipeline adds to every step.
- `ratio`: `pipeline_us / step_ms` (goal: <= 5%).
- `fed_step_ms`: a step fed from the pipeline (including the host-to-device copy
  of the NumPy batch), for the end-to-end picture.
- `alternatives_us` (full run only): other designs per batch of 64, for the record.
"""

import argparse
import json
import statistics
import time
from collections.abc import Callable, Iterator

import numpy as np


BATCH_SIZE = 64
NUM_IMAGES = 60_000


def _median_per_call(fn: Callable[[], object], calls: int, repeats: int) -> float:
    """Median over `repeats` of the mean seconds per call over `calls` calls."""
    return _interleaved({"fn": fn}, calls, repeats)["fn"]


def _interleaved(
    fns: dict[str, Callable[[], object]], calls: int, repeats: int
) -> dict[str, float]:
    """Like `_median_per_call` for several functions, alternating them round by
    round so that a change in machine load hits all of them alike."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            times[name].append((time.perf_counter() - start) / calls)
    return {name: statistics.median(values) for name, values in times.items()}


def _synthetic_mnist() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (NUM_IMAGES, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, NUM_IMAGES).astype(np.int32)
    return images, labels


def _make_step(batches: Iterator | None = None) -> Callable[[], None]:
    """One blocking backprop step of the paper's MLP on a batch of 64: a fixed batch
    already on the device, or the next batch of `batches` (NumPy, host)."""
    import jax
    import jax.numpy as jnp
    import optax

    import fwdeqx
    from fwdeqx.models import MLP, cross_entropy

    model = MLP(key=jax.random.key(0))
    step = fwdeqx.make_step(
        lambda m, batch: cross_entropy(m, *batch), optax.sgd(1e-3), fwdeqx.Backprop()
    )
    state = {"model": model, "opt": step.init(model), "key": jax.random.key(1)}
    fixed = (
        jnp.zeros((BATCH_SIZE, 784), jnp.float32),
        jnp.zeros((BATCH_SIZE,), jnp.int32),
    )

    def one_step():
        batch = fixed if batches is None else next(batches)
        state["key"], key = jax.random.split(state["key"])
        state["model"], state["opt"], loss = step(
            state["model"], state["opt"], batch, key
        )
        loss.block_until_ready()

    return one_step


def _alternatives(images, labels, calls: int) -> dict[str, float]:
    """Per-batch microseconds of designs that were not chosen."""
    import grain

    flat = images.reshape(len(images), -1)
    options = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)

    def convert(indices):
        x = np.divide(flat[indices], np.float32(255), dtype=np.float32)
        return x, labels[indices]

    per_record = (
        grain.MapDataset.range(len(images))
        .shuffle(seed=0)
        .batch(BATCH_SIZE, drop_remainder=True)
        .repeat(None)
    )
    record_iter = iter(per_record.to_iter_dataset(options))
    gather_iter = iter(per_record.map(convert).to_iter_dataset(options))
    numpy_rng = np.random.default_rng(0)
    fixed = np.sort(numpy_rng.permutation(len(images))[:BATCH_SIZE])
    return {
        "grain_per_record_shuffle_batch_indices_only": 1e6
        * _median_per_call(lambda: next(record_iter), calls // 4, 3),
        "grain_per_record_shuffle_batch_plus_gather": 1e6
        * _median_per_call(lambda: next(gather_iter), calls // 4, 3),
        "numpy_gather_and_convert_only": 1e6
        * _median_per_call(lambda: convert(fixed), calls, 3),
        "numpy_gather_uint8_only": 1e6
        * _median_per_call(lambda: flat[fixed], calls, 3),
    }


def run(quick: bool = False) -> dict:
    """Measure the pipeline against a backprop step; returns a JSON-ready dict."""
    import jax

    from fwdeqx import data

    calls, repeats = (100, 3) if quick else (500, 9)
    images, labels = _synthetic_mnist()
    pipeline = data.batches(images, labels, batch_size=BATCH_SIZE, seed=0)
    fed = data.batches(images, labels, batch_size=BATCH_SIZE, seed=1)
    # The pipeline runs 10x more calls per round, so that its rounds also span
    # epoch boundaries (937 batches per epoch) and include the permutations.
    seconds = _interleaved(
        {"step": _make_step(), "fed_step": _make_step(fed)}, calls, repeats
    )
    seconds |= _interleaved({"pipeline": lambda: next(pipeline)}, 10 * calls, repeats)
    result = {
        "name": "pipeline",
        "quick": quick,
        "device": str(jax.devices()[0].device_kind),
        "batch_size": BATCH_SIZE,
        "num_images": NUM_IMAGES,
        "step_ms": 1e3 * seconds["step"],
        "pipeline_us": 1e6 * seconds["pipeline"],
        "ratio": seconds["pipeline"] / seconds["step"],
        "goal_ratio": 0.05,
        "fed_step_ms": 1e3 * seconds["fed_step"],
        "fed_overhead_ratio": seconds["fed_step"] / seconds["step"] - 1,
    }
    if not quick:
        result["alternatives_us"] = _alternatives(images, labels, 2000)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description="Input pipeline vs backprop step.")
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    args = parser.parse_args()
    print(json.dumps(run(quick=args.quick), indent=2))


if __name__ == "__main__":
    main()
