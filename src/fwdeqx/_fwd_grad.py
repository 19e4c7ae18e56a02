"""`filter_value_and_fwd_grad` and `filter_fwd_grad`: equinox-style transformations
returning forward gradients instead of reverse-mode gradients.

They are thin wrappers: each holds a `fwdeqx.ForwardGradient`, which owns the
algorithm, and calls it."""

import functools as ft
import inspect
from collections.abc import Callable
from typing import Any

import equinox as eqx

from ._combine import AbstractCombiner, Mean
from ._estimators import ForwardGradient
from ._tangents import AbstractTangentDistribution, Gaussian


def split_first_argument(args: tuple, kwargs: dict, name: str) -> tuple[Any, tuple]:
    if len(args) == 0:
        if kwargs:
            raise TypeError(
                f"Functions wrapped with `{name}` must have their first argument "
                "passed by position, not keyword. (This is the argument that is "
                "differentiated.)"
            )
        raise TypeError(
            f"Functions wrapped with `{name}` must have at least one positional "
            "argument. (This is the argument that is differentiated.)"
        )
    return args[0], args[1:]


def signature_with_key(fun: Callable) -> inspect.Signature | None:
    """`fun`'s signature plus the keyword-only `key` the transformation consumes, so
    that `eqx.filter_jit` and `inspect` bind calls correctly."""
    try:
        signature = inspect.signature(fun)
    except (TypeError, ValueError):
        return None
    params = [p for p in signature.parameters.values() if p.name != "key"]
    key = inspect.Parameter("key", inspect.Parameter.KEYWORD_ONLY)
    before = [p for p in params if p.kind != inspect.Parameter.VAR_KEYWORD]
    after = [p for p in params if p.kind == inspect.Parameter.VAR_KEYWORD]
    return signature.replace(parameters=[*before, key, *after])


class _ValueAndFwdGradWrapper(eqx.Module):
    _fun: Callable
    _has_aux: bool = eqx.field(static=True)
    _estimator: ForwardGradient

    @property
    def __wrapped__(self):
        return self._fun

    @property
    def __signature__(self):
        return signature_with_key(self._fun)

    def __call__(self, *args, key: Any = None, **kwargs):
        x, args = split_first_argument(args, kwargs, "fwdeqx.filter_value_and_fwd_grad")
        return self._estimator(
            self._fun, x, *args, key=key, has_aux=self._has_aux, **kwargs
        )

    def __get__(self, instance, owner):
        del owner
        if instance is None:
            return self
        return eqx.Partial(self, instance)


class _FwdGradWrapper(eqx.Module):
    _fun_value_and_grad: _ValueAndFwdGradWrapper
    _has_aux: bool = eqx.field(static=True)

    @property
    def __wrapped__(self):
        return self._fun_value_and_grad.__wrapped__  # pyright: ignore

    @property
    def __signature__(self):
        return self._fun_value_and_grad.__signature__  # pyright: ignore

    def __call__(self, *args, key: Any = None, **kwargs):
        value, grad = self._fun_value_and_grad(*args, key=key, **kwargs)
        if self._has_aux:
            _, aux = value
            return grad, aux
        return grad

    def __get__(self, instance, owner):
        del owner
        if instance is None:
            return self
        return eqx.Partial(self, instance)


def filter_value_and_fwd_grad(
    fun: Callable | None = None,
    *,
    has_aux: bool = False,
    tangents: AbstractTangentDistribution = Gaussian(),
    num_tangents: int = 1,
    combine: AbstractCombiner = Mean(),
) -> Callable:
    """Like `eqx.filter_value_and_grad`, but the gradient is a *forward gradient*:
    g = (∇f·v) v for a random tangent v, from one forward-mode pass and no
    backward pass. With E[v] = 0 and Cov[v] = I, E[g] = ∇f (Theorem 1 of Baydin et
    al. 2022).

    Only the floating-point array leaves (`eqx.is_inexact_array`) of the **first**
    argument are differentiated; every other leaf is `None` in the gradient, so it
    can be passed to `eqx.apply_updates` or to an `optax` optimizer initialised with
    `eqx.filter(model, eqx.is_inexact_array)`.

    **Arguments:**

    - `fun`: a function `fun(x, *args, **kwargs)` returning a floating-point scalar
        (or `(scalar, aux)` with `has_aux=True`).
    - `has_aux`: whether `fun` returns `(value, aux)`; `aux` is returned untouched.
    - `tangents`: the tangent distribution, e.g. `fwdeqx.Gaussian()` (default),
        `fwdeqx.Rademacher()` or `fwdeqx.LowRank()`.
    - `num_tangents`: K, the number of independent tangents. The primal is
        evaluated once and the K tangents travel together through one batched
        forward-mode pass; averaged, the variance drops by a factor K.
    - `combine`: how the K directional derivatives become one estimate:
        `fwdeqx.Mean()` (default, the average of K forward gradients) or
        `fwdeqx.Projection()`.

    **Returns:**

    A function `(x, *args, key, **kwargs) -> (value, grad)` (or
    `((value, aux), grad)`), where `key` is a keyword-only, required JAX PRNG key
    used to draw the tangents. The key is consumed, not passed to `fun`. Same key,
    same result: the call is exactly
    `fwdeqx.ForwardGradient(tangents, num_tangents, combine)(fun, x, *args, key=key,
    has_aux=has_aux, **kwargs)`.

    As for `eqx.filter_value_and_grad`, a first argument with no floating leaves
    gets a gradient of `None`s, and a loss that does not depend on them gets a
    zero gradient.

    Usable as a decorator, with or without arguments, and on methods.

    !!! Example

        ```python
        @fwdeqx.filter_value_and_fwd_grad
        def loss(model, x, y):
            return jnp.mean((jax.vmap(model)(x) - y) ** 2)

        value, grads = loss(model, x, y, key=jax.random.key(0))
        model = eqx.apply_updates(model, jax.tree.map(lambda g: -0.01 * g, grads))
        ```
    """
    if fun is None:
        return ft.partial(
            filter_value_and_fwd_grad,
            has_aux=has_aux,
            tangents=tangents,
            num_tangents=num_tangents,
            combine=combine,
        )
    estimator = ForwardGradient(tangents, num_tangents, combine)
    return eqx.module_update_wrapper(_ValueAndFwdGradWrapper(fun, has_aux, estimator))


def filter_fwd_grad(
    fun: Callable | None = None,
    *,
    has_aux: bool = False,
    tangents: AbstractTangentDistribution = Gaussian(),
    num_tangents: int = 1,
    combine: AbstractCombiner = Mean(),
) -> Callable:
    """Like `eqx.filter_grad`, but returns the forward gradient; see
    [`fwdeqx.filter_value_and_fwd_grad`][] for the arguments.

    **Returns:**

    A function `(x, *args, key, **kwargs) -> grad` (or `(grad, aux)` with
    `has_aux=True`).
    """
    if fun is None:
        return ft.partial(
            filter_fwd_grad,
            has_aux=has_aux,
            tangents=tangents,
            num_tangents=num_tangents,
            combine=combine,
        )
    value_and_grad = filter_value_and_fwd_grad(
        fun,
        has_aux=has_aux,
        tangents=tangents,
        num_tangents=num_tangents,
        combine=combine,
    )
    return eqx.module_update_wrapper(
        _FwdGradWrapper(value_and_grad, has_aux)  # pyright: ignore
    )
