"""Directional derivatives of a scalar function along K stacked directions, from one
batched forward-mode pass."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, Float, Key, PRNGKeyArray, PyTree, UInt32

from ._structured import prepare_jvp


def num_directions(directions: PyTree) -> int:
    """K, the size of the leading axis shared by every leaf of a stack."""
    leaves = jtu.tree_leaves(directions)
    if not leaves:
        raise ValueError("A stack of directions needs at least one array leaf.")
    return leaves[0].shape[0]


def map_directions(fn: Callable, directions: PyTree, out_axes: Any = 0) -> Any:
    """`fn` applied to each of the K directions stacked on the leading axis of every
    leaf of `directions`, with the results stacked by `out_axes` as
    `eqx.filter_vmap` does (`None`: the same for every direction).

    This is the one place the number of directions changes the program: for K > 1 a
    vmap, for K = 1 a direct call on the squeezed direction, with identical
    results. (On CPU the two K = 1 programs differ slightly and time alike within
    noise; the direct call keeps the K = 1 program the one it always was.)
    """
    if num_directions(directions) > 1:
        return eqx.filter_vmap(fn, out_axes=out_axes)(directions)
    return _expand(fn(jtu.tree_map(lambda leaf: leaf[0], directions)), out_axes)


def _expand(out: Any, out_axes: Any) -> Any:
    """Add a leading size-1 axis where `out_axes` (0, `None`, or a tuple of them
    matching the tuple `out`) says the output is stacked."""
    if out_axes is None:
        return out
    if out_axes == 0:
        return jtu.tree_map(
            lambda leaf: leaf[None] if eqx.is_array(leaf) else leaf,
            out,
        )
    return type(out_axes)(_expand(o, a) for o, a in zip(out, out_axes, strict=True))


def sample_directions(
    distribution: Callable[[PRNGKeyArray, PyTree], PyTree],
    keys: Key[Array, " k"] | UInt32[Array, "k 2"],
    like: PyTree,
) -> PyTree:
    """One direction per key from the tangent `distribution`, stacked on a new
    leading axis: direction k is `distribution(keys[k], like)`."""
    one_key = lambda key: distribution(key, like)
    return map_directions(one_key, keys)


def value_and_derivatives(
    fn: Callable[[PyTree], tuple[Float[Array, ""] | float, Any]],
    x: PyTree,
    directions: PyTree,
) -> tuple[tuple[Float[Array, ""] | float, Any], Float[Array, " k"]]:
    """Evaluate `fn(x) = (value, aux)` and the K derivatives of `value` along the K
    directions stacked on the leading axis of every leaf of `directions` (`None` at
    the leaves of `x` that are not differentiated). The primal is computed once;
    the K directions travel through the network together as one batched
    forward-mode pass. `aux` should be wrapped in `jax.lax.stop_gradient` by `fn`.

    A value that does not depend on the differentiated leaves has derivative 0.
    """

    def along(direction):
        x_, direction_ = prepare_jvp(x, direction)
        (value, aux), (derivative, _) = eqx.filter_jvp(fn, (x_,), (direction_,))
        if derivative is None:  # `value` does not depend on the differentiated leaves
            derivative = jnp.zeros((), jnp.result_type(value))
        return (value, aux), derivative

    return map_directions(along, directions, out_axes=((None, None), 0))
