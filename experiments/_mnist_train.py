"""One training run of the MNIST comparison: model, estimator, optimizer, seed.

The loop runs `eval_every` steps per call of one jitted `jax.lax.scan` (one compile
per configuration, no device synchronisation inside a chunk), loads the next chunk
of batches on the host while the device computes, then fetches the chunk's losses
and evaluates on the whole validation split. Wall time counts the training chunks
(data loading included) and excludes compilation and evaluation.
"""

import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

import fwdeqx
from fwdeqx import models

from . import _registry
from ._runs import (
    data_identity as data_identity,
    finite_or_none,
    make_chunk_fn,
    make_evaluate,
    stacked_chunks,
    under_standard_promotion,
)


MODELS: dict[str, Callable[..., eqx.Module]] = {
    "mlp": models.MLP,
    "logreg": models.LogisticRegression,
    "cnn": models.CNN,
}
# A run has diverged when a training loss is non-finite or exceeds this multiple of
# the first one (ln 10 ≈ 2.3 at initialisation, so the bound is about 23).
DIVERGENCE_FACTOR = 10.0


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything that determines one run's numbers."""

    dataset: str
    model: str
    optimizer: str
    lr: float
    estimator: str
    seed: int
    iterations: int
    eval_every: int
    batch_size: int = 64
    data: str = ""
    """The data's identity, `data_identity(dataset)`: sizes and content fingerprint.
    Part of `run_id` when set, so a resume never counts runs made on other data."""

    @property
    def run_id(self) -> str:
        data = f"-{self.data}" if self.data else ""
        return (
            f"{self.dataset}{data}-{self.model}-{self.optimizer}-lr{self.lr:g}-"
            f"{self.estimator}-n{self.iterations}-e{self.eval_every}-"
            f"b{self.batch_size}-seed{self.seed}"
        )

    @property
    def configuration(self) -> tuple[str, float, str]:
        """The (optimizer, lr, estimator) a run belongs to; seeds are its repeats."""
        return (self.optimizer, self.lr, self.estimator)

    def layout(self) -> str:
        return "image" if self.model == "cnn" else "flat"


def _loss(model: eqx.Module, batch: tuple[Array, Array]) -> Float[Array, ""]:
    return models.cross_entropy(model, *batch)


def first_divergent_step(losses: np.ndarray, threshold: float) -> int | None:
    """Index of the first loss that is non-finite or above `threshold`, if any."""
    bad = ~np.isfinite(losses) | (losses > threshold)
    return int(np.argmax(bad)) if bad.any() else None


@dataclasses.dataclass
class _Prepared:
    params: PyTree
    static: PyTree
    opt_state: Any
    train_key: PRNGKeyArray
    chunk_fn: Any
    compiled: dict[int, Any]
    evaluate: Callable[[PyTree], tuple[float, float]]
    layout: str


def _prepare(config: RunConfig, dataset: Any, to_float, cache: dict) -> _Prepared:
    """Initial model and optimizer state of `config`, and its jitted chunk and
    evaluation (shared through `cache` by the seeds of one configuration).

    One key per seed, split once: the model's initialisation and the tangents come
    from `key(seed)`, the batch order from `seed` (fwdeqx.data.batches), so two
    seeds share nothing random."""
    layout = config.layout()
    model_key, train_key = jax.random.split(jax.random.key(config.seed))
    model = MODELS[config.model](key=model_key)
    step = fwdeqx.make_step(
        _loss,
        _registry.make_optimizer(config.optimizer, config.lr),
        _registry.make_estimator(config.estimator),
    )
    opt_state = step.init(model)
    params, static = eqx.partition(model, eqx.is_array)
    cache_key = dataclasses.replace(config, seed=0)
    if cache_key not in cache:
        # Different seeds differ only in array leaves, so `static` is shared.
        cache[cache_key] = (
            make_chunk_fn(step, static),
            {},
            make_evaluate(
                static,
                to_float(dataset.val_images, layout=layout),
                np.asarray(dataset.val_labels),
            ),
        )
    chunk_fn, compiled, evaluate = cache[cache_key]
    return _Prepared(
        params, static, opt_state, train_key, chunk_fn, compiled, evaluate, layout
    )


def _compile(prepared: _Prepared, xs, ys) -> tuple[Any, float]:
    """The chunk compiled for `len(xs)` steps (cached), and the seconds it took."""
    size = xs.shape[0]
    if size in prepared.compiled:
        return prepared.compiled[size], 0.0
    start = time.perf_counter()
    prepared.compiled[size] = prepared.chunk_fn.lower(
        prepared.params, prepared.opt_state, xs, ys, prepared.train_key, jnp.int32(0)
    ).compile()
    return prepared.compiled[size], time.perf_counter() - start


@under_standard_promotion
def train_run(
    config: RunConfig,
    dataset: Any,
    *,
    batches: Callable[..., Iterator],
    to_float: Callable[..., np.ndarray],
    progress: Callable[..., Any] | None = None,
    cache: dict | None = None,
) -> dict[str, Any]:
    """Train one run and return its record for `runs.jsonl`.

    **Arguments:**

    - `config`: the run.
    - `dataset`: a `fwdeqx.data.Dataset`.
    - `batches`, `to_float`: `fwdeqx.data.batches` and `fwdeqx.data.to_float`.
    - `progress`: optional `tqdm`-like factory `progress(total=..., desc=...)`.
    - `cache`: a dict shared by the runs of a grid, so that the seeds of one
        configuration reuse its compiled chunk and evaluation (one compile per
        configuration; the later seeds record a compile time of 0).

    **Returns:**

    A JSON-ready dict: the curves (one point per `eval_every` steps: mean training
    loss over the window, validation loss and accuracy, cumulative training wall
    time), the validation loss and accuracy before training, compile time, final
    validation loss and accuracy, and the divergence flag with the iteration where
    the run stopped.
    """
    prepared = _prepare(config, dataset, to_float, {} if cache is None else cache)
    params, opt_state = prepared.params, prepared.opt_state
    initial_val_loss, initial_val_accuracy = prepared.evaluate(params)

    sizes = chunk_sizes(config)
    chunks = run_chunks(config, dataset, batches, prepared.layout)

    compile_time = 0.0
    train_time = 0.0
    record = new_curves()
    threshold = math.inf
    diverged_at: int | None = None
    done = 0
    bar = progress(total=config.iterations, desc=config.run_id) if progress else None
    xs, ys = next(chunks)
    for index, size in enumerate(sizes):
        compiled, seconds = _compile(prepared, xs, ys)
        compile_time += seconds
        start = time.perf_counter()
        params, opt_state, losses = compiled(
            params, opt_state, xs, ys, prepared.train_key, jnp.int32(done)
        )
        if index + 1 < len(sizes):
            xs, ys = next(chunks)  # overlaps with the device computing this chunk
        losses = np.asarray(losses)
        train_time += time.perf_counter() - start

        if done == 0 and math.isfinite(float(losses[0])):
            threshold = DIVERGENCE_FACTOR * float(losses[0])
        bad = first_divergent_step(losses, threshold)
        if bad is not None:
            diverged_at = done + bad + 1
            if bar is not None:
                bar.update(bad + 1)
                bar.set_postfix_str("diverged")
            break
        done += size
        val_loss, val_accuracy = prepared.evaluate(params)
        add_point(record, done, losses, (val_loss, val_accuracy), train_time)
        if bar is not None:
            bar.update(size)
            bar.set_postfix(loss=f"{float(losses[-1]):.4f}", val=f"{val_loss:.4f}")
    if bar is not None:
        bar.close()

    return run_record(
        config,
        dataset,
        initial=(initial_val_loss, initial_val_accuracy),
        curves=record,
        compile_time=compile_time,
        train_time=train_time,
        diverged_at=diverged_at,
    )


def chunk_sizes(config: RunConfig) -> list[int]:
    """Steps per chunk: `eval_every` each, the remainder last."""
    sizes = [config.eval_every] * (config.iterations // config.eval_every)
    if config.iterations % config.eval_every:
        sizes.append(config.iterations % config.eval_every)
    return sizes


def run_chunks(
    config: RunConfig, dataset: Any, batches: Callable[..., Iterator], layout: str
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The run's batches (its seed's order), stacked one chunk at a time."""
    batch_iter = batches(
        dataset.train_images,
        dataset.train_labels,
        batch_size=config.batch_size,
        seed=config.seed,
        num_steps=config.iterations,
        layout=layout,
    )
    return stacked_chunks(iter(batch_iter), chunk_sizes(config))


def new_curves() -> dict[str, list]:
    """The empty curves of a run record, filled once per `eval_every` steps."""
    return {
        "iteration": [],
        "train_loss": [],
        "val_loss": [],
        "val_accuracy": [],
        "time": [],
    }


def add_point(
    curves: dict[str, list],
    iteration: int,
    losses: np.ndarray,
    evaluation: tuple[float, float],
    train_time: float,
) -> None:
    """Append one record point: the chunk's mean training loss, the validation
    loss and accuracy after it, and the cumulative training time."""
    curves["iteration"].append(iteration)
    curves["train_loss"].append(float(np.mean(losses)))
    curves["val_loss"].append(finite_or_none(evaluation[0]))
    curves["val_accuracy"].append(evaluation[1])
    curves["time"].append(train_time)


def run_record(
    config: RunConfig,
    dataset: Any,
    *,
    initial: tuple[float, float],
    curves: dict[str, list],
    compile_time: float,
    train_time: float,
    diverged_at: int | None,
) -> dict[str, Any]:
    """A finished run as one JSON-ready line of `runs.jsonl`."""
    diverged = diverged_at is not None
    return {
        "run_id": config.run_id,
        "config": dataclasses.asdict(config),
        "dataset": dataset.name,
        "initial_val_loss": finite_or_none(initial[0]),
        "initial_val_accuracy": initial[1],
        **curves,
        "compile_time": compile_time,
        "train_time": train_time,
        "final_val_loss": None if diverged else curves["val_loss"][-1],
        "final_val_accuracy": None if diverged else curves["val_accuracy"][-1],
        "diverged": diverged,
        "diverged_at": diverged_at,
    }


@under_standard_promotion
def measure_step_times(
    configs: list[RunConfig],
    dataset: Any,
    *,
    batches: Callable[..., Iterator],
    to_float: Callable[..., np.ndarray],
    cache: dict | None = None,
    rounds: int = 7,
) -> dict[str, dict[str, Any]]:
    """Per-step training time of each configuration, measured interleaved.

    Each configuration runs `rounds` chunks of `config.eval_every` steps (its own
    compiled chunk, from its initial state, on the first batches of seed 0); the
    rounds go round-robin over the configurations, starting one further each round,
    so a burst of machine load hits every configuration alike. The step time is the
    median over rounds of (chunk wall time / steps).

    **Returns:**

    `{step_time_key(config): {"step_time": seconds, "rounds": [seconds, ...],
    "steps": N}}`.
    """
    cache = {} if cache is None else cache
    states = []
    for config in configs:
        prepared = _prepare(config, dataset, to_float, cache)
        size = config.eval_every
        xs, ys = next(
            stacked_chunks(
                iter(
                    batches(
                        dataset.train_images,
                        dataset.train_labels,
                        batch_size=config.batch_size,
                        seed=0,
                        num_steps=size,
                        layout=prepared.layout,
                    )
                ),
                [size],
            )
        )
        compiled, _ = _compile(prepared, xs, ys)
        # One untimed chunk: the first call of a compiled function pays for
        # allocations the others do not.
        state = compiled(
            prepared.params,
            prepared.opt_state,
            xs,
            ys,
            prepared.train_key,
            jnp.int32(0),
        )
        jax.block_until_ready(state)
        states.append([config, compiled, xs, ys, prepared.train_key, state, []])
    for round_index in range(rounds):
        shift = round_index % len(states)
        for entry in states[shift:] + states[:shift]:
            config, compiled, xs, ys, key, state, times = entry
            start = time.perf_counter()
            state = compiled(state[0], state[1], xs, ys, key, jnp.int32(0))
            jax.block_until_ready(state)
            times.append((time.perf_counter() - start) / config.eval_every)
            entry[5] = state
    return {
        step_time_key(config): {
            "step_time": float(np.median(times)),
            "rounds": times,
            "steps": config.eval_every,
        }
        for config, *_, times in states
    }


def step_time_key(config: RunConfig | dict[str, Any]) -> str:
    """`optimizer/estimator`: what a step's cost depends on (not the lr or seed)."""
    c = config if isinstance(config, dict) else dataclasses.asdict(config)
    return f"{c['optimizer']}/{c['estimator']}"
