"""Directional derivatives of a scalar function along a stack of tangents."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree

from ._lowrank import perturb_low_rank_linears
from ._structured import has_structured


def value_and_directional_derivative(
    fn: Callable[[PyTree], tuple[Array, Any]],
    x: PyTree,
    tangent: PyTree,
) -> tuple[tuple[Array, Any], Float[Array, ""]]:
    """Evaluate `fn(x) = (value, aux)` and the derivative of `value` along `tangent`
    (`None` at leaves of `x` that are not differentiated), in one forward-mode pass.
    `aux` should be wrapped in `jax.lax.stop_gradient` by `fn`.
    """
    if has_structured(tangent):
        x, tangent = perturb_low_rank_linears(x, tangent)
    (value, aux), (dvalue, _) = eqx.filter_jvp(fn, (x,), (tangent,))
    return (value, aux), dvalue


def value_and_directional_derivatives(
    fn: Callable[[PyTree], tuple[Array, Any]],
    x: PyTree,
    tangents: PyTree,
) -> tuple[tuple[Array, Any], Float[Array, " k"]]:
    """As `value_and_directional_derivative`, for k tangents stacked on the leading
    axis of every tangent leaf. The primal is computed once; the k tangents travel
    through the network together as one batched forward-mode pass.
    """

    def one_tangent(tangent):
        return value_and_directional_derivative(fn, x, tangent)

    return eqx.filter_vmap(one_tangent, out_axes=((None, None), 0))(tangents)


def check_scalar_output(value: Any, name: str) -> None:
    if not (isinstance(value, jax.Array | float) and jnp.shape(value) == ()):
        raise ValueError(
            f"The function passed to `{name}` must return a scalar (shape `()`), got "
            f"{_describe(value)}. Reduce it (e.g. `.mean()`) or, for extra outputs, "
            "use `has_aux=True` and return `(scalar, aux)`."
        )
    if not jnp.issubdtype(jnp.result_type(value), jnp.floating):
        raise TypeError(
            f"The function passed to `{name}` must return a floating-point scalar, got "
            f"dtype {jnp.result_type(value)}. Cast it with `.astype(jnp.float32)`."
        )


def _describe(value: Any) -> str:
    if hasattr(value, "shape"):
        return f"an array of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"
