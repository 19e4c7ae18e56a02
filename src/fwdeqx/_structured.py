"""Structured tangents: tangent leaves stored in factored form, never made dense.

A structured tangent stands in a tangent pytree where a dense array would stand. The
jvp consumes it through a module that knows its structure (see `_lowrank.py`); only
the final gradient is made dense, once, by `weighted_tangent_sum`.
"""

import abc

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, Float, PyTree


class AbstractStructuredTangent(eqx.Module):
    """A tangent for one array leaf, kept in a cheaper form than the dense array."""

    @abc.abstractmethod
    def weighted_sum(self, weights: Float[Array, " k"]) -> Array:
        """Σ_k weights[k] v_k as a dense array, for a stack of k tangents."""

    @abc.abstractmethod
    def scaled(self, scale: float | Float[Array, ""]) -> "AbstractStructuredTangent":
        """The tangent multiplied by `scale`."""

    @abc.abstractmethod
    def to_dense(self) -> Array:
        """The tangent as a dense array (for tests and diagnostics)."""


def is_structured(node: object) -> bool:
    return isinstance(node, AbstractStructuredTangent)


def has_structured(tangent: PyTree) -> bool:
    leaves = jtu.tree_leaves(tangent, is_leaf=is_structured)
    return any(is_structured(leaf) for leaf in leaves)


def scale_tangent(tangent: PyTree, scale: float | Float[Array, ""]) -> PyTree:
    """The tangent multiplied by `scale`, structured leaves kept structured."""

    def _scale(leaf):
        if is_structured(leaf):
            return leaf.scaled(scale)
        return jnp.asarray(scale, leaf.dtype) * leaf

    return jtu.tree_map(_scale, tangent, is_leaf=is_structured)


def weighted_tangent_sum(weights: Float[Array, " k"], tangents: PyTree) -> PyTree:
    """Σ_k weights[k] v_k for tangents stacked along a leading axis of size k."""

    def _sum(leaf):
        if is_structured(leaf):
            return leaf.weighted_sum(weights)
        return jnp.tensordot(weights.astype(leaf.dtype), leaf, axes=1)

    return jtu.tree_map(_sum, tangents, is_leaf=is_structured)


def densify(tangent: PyTree) -> PyTree:
    """The tangent with every structured leaf made dense."""
    return jtu.tree_map(
        lambda x: x.to_dense() if is_structured(x) else x,
        tangent,
        is_leaf=is_structured,
    )
