"""A zeroth-order baseline: two-point SPSA / MeZO gradient estimates."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, Float, PyTree

from ._checks import (
    check_key,
    check_positive_float,
    check_positive_int,
    check_tangents,
)
from ._estimators import AbstractEstimator, scalar_function
from ._structured import densify
from ._tangents import AbstractTangentDistribution, Gaussian


def _perturbed(x: PyTree, tangent: PyTree, scale: Float[Array, ""] | float) -> PyTree:
    """x + scale · tangent on the floating leaves of x (the others untouched)."""

    def shift(leaf, leaf_tangent):
        if leaf_tangent is None:
            return leaf
        return leaf + jnp.asarray(scale, leaf.dtype) * leaf_tangent

    return jtu.tree_map(shift, x, tangent, is_leaf=lambda node: node is None)


class SPSA(AbstractEstimator):
    """Two-point zeroth-order estimate (SPSA; MeZO of Malladi et al. 2023):

    g = (1/K) Σ_k [f(θ + ε z_k) − f(θ − ε z_k)] / (2ε) · z_k.

    The central difference equals the directional derivative ∇f·z_k up to
    O(ε²) (times the third derivative), so for ε → 0 the estimate is the forward
    gradient with tangents z_k — at **two** function evaluations per direction and
    no derivative code at all. As in MeZO, each z_k is regenerated from its key
    where it is needed (the +ε point, the −ε point, the update) instead of being
    kept alive across the two evaluations, and directions are processed one after
    another in a `jax.lax.fori_loop`.

    The returned value is the mean of f(θ ± ε z_k) over the 2K evaluations, which
    differs from f(θ) by O(ε²); no separate evaluation at θ is made. With
    `has_aux=True` the aux of the last evaluation f(θ − ε z_K) is returned.

    In float32 the difference f(θ + εz) − f(θ − εz) loses about
    log10(|f| / (ε‖∇f·z‖)) of the ~7 significant digits: ε = 1e-3 (MeZO's
    choice) is a reasonable default; use float64 for small ε.

    **Arguments:**

    - `eps`: ε, the half-width of the central difference.
    - `tangents`: distribution of the directions z (default `fwdeqx.Gaussian()`;
        structured tangents such as `fwdeqx.LowRank()` are made dense).
    - `num_directions`: K, the number of directions averaged.
    """

    eps: float = eqx.field(static=True, default=1e-3)
    tangents: AbstractTangentDistribution = Gaussian()
    num_directions: int = eqx.field(static=True, default=1)

    def __check_init__(self):
        check_tangents(self.tangents)
        check_positive_float(self.eps, "eps")
        check_positive_int(self.num_directions, "num_directions")

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
        name = "fwdeqx.SPSA"
        check_key(key, name)
        like = eqx.filter(x, eqx.is_inexact_array)
        keys = jax.random.split(key, self.num_directions)

        def direction(index):
            return densify(self.tangents(keys[index], like))

        fn = scalar_function(fun, args, kwargs, has_aux=has_aux, name=name)

        def evaluate(shifted):
            value, aux = fn(shifted)
            return jnp.asarray(value), aux

        def body(index, carry):
            grad, total, _ = carry
            # z is drawn again from its key for each use instead of being stored.
            value_plus, _ = evaluate(_perturbed(x, direction(index), self.eps))
            value_minus, aux = evaluate(_perturbed(x, direction(index), -self.eps))
            slope = (value_plus - value_minus) / (2 * self.eps)
            weight = slope / self.num_directions
            grad = jtu.tree_map(
                lambda g, z: g + weight.astype(g.dtype) * z, grad, direction(index)
            )
            return grad, total + value_plus + value_minus, aux

        value_shape, aux_shape = eqx.filter_eval_shape(evaluate, x)
        init = (
            jtu.tree_map(jnp.zeros_like, like),
            jnp.zeros(value_shape.shape, value_shape.dtype),
            jtu.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), aux_shape),
        )
        grad, total, aux = jax.lax.fori_loop(0, self.num_directions, body, init)
        value = total / (2 * self.num_directions)
        return ((value, aux) if has_aux else value), grad

    @property
    def num_forward_passes(self) -> int:
        return 2 * self.num_directions
