"""Pieces every training experiment shares: a run's data identity, whole-split
evaluation, and cutting a batch stream into `lax.scan` chunks."""

import functools
import math
from collections.abc import Callable, Iterator
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree

import fwdeqx


EVAL_BATCH = 1000


def under_standard_promotion(fn: Callable) -> Callable:
    """`fn`, traced under standard dtype promotion: optax's Adam mixes its int32
    step count with float constants, which the strict promotion of the tests
    rejects."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with jax.numpy_dtype_promotion("standard"):
            return fn(*args, **kwargs)

    return wrapper


def data_identity(dataset: Any) -> str:
    """`<num_train>+<num_val>-<first 12 hex digits of the content fingerprint>`: part
    of every run's id, so a resume never counts runs made on other data (another
    folder, another split, a changed file)."""
    return (
        f"{len(dataset.train_labels)}+{len(dataset.val_labels)}-"
        f"{dataset.fingerprint[:12]}"
    )


def make_chunk_fn(
    step: fwdeqx.TrainStep, static: PyTree
) -> Callable[..., tuple[PyTree, Any, Float[Array, " n"]]]:
    """`chunk(params, opt_state, xs, ys, key, start) -> (params, opt_state, losses)`:
    `len(xs)` steps of `step` (estimate, optax update, apply) in one `lax.scan`.
    Step `i` uses `fold_in(key, i)`, so the numbers do not depend on how the run is
    cut into chunks."""

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
    """`evaluate(params) -> (mean cross-entropy, accuracy)` of the model
    `eqx.combine(params, static)` on a whole split, in padded batches of
    `EVAL_BATCH` under one `lax.map` (one compile, bounded memory)."""
    count = len(labels)
    size = min(EVAL_BATCH, count)
    num_batches = math.ceil(count / size)
    pad = num_batches * size - count
    xs = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
    ys = np.concatenate([labels, np.zeros((pad,), labels.dtype)])
    weights = np.concatenate([np.ones(count, np.float32), np.zeros(pad, np.float32)])
    batched = tuple(
        jnp.asarray(a.reshape(num_batches, size, *a.shape[1:]))
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


def stacked_chunks(
    batches: Iterator, sizes: list[int]
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The `(x, y)` batches of `batches`, stacked `size` at a time for each size."""
    for size in sizes:
        pairs = [next(batches) for _ in range(size)]
        yield (
            np.stack([np.asarray(x) for x, _ in pairs]),
            np.stack([np.asarray(y) for _, y in pairs]),
        )


def finite_or_none(value: float) -> float | None:
    """`value`, or `None` (JSON `null`) where it is NaN or infinite."""
    return value if math.isfinite(value) else None
