"""Gradient estimators with one interface: `est(fun, x, *args, key) -> (value, grad)`.

Training loops, experiments and benchmarks take an estimator object; adding a new
way of obtaining gradients is one new subclass here.
"""

import abc
from collections.abc import Callable
from typing import Any

import equinox as eqx
from jaxtyping import PRNGKeyArray, PyTree

from ._combine import AbstractCombiner, check_combiner
from ._fwd_grad import check_num_tangents, check_tangents, fwd_value_and_grad
from ._tangents import AbstractTangentDistribution, Gaussian


class AbstractEstimator(eqx.Module):
    """Base class of gradient estimators.

    An estimator is called as `est(fun, x, *args, key=key, has_aux=False, **kwargs)`
    and returns `(value, grad)` (or `((value, aux), grad)` with `has_aux=True`),
    where `grad` has `None` at every leaf of `x` that is not a floating array, as
    for `eqx.filter_value_and_grad`.
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
    def num_forward_passes(self) -> int:
        """Forward-mode evaluations per call, counting the K tangents of a batched
        pass as K (used to compare estimators at equal cost)."""
        return 1


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


class ForwardGradient(AbstractEstimator):
    """The forward gradient g = (1/K) Σ_k (∇f·v_k) v_k from one forward-mode pass
    (Algorithm 1 of Baydin et al. 2022, with K = 1 by default).

    **Arguments:**

    - `tangents`: the tangent distribution (default `fwdeqx.Gaussian()`).
    - `num_tangents`: K, the number of tangents averaged.
    - `combine`: how the K directional derivatives become one estimate: `None`
        (default) averages the K forward gradients; `fwdeqx.Mean(orthogonalize=True)`
        averages along orthogonalised tangents; `fwdeqx.Projection()` projects ∇f
        on the span of the tangents (biased by K/n, see its docs) and
        `fwdeqx.Projection(rescale=True)` rescales it by n/K. All cost one batched
        forward-mode pass.

    !!! Example

        ```python
        est = fwdeqx.ForwardGradient(fwdeqx.Rademacher(), num_tangents=4)
        value, grads = est(loss, model, x, y, key=key)
        est = fwdeqx.ForwardGradient(num_tangents=16, combine=fwdeqx.Projection())
        ```
    """

    tangents: AbstractTangentDistribution = Gaussian()
    num_tangents: int = eqx.field(static=True, default=1)
    combine: AbstractCombiner | None = None

    def __check_init__(self):
        check_tangents(self.tangents)
        check_num_tangents(self.num_tangents)
        if self.combine is not None:
            check_combiner(self.combine)

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
        return fwd_value_and_grad(
            fun,
            x,
            args,
            kwargs,
            key=key,
            has_aux=has_aux,
            tangents=self.tangents,
            num_tangents=self.num_tangents,
            name="fwdeqx.ForwardGradient",
            combine=self.combine,
        )

    @property
    def num_forward_passes(self) -> int:
        return self.num_tangents
