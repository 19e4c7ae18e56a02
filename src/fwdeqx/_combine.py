"""Ways of turning K directional derivatives into one gradient estimate.

One batched jvp along K tangents v_1..v_K (the columns of B, n x K) gives the K
numbers d = Bᵀ∇f. A *combiner* decides what to do with them:

- [`fwdeqx.Mean`][]: g = (1/K) Σ_k d_k v_k = (1/K) B Bᵀ∇f, the unbiased average of
    K forward gradients (Baydin et al. 2022); optionally along orthogonalised
    tangents.
- [`fwdeqx.Projection`][]: g = B (BᵀB)⁻¹ Bᵀ∇f, the orthogonal projection of ∇f on
    the span of the tangents (Flügel et al. 2025). It needs the K x K Gram matrix
    BᵀB and one K x K solve, and no extra pass through the network.

Tangents may be dense arrays or `fwdeqx.LowRankMatrix` leaves; the Gram matrix of
low-rank tangents is computed from their factors.
"""

import abc
import math

import equinox as eqx
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import jax.tree_util as jtu
from jaxtyping import Array, Float, PyTree

from ._lowrank import LowRankMatrix
from ._structured import is_structured, weighted_tangent_sum


class AbstractCombiner(eqx.Module):
    """Base class of multi-tangent combiners.

    A combiner may first transform the K sampled tangents (`prepare`, e.g. to
    orthogonalise them) and then maps the K directional derivatives along the
    prepared tangents to a gradient estimate (`__call__`).
    """

    def prepare(self, tangents: PyTree, num_parameters: int) -> PyTree:
        """The tangents the jvp is taken along; by default the sampled ones.

        **Arguments:**

        - `tangents`: K tangents stacked on the leading axis of every leaf.
        - `num_parameters`: n, the number of differentiated scalars.

        **Returns:**

        A stack of K tangents of the same structure.
        """
        del num_parameters
        return tangents

    @abc.abstractmethod
    def __call__(
        self,
        derivatives: Float[Array, " k"],
        tangents: PyTree,
        num_parameters: int,
    ) -> PyTree:
        """**Arguments:**

        - `derivatives`: d_k = ∇f·v_k for the K prepared tangents.
        - `tangents`: the K prepared tangents, stacked on the leading axis.
        - `num_parameters`: n, the number of differentiated scalars.

        **Returns:**

        The gradient estimate, a dense pytree shaped like one tangent.
        """


def _leaf_gram(leaf: Array | LowRankMatrix) -> Float[Array, "k k"]:
    if isinstance(leaf, LowRankMatrix):
        # ⟨Σ_i a_i b_iᵀ, Σ_j c_j e_jᵀ⟩ = Σ_ij (a_i·c_j)(b_i·e_j), for every pair
        # of tangents k, l; never forms the (out, in) matrices.
        left = jnp.einsum("kro,lso->klrs", leaf.left, leaf.left)
        right = jnp.einsum("kri,lsi->klrs", leaf.right, leaf.right)
        return jnp.sum(left * right, axis=(2, 3))
    if is_structured(leaf):
        raise TypeError(
            "fwdeqx.Projection supports dense tangents and fwdeqx.LowRankMatrix "
            f"tangents, got a structured tangent of type {type(leaf).__name__}."
        )
    flat = leaf.reshape(leaf.shape[0], -1)
    return flat @ flat.T


def gram_matrix(tangents: PyTree) -> Float[Array, "k k"]:
    """BᵀB: the K x K matrix of inner products between K stacked tangents, summed
    over all leaves (dense arrays and `LowRankMatrix` factors)."""
    leaves = jtu.tree_leaves(tangents, is_leaf=is_structured)
    if not leaves:
        raise ValueError("Cannot combine tangents of a pytree with no array leaves.")
    grams = [_leaf_gram(leaf) for leaf in leaves]
    dtype = jnp.result_type(*grams)
    return sum((g.astype(dtype) for g in grams[1:]), start=grams[0].astype(dtype))


def _check_dense(tangents: PyTree) -> None:
    if any(is_structured(x) for x in jtu.tree_leaves(tangents, is_leaf=is_structured)):
        raise TypeError(
            "`orthogonalize=True` needs dense tangents: a linear combination of "
            "low-rank tangents is no longer low-rank. Use `fwdeqx.Gaussian()` or "
            "`fwdeqx.Rademacher()` tangents, or `fwdeqx.Projection()`, which gives "
            "the same estimate for low-rank tangents without orthogonalising."
        )


def _orthonormalize_once(tangents: PyTree) -> PyTree:
    gram = gram_matrix(tangents)
    cholesky = jnp.linalg.cholesky(gram)
    # Rows of L⁻¹B are orthonormal: (L⁻¹B)(L⁻¹B)ᵀ = L⁻¹ G L⁻ᵀ = I.
    inverse = jsl.solve_triangular(
        cholesky, jnp.eye(gram.shape[0], dtype=gram.dtype), lower=True
    )
    return jtu.tree_map(
        lambda leaf: jnp.tensordot(inverse.astype(leaf.dtype), leaf, axes=1),
        tangents,
    )


def orthogonalize(tangents: PyTree, num_parameters: int) -> PyTree:
    """Orthogonalise K stacked tangents (Cholesky QR, done twice for accuracy in
    float32) and scale each to norm √n.

    The result spans the same subspace. For Gaussian tangents it is √n times a
    Haar-distributed orthonormal K-frame, so every tangent still has
    E[v] = 0 and Cov[v] = I.
    """
    _check_dense(tangents)
    for _ in range(2):
        tangents = _orthonormalize_once(tangents)
    scale = math.sqrt(num_parameters)
    return jtu.tree_map(lambda leaf: jnp.asarray(scale, leaf.dtype) * leaf, tangents)


class Mean(AbstractCombiner):
    """g = (1/K) Σ_k (∇f·v_k) v_k: the average of K forward gradients, unbiased for
    tangents with E[v] = 0, Cov[v] = I. This is what `ForwardGradient` does by
    default.

    With `orthogonalize=True` the K tangents are first orthogonalised and rescaled
    to norm √n (dense tangents only). Then g = (n/K) P∇f, with P the projection on
    their span: the rescaled [`fwdeqx.Projection`][]. For Gaussian tangents it is
    still unbiased, and E‖g‖² = (n/K)‖∇f‖² instead of (n + K + 1)/K ‖∇f‖² for
    independent tangents — a small gain when n ≫ K.

    **Arguments:**

    - `orthogonalize`: orthogonalise the tangents before the jvp.
    """

    orthogonalize: bool = eqx.field(static=True, default=False)

    def prepare(self, tangents: PyTree, num_parameters: int) -> PyTree:
        if self.orthogonalize:
            return orthogonalize(tangents, num_parameters)
        return tangents

    def __call__(
        self,
        derivatives: Float[Array, " k"],
        tangents: PyTree,
        num_parameters: int,
    ) -> PyTree:
        del num_parameters
        return weighted_tangent_sum(derivatives / derivatives.shape[0], tangents)


class Projection(AbstractCombiner):
    """g = B (BᵀB)⁻¹ Bᵀ∇f: the orthogonal projection of the gradient on the span
    of the K tangents (the columns of B), from the K directional derivatives
    Bᵀ∇f, the K x K Gram matrix BᵀB and one K x K solve (Flügel et al. 2025).

    It is the least-squares gradient consistent with the K measured derivatives,
    and never longer than ∇f. But it is **biased**: for isotropic tangents (any
    distribution whose law is invariant under rotations, e.g. Gaussian) the span
    is a uniformly random K-dimensional subspace and E[P∇f] = (K/n)∇f, with n the
    number of parameters. Plain SGD with it therefore needs a learning rate n/K
    times larger; adaptive optimizers such as Adam absorb the scale. With
    `rescale=True` the estimate is multiplied by n/K, which makes it unbiased in
    expectation for isotropic tangents (for Rademacher or low-rank tangents the
    span is not exactly uniform and the rescaled estimate is only approximately
    unbiased). Its second moment is then (n/K)‖∇f‖², below the
    (n + K + 1)/K ‖∇f‖² of the mean of K Gaussian forward gradients; its cosine
    with ∇f is the same with or without the rescaling.

    Works for dense tangents and for `fwdeqx.LowRank` tangents.

    **Arguments:**

    - `rescale`: multiply by n/K (unbiased for isotropic tangents).
    """

    rescale: bool = eqx.field(static=True, default=False)

    def __call__(
        self,
        derivatives: Float[Array, " k"],
        tangents: PyTree,
        num_parameters: int,
    ) -> PyTree:
        gram = gram_matrix(tangents)
        weights = jsl.solve(gram, derivatives.astype(gram.dtype), assume_a="pos")
        if self.rescale:
            weights = weights * jnp.asarray(
                num_parameters / derivatives.shape[0], weights.dtype
            )
        return weighted_tangent_sum(weights.astype(derivatives.dtype), tangents)


def check_combiner(combine: object) -> None:
    if not isinstance(combine, AbstractCombiner):
        raise TypeError(
            "`combine` must be a combiner such as `fwdeqx.Mean()` or "
            f"`fwdeqx.Projection()`, got {combine!r}."
        )
