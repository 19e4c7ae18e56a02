"""Shared test helpers."""

import statistics

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np


def tree_allclose(x, y, *, rtol=1e-5, atol=1e-8) -> bool:
    """Same structure, and every array leaf close; non-array leaves equal."""
    x_arrays, x_static = eqx.partition(x, eqx.is_array)
    y_arrays, y_static = eqx.partition(y, eqx.is_array)
    if jtu.tree_structure(x_arrays) != jtu.tree_structure(y_arrays):
        return False
    if not eqx.tree_equal(x_static, y_static):
        return False
    return all(
        x_leaf.shape == y_leaf.shape
        and np.allclose(np.asarray(x_leaf), np.asarray(y_leaf), rtol=rtol, atol=atol)
        for x_leaf, y_leaf in zip(
            jtu.tree_leaves(x_arrays), jtu.tree_leaves(y_arrays), strict=True
        )
    )


def tree_dot(x, y) -> jax.Array:
    """Σ over leaves of ⟨x_leaf, y_leaf⟩; `None` leaves are skipped."""
    products = [
        jnp.vdot(a, b)
        for a, b in zip(jtu.tree_leaves(x), jtu.tree_leaves(y), strict=True)
    ]
    return sum(products, start=jnp.zeros((), products[0].dtype))


def finite_difference_jvp(fn, x, v, *, eps=1e-6):
    """Central difference of the scalar `fn` at `x` along the pytree `v` (use
    float64)."""
    shift = lambda s: eqx.apply_updates(x, jtu.tree_map(lambda t: s * t, v))
    return (fn(shift(eps)) - fn(shift(-eps))) / (2 * eps)


# --- unbiasedness -------------------------------------------------------------------

ALPHA = 1e-3
"""False-failure probability of one `assert_unbiased` call on a correct estimator."""


def flat_estimates(estimator, fun, x, *args, key, num):
    """`[num, D]`: `num` estimates of `fun`'s gradient at `x`, one per key of
    `jax.random.split(key, num)`, each flattened over the floating leaves of `x`."""
    one = lambda k: estimator(fun, x, *args, key=k)[1]
    grads = eqx.filter_jit(eqx.filter_vmap(one))(jax.random.split(key, num))
    leaves = [np.asarray(g) for g in jtu.tree_leaves(grads)]
    return np.concatenate([g.reshape(num, -1) for g in leaves], axis=1)


def exact_gradient(fun, x, *args):
    """`fun`'s gradient at `x` by backprop, flattened as `flat_estimates`."""
    import fwdeqx

    grads = fwdeqx.Backprop()(fun, x, *args, key=jax.random.key(0))[1]
    return np.concatenate([np.asarray(g).reshape(-1) for g in jtu.tree_leaves(grads)])


def unbiasedness(samples, truth):
    """`(ok, worst)`: whether every coordinate's sample mean is within
    z·σ̂/√M of `truth` (z the normal quantile 1 − α/(2D), Bonferroni over the D
    coordinates), and the largest |error| / bound. Coordinates without variance
    (exact parts) must match to 1e-9."""
    m, d = samples.shape
    z = statistics.NormalDist().inv_cdf(1 - ALPHA / (2 * d))
    bound = z * samples.std(axis=0, ddof=1) / np.sqrt(m) + 1e-9
    ratio = np.abs(samples.mean(axis=0) - truth) / bound
    return bool(np.all(ratio <= 1)), float(ratio.max())


def assert_unbiased(estimator, fun, x, *args, key, num=3000, truth=None):
    """Assert that `estimator`'s gradient of `fun(x, *args)` is unbiased: the mean of
    `num` estimates (keys split from `key`) is, in every coordinate, within the
    Bonferroni bound of `unbiasedness` around the exact gradient (`truth`, or
    `fwdeqx.Backprop()`'s; use float64). Under the central-limit approximation a
    correct estimator fails with probability at most `ALPHA` = 0.1% for a random
    key; the keys are fixed, so the outcome is reproducible. Returns the samples,
    for further checks on the same draws."""
    samples = flat_estimates(estimator, fun, x, *args, key=key, num=num)
    truth = exact_gradient(fun, x, *args) if truth is None else truth
    ok, worst = unbiasedness(samples, truth)
    assert ok, f"{estimator!r}: worst |mean − exact| / bound = {worst:.2f}"
    return samples


def write_random_mnist(folder, *, train: int, test: int, seed: int = 0):
    """MNIST-format IDX files of random 28x28 images and labels in `folder` (made
    if missing): train-* with `train` images, t10k-* with `test`. Returns
    `folder`."""
    from pathlib import Path

    from fwdeqx.data._idx import write_idx

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, count in (("train", train), ("t10k", test)):
        labels = rng.integers(0, 10, count).astype(np.uint8)
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels)
    return folder
