"""The argument checks of every estimator (`ForwardGradient`, `SPSA`, the
`fwdeqx.local` estimators, …): one clear error, naming what is wrong, per bad
argument."""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu

from ._combine import AbstractCombiner
from ._structured import is_structured
from ._tangents import AbstractTangentDistribution


def check_key(key: Any, name: str) -> None:
    """A clear error unless `key` is one JAX PRNG key (typed or raw)."""
    if key is None:
        raise TypeError(
            f"`{name}` needs a keyword-only `key` to draw its random tangents, e.g. "
            "`key=jax.random.key(0)`; split a fresh key for every call. The key is "
            "consumed by the estimator and not passed to your function."
        )
    is_typed_key = (
        isinstance(key, jax.Array)
        and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
        and key.shape == ()
    )
    is_raw_key = (
        isinstance(key, jax.Array) and key.dtype == jnp.uint32 and key.shape == (2,)
    )
    if not (is_typed_key or is_raw_key):
        raise TypeError(
            f"`key` passed to `{name}` must be a single JAX PRNG key "
            "(`jax.random.key(seed)` or `jax.random.PRNGKey(seed)`), got "
            f"{getattr(key, 'dtype', type(key).__name__)} with shape "
            f"{getattr(key, 'shape', None)}."
        )


def check_positive_int(value: Any, name: str) -> None:
    """A clear error unless `value` is an int ≥ 1 (`True` is not an int here)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int, got {value!r}.")
    if value < 1:
        raise ValueError(f"`{name}` must be at least 1, got {value}.")


def check_tangents(tangents: Any) -> None:
    if not isinstance(tangents, AbstractTangentDistribution):
        raise TypeError(
            "`tangents` must be a tangent distribution such as `fwdeqx.Gaussian()`, "
            f"`fwdeqx.Rademacher()` or `fwdeqx.LowRank()`, got {tangents!r}."
        )


def check_dense_tangents(tangents: AbstractTangentDistribution, name: str) -> None:
    """A clear error if `tangents` draws structured leaves (e.g. `fwdeqx.LowRank`'s
    low-rank matrices): found by drawing the shape of a tangent of an
    `eqx.nn.Linear`."""
    like = eqx.filter_eval_shape(eqx.nn.Linear, 2, 2, key=jax.random.key(0))
    drawn = jax.eval_shape(tangents, jax.random.key(0), like)
    if any(map(is_structured, jtu.tree_leaves(drawn, is_leaf=is_structured))):
        raise TypeError(
            f"`{name}` needs tangents with dense, independent entries (such as "
            "`fwdeqx.Gaussian()` or `fwdeqx.Rademacher()`), got "
            f"{tangents!r}, which draws structured (low-rank) tangents. Use "
            "`fwdeqx.ForwardGradient(fwdeqx.LowRank())` for low-rank weight "
            "tangents."
        )


def check_combiner(combine: Any) -> None:
    if not isinstance(combine, AbstractCombiner):
        raise TypeError(
            "`combine` must be a combiner such as `fwdeqx.Mean()` or "
            f"`fwdeqx.Projection()`, got {combine!r}."
        )


def check_positive_float(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"`{name}` must be a float, got {value!r}.")
    if not value > 0:
        raise ValueError(f"`{name}` must be positive, got {value}.")
