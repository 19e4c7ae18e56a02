"""The SPSA / MeZO zeroth-order estimator."""

import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fwdeqx
from fwdeqx._spsa import SPSA

from .helpers import assert_unbiased, tree_allclose, tree_dot


def _loss(params):
    return jnp.sum(jnp.sin(params["a"]) * params["a"] ** 2) + jnp.sum(
        jnp.exp(0.3 * params["b"])
    )


def _params(dtype):
    return {
        "a": jnp.array([0.3, -1.2, 0.7], dtype),
        "b": jnp.array([[0.1, 0.5], [-0.4, 0.9]], dtype),
    }


def test_converges_to_directional_derivative(getkey):
    """The central difference → ∇f·z as ε → 0, with error O(ε²) (float64)."""
    with jax.enable_x64(True):
        params = _params(jnp.float64)
        key = getkey()
        direction = fwdeqx.Gaussian()(jax.random.split(key, 1)[0], params)
        _, exact = jax.jvp(_loss, (params,), (direction,))
        errors = []
        for eps in (1e-1, 1e-2, 1e-3, 1e-4):
            _, grad = SPSA(eps=eps)(_loss, params, key=key)
            slope = tree_dot(grad, direction) / tree_dot(direction, direction)
            errors.append(abs(float(slope - exact)))
        assert all(b < a / 50 for a, b in itertools.pairwise(errors))
        assert errors[-1] < 1e-7 * abs(float(exact)) + 1e-9


def test_matches_forward_gradient_with_same_directions(getkey):
    """Same key → same directions as ForwardGradient with K tangents, so for small ε
    the two estimates agree; the value is f(θ) up to O(ε²)."""
    with jax.enable_x64(True):
        params = _params(jnp.float64)
        key = getkey()
        value, grad = SPSA(eps=1e-5, num_directions=3)(_loss, params, key=key)
        fwd_value, fwd_grad = fwdeqx.ForwardGradient(num_tangents=3)(
            _loss, params, key=key
        )
        assert tree_allclose(grad, fwd_grad, rtol=1e-7, atol=1e-8)
        np.testing.assert_allclose(value, fwd_value, rtol=1e-8)


def test_module_with_static_leaves_jit_and_aux(getkey):
    model = eqx.nn.MLP(3, 2, 4, 1, key=getkey())
    x = jnp.ones((5, 3), jnp.float32)

    def loss(m, x):
        out = jax.vmap(m)(x)
        return jnp.mean(out**2), out

    est = SPSA(num_directions=2)
    assert est.num_forward_passes == 4
    (value, aux), grad = eqx.filter_jit(
        lambda m, k: est(loss, m, x, key=k, has_aux=True)
    )(model, getkey())
    assert aux.shape == (5, 2)
    assert jnp.isfinite(value)
    assert grad.layers[0].weight.shape == (4, 3)
    assert grad.activation is None


def test_errors():
    with pytest.raises(ValueError, match="eps"):
        SPSA(eps=0.0)
    with pytest.raises(ValueError, match="num_directions"):
        SPSA(num_directions=0)
    with pytest.raises(TypeError, match="tangents"):
        SPSA(tangents="gaussian")  # pyright: ignore


def test_unbiased_on_a_quadratic():
    """On a quadratic the central difference is the directional derivative, so
    SPSA is unbiased (`assert_unbiased`, float64)."""
    with jax.enable_x64(True):
        a = jax.random.normal(jax.random.key(0), (4, 4), jnp.float64)
        x = jax.random.normal(jax.random.key(1), (4,), jnp.float64)
        loss = lambda x: 0.5 * jnp.sum((a @ x) ** 2) + jnp.sum(x)
        est = SPSA(eps=0.1, num_directions=2)
        assert_unbiased(est, loss, x, key=jax.random.key(2))
