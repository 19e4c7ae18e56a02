"""Tangent distributions: `dist(key, like) -> tangent pytree`.

A tangent distribution sees only the differentiated half of the first argument (the
`eqx.is_inexact_array` leaves, `None` elsewhere) and returns a pytree of the same
structure. Every distribution here has E[v] = 0 and Cov[v] = I over the flattened
parameters, which is what makes the forward gradient `(∇f·v) v` unbiased.
"""

import abc
import math
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, PRNGKeyArray, PyTree

from ._hash_random import hash_normal
from ._structured import scale_tangent


def _check_leaf(leaf: object) -> None:
    if not eqx.is_inexact_array(leaf):
        raise TypeError(
            "Tangent distributions only accept floating-point arrays (or `None`) as "
            f"leaves of `like`, got {type(leaf).__name__}. Pass "
            "`eqx.filter(x, eqx.is_inexact_array)` rather than `x` itself."
        )
    if jnp.issubdtype(leaf.dtype, jnp.complexfloating):  # pyright: ignore
        raise TypeError(
            "Forward gradients of complex parameters are not supported; split them "
            "into real and imaginary parts."
        )


def split_over_leaves(key: PRNGKeyArray, like: PyTree) -> PyTree:
    """One independent key per non-`None` leaf of `like`, in the same structure."""
    leaves, treedef = jtu.tree_flatten(like)
    for leaf in leaves:
        _check_leaf(leaf)
    keys = list(jax.random.split(key, max(len(leaves), 1)))[: len(leaves)]
    return jtu.tree_unflatten(treedef, keys)


class AbstractTangentDistribution(eqx.Module):
    """Base class of tangent distributions.

    Subclasses implement `__call__(key, like)`, returning a tangent with the structure
    of `like`. To keep the forward gradient unbiased they must have E[v] = 0 and
    Cov[v] = I over the concatenation of all leaves.
    """

    @abc.abstractmethod
    def __call__(self, key: PRNGKeyArray, like: PyTree) -> PyTree:
        """**Arguments:**

        - `key`: a JAX PRNG key.
        - `like`: the differentiated half of the first argument,
          `eqx.filter(x, eqx.is_inexact_array)`: floating arrays and `None`.

        **Returns:**

        A tangent pytree of the same structure, shapes and dtypes as `like`.
        """


class Gaussian(AbstractTangentDistribution):
    """Standard normal tangents, v ~ N(0, I): the distribution of both papers.

    E[v] = 0 and Cov[v] = I, so the forward gradient g = (∇f·v) v is unbiased
    (Theorem 1). Its second moment is E‖g‖² = (n + 2)‖∇f‖² for n parameters, so its
    variance is E‖g − ∇f‖² = (n + 1)‖∇f‖². E‖v‖⁴ = n(n + 2) (the C1 of Theorem 4).

    **Arguments:**

    - `generator`: where the random bits come from. `"jax"` (default):
        `jax.random.normal` with the key's own PRNG (threefry). `"hash"`: a
        counter hashed by two rounds of a 32-bit integer mixer, seeded from the
        key, then converted to normal samples as `jax.random.normal` does. Its bits
        are much cheaper than threefry's on CPU (the Performance page of the
        documentation gives the measured costs), good for Monte-Carlo estimates but
        not cryptographic, and its samples differ from `"jax"`'s for the same key.

    !!! Example

        ```python
        v = fwdeqx.Gaussian()(key, eqx.filter(model, eqx.is_inexact_array))
        fast = fwdeqx.ForwardGradient(fwdeqx.Gaussian(generator="hash"))
        ```
    """

    generator: Literal["jax", "hash"] = eqx.field(static=True, default="jax")

    def __check_init__(self):
        if self.generator not in ("jax", "hash"):
            raise ValueError(
                f"`generator` must be 'jax' or 'hash', got {self.generator!r}."
            )

    def __call__(self, key: PRNGKeyArray, like: PyTree) -> PyTree:
        keys = split_over_leaves(key, like)
        sample = jax.random.normal if self.generator == "jax" else hash_normal
        return jtu.tree_map(
            lambda k, leaf: sample(k, leaf.shape, leaf.dtype), keys, like
        )


def _random_signs(key: PRNGKeyArray, shape: tuple[int, ...], dtype) -> Array:
    """±1 with probability ½ each, 32 signs from every random 32-bit word."""
    size = math.prod(shape)
    words = jax.random.bits(key, (-(-size // 32),), jnp.uint32)
    shifts = jnp.arange(32, dtype=jnp.uint32)
    bits = (words[:, None] >> shifts[None, :]) & jnp.uint32(1)
    signs = 1 - 2 * bits.reshape(-1)[:size].astype(dtype)
    return signs.reshape(shape)


class Rademacher(AbstractTangentDistribution):
    """Rademacher tangents: every entry independently ±1 with probability ½.

    E[v] = 0 and Cov[v] = I, so the forward gradient is unbiased. Since ‖v‖² = n
    exactly, E‖g‖² = n‖∇f‖² (n parameters), the smallest second moment of any
    distribution with independent entries; the variance is (n − 1)‖∇f‖².
    E‖v‖⁴ = n².

    Signs are unpacked from random 32-bit words, 32 per word.
    """

    def __call__(self, key: PRNGKeyArray, like: PyTree) -> PyTree:
        keys = split_over_leaves(key, like)
        return jtu.tree_map(
            lambda k, leaf: _random_signs(k, leaf.shape, leaf.dtype), keys, like
        )


class Scaled(AbstractTangentDistribution):
    """Another distribution's tangents multiplied by a constant: Cov[v] = scale² I.

    Its forward gradient is biased, E[g] = scale²∇f; it exists to show that the
    identity covariance is what unbiasedness rests on, and to match a step size.

    **Arguments:**

    - `base`: the distribution to scale.
    - `scale`: the constant factor.
    """

    base: AbstractTangentDistribution
    scale: float = eqx.field(static=True)

    def __call__(self, key: PRNGKeyArray, like: PyTree) -> PyTree:
        return scale_tangent(self.base(key, like), self.scale)


def tree_size(like: PyTree) -> int:
    """Number of scalar parameters n in the floating-point leaves of `like`."""
    return sum(x.size for x in jtu.tree_leaves(like) if eqx.is_inexact_array(x))
