"""Part 1, gradient quality: at several points of backprop-SGD training of the
paper's MLP, the cosine and relative error of each method's estimate to the true
minibatch gradient, for every K."""

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import fwdeqx
from fwdeqx import data, models

from ..registry import make_estimator
from ._presets import QUALITY_METHODS, Preset


REGISTRY_SPECS = {
    "mean": "fwd-gaussian",
    "projection": "fwd-projection",
    "projection-rescaled": "fwd-projection-rescaled",
    "projection-lowrank": "fwd-lowrank-projection",
    "spsa": "spsa",
}
"""Each quality method's estimator in `experiments.registry`, which adds `-kK`."""

TRAINING_BATCH = 64
LEARNING_RATE = 0.1
"""Plain SGD with backprop between checkpoints."""


def quality_estimator(method: str, num: int) -> fwdeqx.AbstractEstimator:
    """The estimator of quality method `method` with K = `num`."""
    return make_estimator(f"{REGISTRY_SPECS[method]}-k{num}")


def _loss(model, batch):
    return models.cross_entropy(model, *batch)


def _flat(tree) -> jax.Array:
    leaves = jax.tree.leaves(eqx.filter(tree, eqx.is_inexact_array))
    return jnp.concatenate([leaf.ravel() for leaf in leaves])


@eqx.filter_jit
def _sgd_step(model, batch):
    grads = eqx.filter_grad(_loss)(model, batch)
    return eqx.apply_updates(model, jax.tree.map(lambda g: -LEARNING_RATE * g, grads))


@eqx.filter_jit
def _measure(estimator, model, batch, true, key):
    """Cosine and relative error of one estimate to the flat true gradient."""
    _, grad = estimator(_loss, model, batch, key=key)
    g = _flat(grad)
    cosine = jnp.dot(g, true) / (jnp.linalg.norm(g) * jnp.linalg.norm(true))
    error = jnp.linalg.norm(g - true) / jnp.linalg.norm(true)
    return cosine, error


def _row(estimator, model, batch, true, key, *, checkpoint, repeats) -> dict:
    """Mean and std over `repeats` draws (key `fold_in(key, 1000·checkpoint + r)`)."""
    cosines, errors = [], []
    for repeat in range(repeats):
        subkey = jax.random.fold_in(key, 1000 * checkpoint + repeat)
        cosine, error = _measure(estimator, model, batch, true, subkey)
        cosines.append(float(cosine))
        errors.append(float(error))
    return {
        "forward_passes": estimator.num_forward_passes,
        "cosine_mean": float(np.mean(cosines)),
        "cosine_std": float(np.std(cosines)),
        "relative_error_mean": float(np.mean(errors)),
        "relative_error_std": float(np.std(errors)),
    }


def gradient_quality(
    preset: Preset, dataset: data.Dataset, seed: int = 0
) -> dict[str, Any]:
    """Cosine and relative error of every method and K at every checkpoint.

    The measured minibatch is the first batch of `fwdeqx.data.batches` with seed
    `seed + 1`; the SGD steps between checkpoints take batches of 64 with seed
    `seed`."""
    model_key, key = jax.random.split(jax.random.key(seed))
    model = models.MLP(key=model_key, width=preset.width)
    images, labels = dataset.train_images, dataset.train_labels
    x, y = next(
        data.batches(
            images, labels, batch_size=preset.quality_batch, seed=seed + 1, num_steps=1
        )
    )
    batch = (jnp.asarray(x), jnp.asarray(y))
    train_iter = data.batches(
        images,
        labels,
        batch_size=TRAINING_BATCH,
        seed=seed,
        num_steps=max(preset.quality_checkpoints),
    )
    results, done = [], 0
    for checkpoint in preset.quality_checkpoints:
        while done < checkpoint:
            xb, yb = next(train_iter)
            model = _sgd_step(model, (jnp.asarray(xb), jnp.asarray(yb)))
            done += 1
        true = _flat(eqx.filter_grad(_loss)(model, batch))
        for method in QUALITY_METHODS:
            for num in preset.quality_ks:
                row = _row(
                    quality_estimator(method, num),
                    model,
                    batch,
                    true,
                    key,
                    checkpoint=checkpoint,
                    repeats=preset.quality_repeats,
                )
                results.append(
                    {"checkpoint": checkpoint, "method": method, "K": num, **row}
                )
    num_parameters = len(_flat(model))
    return {
        "num_parameters": num_parameters,
        "width": preset.width,
        "batch_size": preset.quality_batch,
        "repeats": preset.quality_repeats,
        "sqrt_K_over_n": {k: math.sqrt(k / num_parameters) for k in preset.quality_ks},
        "results": results,
    }
