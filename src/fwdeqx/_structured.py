"""Structured tangents: tangent leaves stored in factored form, never made dense.

A structured tangent stands in a tangent pytree where a dense array would stand. It
declares everything the generic code needs from it: the combiners' weighted sums
and Gram matrices, and a hook that rewrites the model and the tangent so that
`eqx.filter_jvp` can consume the factors. The generic modules (`_directional.py`,
`_combine.py`) only call the functions below; they never import a concrete
structured tangent (`_lowrank.py` is one).
"""

import abc

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, Float, PyTree


class AbstractStructuredTangent(eqx.Module):
    """A tangent for one array leaf, kept in a cheaper form than the dense array.

    A tangent distribution may return subclasses of it in place of dense leaves
    (as `fwdeqx.LowRank` returns `fwdeqx.LowRankMatrix`). A sampled stack of K
    directions holds one instance whose arrays carry a leading axis of size K.
    Subclasses implement every method below; the jvp reaches them through
    `prepare_jvp`, and the combiners through `weighted_sum` and `gram`.
    """

    @abc.abstractmethod
    def weighted_sum(self, weights: Float[Array, " k"]) -> Array:
        """Σ_k weights[k] v_k as a dense array, for a stack of K directions."""

    @abc.abstractmethod
    def gram(self) -> Float[Array, "k k"]:
        """The K x K inner products ⟨v_k, v_l⟩ of a stack of K directions, computed
        without forming the dense directions."""

    @abc.abstractmethod
    def scaled(self, scale: float | Float[Array, ""]) -> "AbstractStructuredTangent":
        """The tangent multiplied by `scale`."""

    @abc.abstractmethod
    def to_dense(self) -> Array:
        """The tangent as a dense array (for tests and diagnostics)."""

    @classmethod
    @abc.abstractmethod
    def prepare_jvp(cls, x: PyTree, tangent: PyTree) -> tuple[PyTree, PyTree]:
        """Rewrite `(x, tangent)` so that `eqx.filter_jvp(fn, (x,), (tangent,))`
        gives the derivative of `fn` along the tangent: replace whatever in `x`
        consumes the leaves of this class (for `fwdeqx.LowRankMatrix`, the
        `eqx.nn.Linear` holding the weight) by a module that takes the factors as
        its tangent. Leaves of other classes are left as they are.

        **Arguments:**

        - `x`: the pytree differentiated.
        - `tangent`: one direction (no leading K axis), of the structure of
            `eqx.filter(x, eqx.is_inexact_array)`.

        **Returns:**

        The new `(x, tangent)` pair, with no leaves of this class left in the
        tangent.
        """


def is_structured(node: object) -> bool:
    return isinstance(node, AbstractStructuredTangent)


def _structured_leaves(tangent: PyTree) -> list[AbstractStructuredTangent]:
    leaves = jtu.tree_leaves(tangent, is_leaf=is_structured)
    return [leaf for leaf in leaves if is_structured(leaf)]


def prepare_jvp(x: PyTree, tangent: PyTree) -> tuple[PyTree, PyTree]:
    """`(x, tangent)` ready for `eqx.filter_jvp`: each class of structured leaf in
    `tangent` rewrites the pair through its `prepare_jvp` hook (a no-op for dense
    tangents)."""
    classes = list(dict.fromkeys(type(leaf) for leaf in _structured_leaves(tangent)))
    for cls in classes:
        x, tangent = cls.prepare_jvp(x, tangent)
    left = _structured_leaves(tangent)
    if left:
        raise TypeError(
            f"A structured tangent of type {type(left[0]).__name__} was left in the "
            "tangent after its `prepare_jvp` hook: nothing in the model consumes it. "
            "Use a dense tangent distribution such as `fwdeqx.Gaussian()` for this "
            "model."
        )
    return x, tangent


def scale_tangent(tangent: PyTree, scale: float | Float[Array, ""]) -> PyTree:
    """The tangent multiplied by `scale`, structured leaves kept structured."""

    def _scale(leaf):
        if is_structured(leaf):
            return leaf.scaled(scale)
        return jnp.asarray(scale, leaf.dtype) * leaf

    return jtu.tree_map(_scale, tangent, is_leaf=is_structured)


def weighted_sum(weights: Float[Array, " k"], directions: PyTree) -> PyTree:
    """Σ_k weights[k] v_k, dense, for K directions stacked along a leading axis."""

    def _sum(leaf):
        if is_structured(leaf):
            return leaf.weighted_sum(weights)
        return jnp.tensordot(weights.astype(leaf.dtype), leaf, axes=1)

    return jtu.tree_map(_sum, directions, is_leaf=is_structured)


def gram_matrix(directions: PyTree) -> Float[Array, "k k"]:
    """BᵀB: the K x K inner products between K stacked directions, summed over all
    leaves (dense arrays, and structured leaves through their `gram`)."""

    def _gram(leaf):
        if is_structured(leaf):
            return leaf.gram()
        flat = leaf.reshape(leaf.shape[0], -1)
        return flat @ flat.T

    grams = [_gram(leaf) for leaf in jtu.tree_leaves(directions, is_leaf=is_structured)]
    if not grams:
        raise ValueError("Cannot combine directions of a pytree with no array leaves.")
    dtype = jnp.result_type(*grams)
    total = grams[0].astype(dtype)
    for gram in grams[1:]:
        total = total + gram.astype(dtype)
    return total


def densify(tangent: PyTree) -> PyTree:
    """The tangent with every structured leaf made dense."""
    return jtu.tree_map(
        lambda x: x.to_dense() if is_structured(x) else x,
        tangent,
        is_leaf=is_structured,
    )
