"""Gradient estimators with one interface: `est(fun, x, *args, key) -> (value, grad)`.

Transformations, training loops, the distributed step, experiments and benchmarks
take an estimator object; adding a new way of obtaining gradients is one new
subclass of `AbstractEstimator`.
"""

import abc
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, Float, Key, PRNGKeyArray, PyTree, UInt32

from ._checks import (
    check_combiner,
    check_key as check_key,
    check_positive_int,
    check_tangents as check_tangents,
)
from ._combine import AbstractCombiner, Mean
from ._directional import sample_directions, value_and_derivatives
from ._tangents import AbstractTangentDistribution, Gaussian, tree_size


class AbstractEstimator(eqx.Module):
    """Base class of gradient estimators.

    An estimator is called as `est(fun, x, *args, key=key, has_aux=False, **kwargs)`
    and returns `(value, grad)` (or `((value, aux), grad)` with `has_aux=True`),
    where `grad` has `None` at every leaf of `x` that is not a floating array, as
    for `eqx.filter_value_and_grad`. Subclasses implement `__call__` and
    `num_forward_passes`.
    """

    @abc.abstractmethod
    def __call__(
        self,
        fun: Callable,
        x: PyTree,
        /,
        *args: Any,
        key: PRNGKeyArray,
        has_aux: bool = False,
        **kwargs: Any,
    ) -> tuple[Any, PyTree]:
        """**Arguments:**

        - `fun`: `fun(x, *args, **kwargs)` returning a floating scalar, or
            `(scalar, aux)` with `has_aux=True`.
        - `x`: the pytree differentiated (its `eqx.is_inexact_array` leaves).
        - `*args`, `**kwargs`: passed on to `fun`.
        - `key`: a JAX PRNG key for the estimator's randomness.
        - `has_aux`: whether `fun` returns `(value, aux)`.

        **Returns:**

        `(value, grad)`, or `((value, aux), grad)` with `has_aux=True`.
        """

    @property
    @abc.abstractmethod
    def num_forward_passes(self) -> int:
        """Forward-mode evaluations per call, counting the K tangents of a batched
        pass as K (used to compare estimators at equal cost)."""


class Backprop(AbstractEstimator):
    """The exact gradient by reverse-mode autodiff (`eqx.filter_value_and_grad`).

    The baseline every forward-gradient estimate is measured against. `key` is
    accepted for a uniform interface and ignored.
    """

    def __call__(
        self,
        fun: Callable,
        x: PyTree,
        /,
        *args: Any,
        key: PRNGKeyArray,
        has_aux: bool = False,
        **kwargs: Any,
    ) -> tuple[Any, PyTree]:
        del key
        return eqx.filter_value_and_grad(fun, has_aux=has_aux)(x, *args, **kwargs)

    @property
    def num_forward_passes(self) -> int:
        return 1


class ForwardGradient(AbstractEstimator):
    """The forward gradient g = (1/K) Σ_k (∇f·v_k) v_k from one forward-mode pass
    (Algorithm 1 of Baydin et al. 2022, with K = 1 by default).

    The algorithm, the same for every K: split `key` into K keys, draw direction k
    from key k, evaluate the K directional derivatives ∇f·v_k in one batched
    forward-mode pass (the primal once), and let `combine` turn them into one
    estimate.

    **Arguments:**

    - `tangents`: the tangent distribution (default `fwdeqx.Gaussian()`).
    - `num_tangents`: K, the number of directions.
    - `combine`: how the K directional derivatives become one estimate:
        `fwdeqx.Mean()` (default) averages the K forward gradients;
        `fwdeqx.Projection()` projects ∇f on the span of the directions (biased by
        K/n, see its docs) and `fwdeqx.Projection(rescale=True)` rescales it by
        n/K. All cost one batched forward-mode pass.

    !!! Example

        ```python
        est = fwdeqx.ForwardGradient(fwdeqx.Rademacher(), num_tangents=4)
        value, grads = est(loss, model, x, y, key=key)
        est = fwdeqx.ForwardGradient(num_tangents=16, combine=fwdeqx.Projection())
        ```
    """

    tangents: AbstractTangentDistribution = Gaussian()
    num_tangents: int = eqx.field(static=True, default=1)
    combine: AbstractCombiner = Mean()

    def __check_init__(self):
        check_tangents(self.tangents)
        check_positive_int(self.num_tangents, "num_tangents")
        check_combiner(self.combine)

    def direction_keys(
        self, key: PRNGKeyArray
    ) -> Key[Array, " k"] | UInt32[Array, "k 2"]:
        """The K keys the K directions are drawn from, `jax.random.split(key, K)`."""
        return jax.random.split(key, self.num_tangents)

    def sample(
        self, keys: Key[Array, " k"] | UInt32[Array, "k 2"], like: PyTree
    ) -> PyTree:
        """One direction per key from `tangents`, stacked on a new leading axis.

        **Arguments:**

        - `keys`: a stack of keys, e.g. a slice of `direction_keys(key)`.
        - `like`: `eqx.filter(x, eqx.is_inexact_array)`.

        **Returns:**

        The directions: `like`'s structure, every leaf with a leading axis of the
        length of `keys`.
        """
        return sample_directions(self.tangents, keys, like)

    def derivatives(
        self, fun: Callable, x: PyTree, directions: PyTree, /, *args: Any, **kwargs: Any
    ) -> tuple[Float[Array, ""], Float[Array, " k"]]:
        """`fun(x, *args, **kwargs)` and its K directional derivatives along
        `directions`, from one batched forward-mode pass (the step between `sample`
        and `combine`).

        **Arguments:**

        - `fun`: returns a floating scalar.
        - `x`: the pytree differentiated (its `eqx.is_inexact_array` leaves).
        - `directions`: as `sample` returns them.
        - `*args`, `**kwargs`: passed on to `fun`.

        **Returns:**

        `(value, derivatives)`, `derivatives` of shape `(K,)`.
        """
        name = "fwdeqx.ForwardGradient.derivatives"
        fn = scalar_function(fun, args, kwargs, has_aux=False, name=name)
        (value, _), derivatives = value_and_derivatives(fn, x, directions)
        return jnp.asarray(value), derivatives

    def __call__(
        self,
        fun: Callable,
        x: PyTree,
        /,
        *args: Any,
        key: Any,  # any object: `check_key` explains what is wrong with it
        has_aux: bool = False,
        **kwargs: Any,
    ) -> tuple[Any, PyTree]:
        name = "fwdeqx.ForwardGradient"
        check_key(key, name)
        fn = scalar_function(fun, args, kwargs, has_aux=has_aux, name=name)
        like = eqx.filter(x, eqx.is_inexact_array)
        if not jtu.tree_leaves(like):  # nothing to differentiate, as eqx: None
            value, aux = fn(x)
            return ((value, aux) if has_aux else value), like
        directions = self.sample(self.direction_keys(key), like)
        (value, aux), derivatives = value_and_derivatives(fn, x, directions)
        grad = self.combine(derivatives, directions, tree_size(like))
        return ((value, aux) if has_aux else value), grad

    @property
    def num_forward_passes(self) -> int:
        return self.num_tangents


def scalar_function(
    fun: Callable, args: tuple, kwargs: dict, *, has_aux: bool, name: str
) -> Callable[[PyTree], tuple[Float[Array, ""] | float, Any]]:
    """`x -> (value, aux)` for `fun(x, *args, **kwargs)`: checks that the value is a
    floating scalar, and stops gradients through `aux` (`None` without aux)."""

    def fn(x):
        out = fun(x, *args, **kwargs)
        if has_aux:
            if not (isinstance(out, tuple) and len(out) == 2):
                raise TypeError(
                    f"With `has_aux=True` the function passed to `{name}` must "
                    f"return a 2-tuple `(value, aux)`, got {type(out).__name__}."
                )
            value, aux = out
        else:
            value, aux = out, None
        check_scalar_output(value, name)
        return value, _stop_gradient(aux)

    return fn


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


def _stop_gradient(tree: PyTree) -> PyTree:
    return jtu.tree_map(
        lambda leaf: jax.lax.stop_gradient(leaf) if eqx.is_array(leaf) else leaf, tree
    )
