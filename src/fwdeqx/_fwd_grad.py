"""`filter_value_and_fwd_grad` and `filter_fwd_grad`: equinox-style transformations
returning forward gradients instead of reverse-mode gradients."""

import functools as ft
import inspect
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, Float, Key, PRNGKeyArray, PyTree, UInt32

from ._combine import AbstractCombiner
from ._directional import (
    check_scalar_output,
    value_and_directional_derivative,
    value_and_directional_derivatives,
)
from ._structured import densify, scale_tangent, weighted_tangent_sum
from ._tangents import AbstractTangentDistribution, Gaussian, tree_size


def check_key(key: Any, name: str) -> None:
    if key is None:
        raise TypeError(
            f"`{name}` needs a keyword-only `key` to draw its random tangents, e.g. "
            "`key=jax.random.key(0)`; split a fresh key for every call. The key is "
            "consumed by the transformation and not passed to your function."
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


def _stop_gradient(tree: PyTree) -> PyTree:
    return jtu.tree_map(
        lambda leaf: jax.lax.stop_gradient(leaf) if eqx.is_array(leaf) else leaf, tree
    )


def _split_output(out: Any, has_aux: bool, name: str) -> tuple[Any, Any]:
    if not has_aux:
        return out, None
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError(
            f"With `has_aux=True` the function passed to `{name}` must return a "
            f"2-tuple `(value, aux)`, got {type(out).__name__}."
        )
    return out


def check_num_tangents(num_tangents: Any) -> None:
    if isinstance(num_tangents, bool) or not isinstance(num_tangents, int):
        raise TypeError(f"`num_tangents` must be an int, got {num_tangents!r}.")
    if num_tangents < 1:
        raise ValueError(f"`num_tangents` must be at least 1, got {num_tangents}.")


def check_tangents(tangents: Any) -> None:
    if not isinstance(tangents, AbstractTangentDistribution):
        raise TypeError(
            "`tangents` must be a tangent distribution such as `fwdeqx.Gaussian()`, "
            f"`fwdeqx.Rademacher()` or `fwdeqx.LowRank()`, got {tangents!r}."
        )


def sample_tangents(
    tangents: AbstractTangentDistribution,
    key: PRNGKeyArray,
    like: PyTree,
    num_tangents: int,
) -> PyTree:
    """`num_tangents` independent tangents stacked on a new leading axis."""
    return sample_tangent_stack(tangents, jax.random.split(key, num_tangents), like)


def sample_tangent_stack(
    tangents: AbstractTangentDistribution,
    keys: Key[Array, " k"] | UInt32[Array, "k 2"],
    like: PyTree,
) -> PyTree:
    """One tangent per key, stacked on a new leading axis: tangent k from keys[k]."""
    return jax.vmap(tangents, in_axes=(0, None))(keys, like)


def draw_tangents(
    tangents: AbstractTangentDistribution,
    key: PRNGKeyArray,
    like: PyTree,
    num_tangents: int,
) -> PyTree:
    """The tangents of one forward-gradient estimate: for K = 1 a single tangent
    drawn from `key` itself, for K > 1 a stack of K from `split(key, K)`."""
    if num_tangents == 1:
        return tangents(key, like)
    return sample_tangents(tangents, key, like, num_tangents)


def value_and_derivatives_along(
    fn: Callable[[PyTree], tuple[Array, Any]],
    x: PyTree,
    drawn: PyTree,
    num_tangents: int,
) -> tuple[tuple[Array, Any], Float[Array, " k"]]:
    """`fn(x)` and its K directional derivatives along tangents from
    `draw_tangents`."""
    if num_tangents == 1:
        out, derivative = value_and_directional_derivative(fn, x, drawn)
        return out, derivative[None]
    return value_and_directional_derivatives(fn, x, drawn)


def mean_forward_gradient(
    derivatives: Float[Array, " k"], drawn: PyTree, num_tangents: int
) -> PyTree:
    """(1/K) Σ_k d_k v_k, dense, for tangents from `draw_tangents`."""
    if num_tangents == 1:
        return densify(scale_tangent(drawn, derivatives[0]))
    return weighted_tangent_sum(derivatives / num_tangents, drawn)


def fwd_value_and_grad(
    fun: Callable,
    x: PyTree,
    args: tuple,
    kwargs: dict,
    *,
    key: PRNGKeyArray,
    has_aux: bool,
    tangents: AbstractTangentDistribution,
    num_tangents: int,
    name: str = "fwdeqx.filter_value_and_fwd_grad",
    combine: AbstractCombiner | None = None,
) -> tuple[Any, PyTree]:
    """Forward gradient of `fun(x, *args, **kwargs)` with respect to the inexact
    array leaves of `x`: the mean over `num_tangents` tangents v_k of (∇f·v_k) v_k,
    or, with a `combine`r, its combination of the K directional derivatives.
    """
    check_key(key, name)

    def fn(x_):
        value, aux = _split_output(fun(x_, *args, **kwargs), has_aux, name)
        check_scalar_output(value, name)
        return value, _stop_gradient(aux)

    like = eqx.filter(x, eqx.is_inexact_array)
    if combine is not None:
        num_parameters = tree_size(like)
        stack = sample_tangents(tangents, key, like, num_tangents)
        stack = combine.prepare(stack, num_parameters)
        (value, aux), derivatives = value_and_directional_derivatives(fn, x, stack)
        grad = combine(derivatives, stack, num_parameters)
    else:
        drawn = draw_tangents(tangents, key, like, num_tangents)
        (value, aux), derivatives = value_and_derivatives_along(
            fn, x, drawn, num_tangents
        )
        grad = mean_forward_gradient(derivatives, drawn, num_tangents)
    return ((value, aux) if has_aux else value), grad


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
    _tangents: AbstractTangentDistribution
    _num_tangents: int = eqx.field(static=True)

    @property
    def __wrapped__(self):
        return self._fun

    @property
    def __signature__(self):
        return signature_with_key(self._fun)

    def __call__(self, *args, key: Any = None, **kwargs):
        name = "fwdeqx.filter_value_and_fwd_grad"
        x, args = split_first_argument(args, kwargs, name)
        check_key(key, name)
        return fwd_value_and_grad(
            self._fun,
            x,
            args,
            kwargs,
            key=key,  # pyright: ignore
            has_aux=self._has_aux,
            tangents=self._tangents,
            num_tangents=self._num_tangents,
            name=name,
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
    - `num_tangents`: K, the number of independent tangents averaged. The primal
        is evaluated once and the K tangents travel together through one batched
        forward-mode pass; the variance drops by a factor K.

    **Returns:**

    A function `(x, *args, key, **kwargs) -> (value, grad)` (or
    `((value, aux), grad)`), where `key` is a keyword-only, required JAX PRNG key
    used to draw the tangents. The key is consumed, not passed to `fun`. Same key,
    same result.

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
        )
    check_tangents(tangents)
    check_num_tangents(num_tangents)
    return eqx.module_update_wrapper(
        _ValueAndFwdGradWrapper(fun, has_aux, tangents, num_tangents)
    )


def filter_fwd_grad(
    fun: Callable | None = None,
    *,
    has_aux: bool = False,
    tangents: AbstractTangentDistribution = Gaussian(),
    num_tangents: int = 1,
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
        )
    value_and_grad = filter_value_and_fwd_grad(
        fun, has_aux=has_aux, tangents=tangents, num_tangents=num_tangents
    )
    return eqx.module_update_wrapper(
        _FwdGradWrapper(value_and_grad, has_aux)  # pyright: ignore
    )
