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
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree

import fwdeqx
from fwdeqx import models

from . import _registry


MODELS: dict[str, Callable[..., eqx.Module]] = {
    "mlp": models.MLP,
    "logreg": models.LogisticRegression,
    "cnn": models.CNN,
}
# A run has diverged when a training loss is non-finite or exceeds this multiple of
# the first one (ln 10 ≈ 2.3 at initialisation, so the bound is about 23).
DIVERGENCE_FACTOR = 10.0
_EVAL_BATCH = 1000


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

    @property
    def run_id(self) -> str:
        return (
            f"{self.dataset}-{self.model}-{self.optimizer}-lr{self.lr:g}-"
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


def make_chunk_fn(
    step: fwdeqx.TrainStep, static: PyTree
) -> Callable[..., tuple[PyTree, Any, Float[Array, " n"]]]:
    """`chunk(params, opt_state, xs, ys, key, start) -> (params, opt_state, losses)`:
    `len(xs)` steps in one `lax.scan`. Step `i` uses `fold_in(key, i)`, so the
    numbers do not depend on how the run is cut into chunks."""

    def chunk(params, opt_state, xs, ys, key: PRNGKeyArray, start: Int[Array, ""]):
        def body(carry, inputs):
            params, opt_state = carry
            x, y, index = inputs
            model = eqx.combine(params, static)
            model, opt_state, loss = step(
                model, opt_state, (x, y), jax.random.fold_in(key, index)
            )
            return (eqx.filter(model, eqx.is_array), opt_state), loss

        indices = start + jnp.arange(xs.shape[0], dtype=start.dtype)
        (params, opt_state), losses = jax.lax.scan(
            body, (params, opt_state), (xs, ys, indices)
        )
        return params, opt_state, losses

    return jax.jit(chunk, donate_argnums=(0, 1))


def make_evaluate(
    static: PyTree, images: Float[np.ndarray, "n ..."], labels: Int[np.ndarray, " n"]
) -> Callable[[PyTree], tuple[float, float]]:
    """`evaluate(params) -> (mean loss, accuracy)` on the whole split, in padded
    batches of `_EVAL_BATCH` under one `lax.map` (one compile, bounded memory)."""
    count = len(labels)
    num_batches = math.ceil(count / _EVAL_BATCH)
    pad = num_batches * _EVAL_BATCH - count
    xs = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
    ys = np.concatenate([labels, np.zeros((pad,), labels.dtype)])
    weights = np.concatenate([np.ones(count, np.float32), np.zeros(pad, np.float32)])
    batched = tuple(
        jnp.asarray(a.reshape(num_batches, _EVAL_BATCH, *a.shape[1:]))
        for a in (xs, ys, weights)
    )

    @jax.jit
    def sums(params):
        model = eqx.combine(params, static)

        def one(batch):
            x, y, w = batch
            logits = jax.vmap(model)(x)
            losses = -jnp.take_along_axis(
                jax.nn.log_softmax(logits), y[:, None], axis=-1
            )[:, 0]
            correct = (jnp.argmax(logits, axis=-1) == y).astype(jnp.float32)
            return jnp.sum(losses * w), jnp.sum(correct * w)

        loss_sums, correct_sums = jax.lax.map(one, batched)
        return jnp.sum(loss_sums), jnp.sum(correct_sums)

    def evaluate(params) -> tuple[float, float]:
        loss_sum, correct = jax.device_get(sums(params))
        return float(loss_sum) / count, float(correct) / count

    return evaluate


def _chunks(
    batches: Iterator, sizes: list[int]
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for size in sizes:
        pairs = [next(batches) for _ in range(size)]
        yield (
            np.stack([np.asarray(x) for x, _ in pairs]),
            np.stack([np.asarray(y) for _, y in pairs]),
        )


def first_divergent_step(losses: np.ndarray, threshold: float) -> int | None:
    """Index of the first loss that is non-finite or above `threshold`, if any."""
    bad = ~np.isfinite(losses) | (losses > threshold)
    return int(np.argmax(bad)) if bad.any() else None


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def train_run(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """See `_train_run`; traced under standard dtype promotion (optax's Adam mixes
    its int32 step count with float constants, which strict promotion rejects)."""
    with jax.numpy_dtype_promotion("standard"):
        return _train_run(*args, **kwargs)


def _train_run(
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
    time), compile time, final validation loss and accuracy, and the divergence
    flag with the iteration where the run stopped.
    """
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
    cache = {} if cache is None else cache
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

    sizes = [config.eval_every] * (config.iterations // config.eval_every)
    if config.iterations % config.eval_every:
        sizes.append(config.iterations % config.eval_every)
    batch_iter = iter(
        batches(
            dataset.train_images,
            dataset.train_labels,
            batch_size=config.batch_size,
            seed=config.seed,
            num_steps=config.iterations,
            layout=layout,
        )
    )
    chunks = _chunks(batch_iter, sizes)

    compile_time = 0.0
    train_time = 0.0
    record: dict[str, list] = {
        "iteration": [],
        "train_loss": [],
        "val_loss": [],
        "val_accuracy": [],
        "time": [],
    }
    threshold = math.inf
    diverged_at: int | None = None
    done = 0
    bar = progress(total=config.iterations, desc=config.run_id) if progress else None
    xs, ys = next(chunks)
    for index, size in enumerate(sizes):
        if size not in compiled:
            start_compile = time.perf_counter()
            compiled[size] = chunk_fn.lower(
                params, opt_state, xs, ys, train_key, jnp.int32(0)
            ).compile()
            compile_time += time.perf_counter() - start_compile
        start = time.perf_counter()
        params, opt_state, losses = compiled[size](
            params, opt_state, xs, ys, train_key, jnp.int32(done)
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
        val_loss, val_accuracy = evaluate(params)
        record["iteration"].append(done)
        record["train_loss"].append(float(np.mean(losses)))
        record["val_loss"].append(_finite_or_none(val_loss))
        record["val_accuracy"].append(val_accuracy)
        record["time"].append(train_time)
        if bar is not None:
            bar.update(size)
            bar.set_postfix(loss=f"{float(losses[-1]):.4f}", val=f"{val_loss:.4f}")
    if bar is not None:
        bar.close()

    diverged = diverged_at is not None
    return {
        "run_id": config.run_id,
        "config": dataclasses.asdict(config),
        "dataset": dataset.name,
        **record,
        "compile_time": compile_time,
        "train_time": train_time,
        "final_val_loss": None if diverged else record["val_loss"][-1],
        "final_val_accuracy": None if diverged else record["val_accuracy"][-1],
        "diverged": diverged,
        "diverged_at": diverged_at,
    }
