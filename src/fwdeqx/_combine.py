"""Ways of turning K directional derivatives into one gradient estimate.

One batched jvp along K directions v_1..v_K (the columns of B, n x K) gives the K
numbers d = Bᵀ∇f. A *combiner* decides what to do with them:

- [`fwdeqx.Mean`][]: g = (1/K) Σ_k d_k v_k = (1/K) B Bᵀ∇f, the unbiased average of
    K forward gradients (Baydin et al. 2022).
- [`fwdeqx.Projection`][]: g = B (BᵀB)⁻¹ Bᵀ∇f, the orthogonal projection of ∇f on
    the span of the directions (Flügel et al. 2025). It needs the K x K Gram matrix
    BᵀB and one K x K solve, and no extra pass through the network.

Directions may hold dense arrays or structured leaves (`fwdeqx.LowRankMatrix`);
both combiners reach structured leaves only through the
`fwdeqx.AbstractStructuredTangent` interface.
"""

import abc

import equinox as eqx
import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jaxtyping import Array, Float, PyTree

from ._structured import gram_matrix, weighted_sum


class AbstractCombiner(eqx.Module):
    """Base class of multi-tangent combiners: the K directional derivatives along K
    sampled directions become one gradient estimate."""

    @abc.abstractmethod
    def __call__(
        self,
        derivatives: Float[Array, " k"],
        directions: PyTree,
        num_parameters: int,
    ) -> PyTree:
        """**Arguments:**

        - `derivatives`: d_k = ∇f·v_k for the K directions.
        - `directions`: the K directions, stacked on the leading axis of every leaf.
        - `num_parameters`: n, the number of differentiated scalars.

        **Returns:**

        The gradient estimate, a dense pytree shaped like one direction.
        """


class Mean(AbstractCombiner):
    """g = (1/K) Σ_k (∇f·v_k) v_k: the average of K forward gradients, unbiased for
    tangents with E[v] = 0, Cov[v] = I. The default combiner of
    [`fwdeqx.ForwardGradient`][] and [`fwdeqx.filter_value_and_fwd_grad`][].

    Along orthogonalised directions rescaled to norm √n the mean is (n/K) P∇f,
    which [`fwdeqx.Projection`][]`(rescale=True)` computes more cheaply, also for
    low-rank tangents.
    """

    def __call__(
        self,
        derivatives: Float[Array, " k"],
        directions: PyTree,
        num_parameters: int,
    ) -> PyTree:
        del num_parameters
        return weighted_sum(derivatives / derivatives.shape[0], directions)


class Projection(AbstractCombiner):
    """g = B (BᵀB)⁻¹ Bᵀ∇f: the orthogonal projection of the gradient on the span
    of the K directions (the columns of B), from the K directional derivatives
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
    with ∇f is the same with or without the rescaling. The rescaled projection is
    also the mean of K forward gradients along orthogonalised directions of norm
    √n.

    Works for dense tangents and for structured ones such as `fwdeqx.LowRank`.

    **Arguments:**

    - `rescale`: multiply by n/K (unbiased for isotropic tangents).
    """

    rescale: bool = eqx.field(static=True, default=False)

    def __call__(
        self,
        derivatives: Float[Array, " k"],
        directions: PyTree,
        num_parameters: int,
    ) -> PyTree:
        gram = gram_matrix(directions)
        weights = jsl.solve(gram, derivatives.astype(gram.dtype), assume_a="pos")
        if self.rescale:
            weights = weights * jnp.asarray(
                num_parameters / derivatives.shape[0], weights.dtype
            )
        return weighted_sum(weights.astype(derivatives.dtype), directions)
