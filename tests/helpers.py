"""Shared test helpers."""

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
