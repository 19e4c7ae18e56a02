"""Low-rank tangents for `eqx.nn.Linear` weights, v_W = Σ_i a_i b_iᵀ / √r.

With a_i, b_i independent standard normal vectors, every entry of v_W has mean 0,
distinct entries are uncorrelated and each has variance 1: Cov[v_W] = I, so the
forward gradient stays unbiased. The directional derivative of W x along v_W is
Σ_i a_i (b_iᵀ x) / √r, which costs O(r (in + out)) per example; v_W is never formed.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jax.custom_derivatives import SymbolicZero
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from ._structured import AbstractStructuredTangent
from ._tangents import AbstractTangentDistribution, Gaussian


class LowRankMatrix(AbstractStructuredTangent):
    """The tangent `leftᵀ @ right` of a matrix of shape `(out, in)`, kept factored.

    **Arguments:**

    - `left`: shape `(rank, out)` (the 1/√r scale already folded in), or
        `(k, rank, out)` for a stack of k tangents.
    - `right`: shape `(rank, in)`, or `(k, rank, in)`.
    """

    left: Float[Array, "*k rank out"]
    right: Float[Array, "*k rank in"]

    def weighted_sum(self, weights: Float[Array, " k"]) -> Array:
        weighted_left = weights.astype(self.left.dtype)[:, None, None] * self.left
        return jnp.einsum("kro,kri->oi", weighted_left, self.right)

    def gram(self) -> Float[Array, "k k"]:
        # ⟨Σ_i a_i b_iᵀ, Σ_j c_j e_jᵀ⟩ = Σ_ij (a_i·c_j)(b_i·e_j), for every pair
        # of directions k, l; never forms the (out, in) matrices.
        left = jnp.einsum("kro,lso->klrs", self.left, self.left)
        right = jnp.einsum("kri,lsi->klrs", self.right, self.right)
        return jnp.sum(left * right, axis=(2, 3))

    def scaled(self, scale: float | Float[Array, ""]) -> "LowRankMatrix":
        return LowRankMatrix(
            jnp.asarray(scale, self.left.dtype) * self.left, self.right
        )

    def to_dense(self) -> Array:
        return jnp.einsum("...ro,...ri->...oi", self.left, self.right)

    @classmethod
    def prepare_jvp(cls, x: PyTree, tangent: PyTree) -> tuple[PyTree, PyTree]:
        return perturb_low_rank_linears(x, tangent)


@jax.custom_jvp
def _factored_matvec(weight, x, left, right):
    del left, right
    return weight @ x


def _factored_matvec_jvp(primals, tangents):
    # Forward mode only: the rule is bilinear in the (left, right) tangents, which is
    # fine for jvp and intentionally not transposable.
    weight, x, _, _ = primals
    dweight, dx, dleft, dright = tangents
    out = weight @ x
    dout = jnp.zeros_like(out)
    if not isinstance(dx, SymbolicZero):
        dout = dout + weight @ dx
    if not isinstance(dweight, SymbolicZero):
        dout = dout + dweight @ x
    if not isinstance(dleft, SymbolicZero):
        dout = dout + dleft.T @ (dright @ x)
    return out, dout


_factored_matvec.defjvp(_factored_matvec_jvp, symbolic_zeros=True)


class _LowRankPerturbedLinear(eqx.Module):
    """`eqx.nn.Linear` whose weight is perturbed through rank-r factors.

    The factor slots hold zeros as primals; their tangents carry the factors.
    """

    linear_weight: Array | None  # None in the tangent tree
    bias: Array | None
    left_slot: Array
    right_slot: Array
    in_features: int | str = eqx.field(static=True)
    out_features: int | str = eqx.field(static=True)

    def __call__(self, x: Array, *, key: PRNGKeyArray | None = None) -> Array:
        del key
        if self.in_features == "scalar":
            if jnp.shape(x) != ():
                raise ValueError("x must have scalar shape")
            x = jnp.broadcast_to(x, (1,))
        y = _factored_matvec(self.linear_weight, x, self.left_slot, self.right_slot)
        if self.bias is not None:
            y = y + self.bias
        if self.out_features == "scalar":
            y = jnp.squeeze(y)
        return y

    @property
    def weight(self):
        raise AttributeError(
            "fwdeqx.LowRank tangents perturb an `eqx.nn.Linear` through its "
            "`__call__`; this model reads `.weight` directly, so the low-rank tangent "
            "cannot reach it. Use `fwdeqx.Gaussian()` for this model."
        )


def _is_linear(node: object) -> bool:
    return isinstance(node, eqx.nn.Linear)


def perturb_low_rank_linears(x: PyTree, tangent: PyTree) -> tuple[PyTree, PyTree]:
    """Replace every `eqx.nn.Linear` of `x` whose weight tangent is a
    `LowRankMatrix` by a module that consumes the factors; returns the new
    `(x, tangent)` pair, ready for `eqx.filter_jvp`."""

    def new_module(linear, linear_tangent):
        if not (_is_linear(linear) and _holds_low_rank(linear_tangent)):
            return linear
        factors = linear_tangent.weight
        return _LowRankPerturbedLinear(
            linear_weight=linear.weight,
            bias=linear.bias,
            left_slot=jnp.zeros(factors.left.shape[-2:], factors.left.dtype),
            right_slot=jnp.zeros(factors.right.shape[-2:], factors.right.dtype),
            in_features=linear.in_features,
            out_features=linear.out_features,
        )

    def new_tangent(linear, linear_tangent):
        if not (_is_linear(linear) and _holds_low_rank(linear_tangent)):
            return linear_tangent
        factors = linear_tangent.weight
        return _LowRankPerturbedLinear(
            linear_weight=None,  # pyright: ignore
            bias=linear_tangent.bias,
            left_slot=factors.left,
            right_slot=factors.right,
            in_features=linear.in_features,
            out_features=linear.out_features,
        )

    new_x = jtu.tree_map(new_module, x, tangent, is_leaf=_is_linear)
    new_tangent_tree = jtu.tree_map(new_tangent, x, tangent, is_leaf=_is_linear)
    return new_x, new_tangent_tree


def _holds_low_rank(linear_tangent: object) -> bool:
    return _is_linear(linear_tangent) and isinstance(
        linear_tangent.weight,  # pyright: ignore
        LowRankMatrix,
    )


class LowRank(AbstractTangentDistribution):
    """Rank-r Gaussian tangents for the weights of every `eqx.nn.Linear`.

    For a weight W of shape (out, in) the tangent is v_W = Σ_{i≤r} a_i b_iᵀ / √r with
    a_i ~ N(0, I_out), b_i ~ N(0, I_in) independent. Then E[v_W] = 0 and
    Cov[v_W] = I, so the forward gradient stays unbiased (Theorem 1), yet the jvp
    costs O(r (in + out)) per example for that layer instead of O(in · out), and
    v_W is never stored. Every other leaf (biases, convolutions, any array not
    a Linear weight) gets a tangent from `fallback`.

    The price in variance is small: for one rank-1 weight with gradient G,
    E‖g‖² = (out + 2)(in + 2)‖G‖² against (out · in + 2)‖G‖² for a dense Gaussian
    tangent, a factor of about 1 + 2/in + 2/out; a larger rank moves it towards the
    dense value.

    Linear layers must be applied through their `__call__` (as `eqx.nn.MLP` and any
    module that calls `self.linear(x)` do); a model that reads `.weight` directly
    gets a clear error.

    **Arguments:**

    - `rank`: r, the number of outer products per weight matrix.
    - `fallback`: distribution of the tangents of all other leaves.
    """

    rank: int = eqx.field(static=True, default=1)
    fallback: AbstractTangentDistribution = Gaussian()

    def __check_init__(self):
        if not (isinstance(self.rank, int) and self.rank >= 1):
            raise ValueError(f"`rank` must be a positive integer, got {self.rank!r}.")

    def __call__(self, key: PRNGKeyArray, like: PyTree) -> PyTree:
        low_rank_key, fallback_key = jax.random.split(key)
        is_target = lambda node: _is_linear(node) and _is_matrix(node.weight)
        weights = [
            node.weight
            for node in jtu.tree_leaves(like, is_leaf=is_target)
            if is_target(node)
        ]
        factor_keys = iter(jax.random.split(low_rank_key, max(len(weights), 1)))
        # Dense tangents for everything else, drawn in one call to the fallback.
        rest = jtu.tree_map(
            lambda node: (
                eqx.tree_at(lambda n: n.weight, node, None) if is_target(node) else node
            ),
            like,
            is_leaf=is_target,
        )
        rest_tangent = self.fallback(fallback_key, rest)

        def attach(node, node_tangent):
            if not is_target(node):
                return node_tangent
            return eqx.tree_at(
                lambda n: n.weight,
                node_tangent,
                self._factors(next(factor_keys), node.weight),
                is_leaf=lambda n: n is None,
            )

        return jtu.tree_map(attach, like, rest_tangent, is_leaf=is_target)

    def _factors(self, key: PRNGKeyArray, weight: Array) -> LowRankMatrix:
        left_key, right_key = jax.random.split(key)
        out_size, in_size = weight.shape
        left = jax.random.normal(left_key, (self.rank, out_size), weight.dtype)
        right = jax.random.normal(right_key, (self.rank, in_size), weight.dtype)
        return LowRankMatrix(left / math.sqrt(self.rank), right)


def _is_matrix(leaf: object) -> bool:
    return eqx.is_inexact_array(leaf) and leaf.ndim == 2  # pyright: ignore
