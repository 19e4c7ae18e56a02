"""Multi-tangent combinations: mean, projection (plain and rescaled)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import pytest

import fwdeqx
from fwdeqx import Mean, Projection
from fwdeqx._structured import densify, gram_matrix

from .helpers import assert_unbiased, flat_estimates, tree_allclose


def _loss(params):
    return jnp.sum(jnp.sin(params["a"]) * params["a"] ** 2) + jnp.sum(
        jnp.cos(params["b"]) @ params["a"][:2]
    )


def _params(dtype):
    return {
        "a": jnp.array([0.3, -1.2, 0.7], dtype),
        "b": jnp.array([[0.1, 0.5], [-0.4, 0.9]], dtype),
    }


def _flat_stack(stack):
    """The K stacked tangents as the columns of an n x K matrix B."""
    leaves = jtu.tree_leaves(densify(stack))
    return np.concatenate([np.asarray(x).reshape(x.shape[0], -1) for x in leaves], 1).T


def sample_tangents(tangents, key, like, num_tangents):
    """The K directions `ForwardGradient(tangents, num_tangents)` draws from `key`."""
    estimator = fwdeqx.ForwardGradient(tangents, num_tangents)
    return estimator.sample(estimator.direction_keys(key), like)


def _flat(tree):
    return np.concatenate([np.asarray(x).ravel() for x in jtu.tree_leaves(tree)])


@pytest.mark.parametrize("num_tangents", [3, 7])
def test_projection_is_least_squares_projection(getkey, num_tangents):
    with jax.enable_x64(True):
        params = _params(jnp.float64)
        key = getkey()
        est = fwdeqx.ForwardGradient(num_tangents=num_tangents, combine=Projection())
        value, grad = est(_loss, params, key=key)
        stack = sample_tangents(fwdeqx.Gaussian(), key, params, num_tangents)
        basis = _flat_stack(stack)
        true = _flat(jax.grad(_loss)(params))
        coefficients, *_ = np.linalg.lstsq(basis, true, rcond=None)
        np.testing.assert_allclose(_flat(grad), basis @ coefficients, atol=1e-10)
        np.testing.assert_allclose(value, _loss(params))
        if num_tangents == 7:  # K = n: the span is everything, the estimate exact
            np.testing.assert_allclose(_flat(grad), true, atol=1e-10)


def test_mean_combiner_is_the_default_estimate(getkey):
    params = _params(jnp.float32)
    key = getkey()
    _, default = fwdeqx.ForwardGradient(num_tangents=3)(_loss, params, key=key)
    _, mean = fwdeqx.ForwardGradient(num_tangents=3, combine=Mean())(
        _loss, params, key=key
    )
    assert tree_allclose(default, mean, rtol=1e-5, atol=1e-6)


def test_rescaled_projection_is_mean_along_orthogonalised_directions(getkey):
    """(n/K) P∇f is the mean of K forward gradients along the directions
    orthogonalised and rescaled to norm √n (what `Mean(orthogonalize=True)` was)."""
    with jax.enable_x64(True):
        params = _params(jnp.float64)
        key = getkey()
        est = fwdeqx.ForwardGradient(num_tangents=3, combine=Projection(rescale=True))
        _, rescaled = est(_loss, params, key=key)
        basis = _flat_stack(sample_tangents(fwdeqx.Gaussian(), key, params, 3))
        orthogonal, _ = np.linalg.qr(basis)
        orthogonal = np.sqrt(7) * orthogonal
        true = _flat(jax.grad(_loss)(params))
        mean = orthogonal @ (orthogonal.T @ true) / 3
        np.testing.assert_allclose(_flat(rescaled), mean, atol=1e-10)


def test_rescaled_projection_is_unbiased(getkey):
    """E[(n/K) P∇f] = ∇f for Gaussian tangents (`assert_unbiased`), on a linear
    function (constant ∇f, ‖∇f‖ = 1), n = 6, K = 2. Without the rescaling the
    estimate is shrunk by K/n = 1/3, for the same keys."""
    direction = jnp.array([0.5, -0.5, 0.1, 0.7, -0.1, 0.0], jnp.float32)
    direction = direction / jnp.linalg.norm(direction)
    params = {"w": jnp.zeros(4, jnp.float32), "b": jnp.zeros(2, jnp.float32)}
    loss = lambda p: jnp.dot(direction, jnp.concatenate([p["w"], p["b"]]))
    est = fwdeqx.ForwardGradient(num_tangents=2, combine=Projection(rescale=True))
    key = getkey()
    rescaled = assert_unbiased(est, loss, params, key=key)
    plain = fwdeqx.ForwardGradient(num_tangents=2, combine=Projection())
    shrunk = flat_estimates(plain, loss, params, key=key, num=len(rescaled))
    np.testing.assert_allclose(3 * shrunk, rescaled, rtol=1e-4, atol=1e-5)


def test_low_rank_projection(getkey):
    """The Gram matrix of low-rank tangents from their factors equals the dense one,
    and the projection is the least-squares projection on the dense tangents."""
    with jax.enable_x64(True):
        model = eqx.nn.MLP(4, 2, 5, 1, key=getkey())
        like = jtu.tree_map(
            lambda x: x.astype(jnp.float64),
            eqx.filter(model, eqx.is_inexact_array),
        )
        stack = sample_tangents(fwdeqx.LowRank(rank=2), getkey(), like, 4)
        dense = densify(stack)
        np.testing.assert_allclose(gram_matrix(stack), gram_matrix(dense), rtol=1e-10)
        basis = _flat_stack(stack)
        gradient = np.asarray(jax.random.normal(getkey(), (basis.shape[0],)))
        derivatives = jnp.asarray(basis.T @ gradient)
        projected = Projection()(derivatives, stack, basis.shape[0])
        coefficients, *_ = np.linalg.lstsq(basis, gradient, rcond=None)
        np.testing.assert_allclose(_flat(projected), basis @ coefficients, atol=1e-9)


def test_errors():
    with pytest.raises(TypeError, match="combine"):
        fwdeqx.ForwardGradient(num_tangents=2, combine="projection")  # pyright: ignore
