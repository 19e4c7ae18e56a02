"""The forward-gradient-aware Adam (`scale_by_fwd_adam`, `fwd_adam`)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fwdeqx
from fwdeqx._optim import fwd_adam, scale_by_fwd_adam

from .helpers import tree_allclose


_GRADS = [
    {"w": np.array([1.0, -2.0]), "b": np.array([0.5])},
    {"w": np.array([-1.0, 4.0]), "b": np.array([2.0])},
]


def _params():
    return {"w": jnp.array([1.0, 2.0], jnp.float32), "b": jnp.array([3.0], jnp.float32)}


def _run(transform, grads):
    state = transform.init(_params())
    outputs = []
    for grad in grads:
        grad = {k: jnp.asarray(v, jnp.float32) for k, v in grad.items()}
        update, state = transform.update(grad, state, _params())
        outputs.append(update)
    return outputs, state


def test_leaf_second_moment_by_hand():
    b1, b2 = 0.9, 0.99
    outputs, state = _run(scale_by_fwd_adam(b1, b2, eps=0.0), _GRADS)
    assert state.nu["w"].shape == () and state.nu["b"].shape == ()
    # Step 1: m̂ = g, ν̂ = mean(g²) per leaf.
    np.testing.assert_allclose(
        outputs[0]["w"], np.array([1.0, -2.0]) / np.sqrt(2.5), rtol=1e-6
    )
    np.testing.assert_allclose(outputs[0]["b"], np.array([1.0]), rtol=1e-6)
    # Step 2, by hand: m = 0.9·0.1·g1 + 0.1·g2, ν = 0.99·0.01·s1 + 0.01·s2.
    m_w = b1 * (1 - b1) * np.array([1.0, -2.0]) + (1 - b1) * np.array([-1.0, 4.0])
    nu_w = b2 * (1 - b2) * 2.5 + (1 - b2) * 8.5
    expected_w = (m_w / (1 - b1**2)) / np.sqrt(nu_w / (1 - b2**2))
    np.testing.assert_allclose(outputs[1]["w"], expected_w, rtol=1e-5)
    m_b = b1 * (1 - b1) * 0.5 + (1 - b1) * 2.0
    nu_b = b2 * (1 - b2) * 0.25 + (1 - b2) * 4.0
    expected_b = (m_b / (1 - b1**2)) / np.sqrt(nu_b / (1 - b2**2))
    np.testing.assert_allclose(outputs[1]["b"], [expected_b], rtol=1e-5)


def test_global_second_moment_by_hand():
    outputs, state = _run(scale_by_fwd_adam(eps=0.0, second_moment="global"), _GRADS)
    assert state.nu.shape == ()
    rms = np.sqrt((1 + 4 + 0.25) / 3)
    np.testing.assert_allclose(outputs[0]["w"], np.array([1.0, -2.0]) / rms, rtol=1e-4)
    np.testing.assert_allclose(outputs[0]["b"], np.array([0.5]) / rms, rtol=1e-4)


def test_coordinate_second_moment_is_adam():
    ours, _ = _run(scale_by_fwd_adam(second_moment="coordinate"), _GRADS)
    with jax.numpy_dtype_promotion("standard"):  # optax needs implicit promotion
        theirs, _ = _run(optax.scale_by_adam(), _GRADS)
    for a, b in zip(ours, theirs, strict=True):
        assert tree_allclose(a, b, rtol=1e-6)


def test_none_leaves_and_jit(getkey):
    model = eqx.nn.MLP(3, 2, 4, 1, key=getkey())
    params = eqx.filter(model, eqx.is_inexact_array)
    optimizer = fwd_adam(1e-2)
    state = optimizer.init(params)
    updates, state = eqx.filter_jit(optimizer.update)(params, state, params)
    model = eqx.apply_updates(model, updates)
    assert updates.activation is None


def test_reduces_loss_with_forward_gradients(getkey):
    """Logistic regression on separable synthetic data: 300 forward-gradient steps
    with `fwd_adam` bring the loss well below its starting value."""
    x = jax.random.normal(getkey(), (256, 8), jnp.float32)
    w_true = jax.random.normal(getkey(), (8,), jnp.float32)
    y = (x @ w_true > 0).astype(jnp.int32)
    model = eqx.nn.Linear(8, 2, key=getkey())

    def loss(model, batch):
        inputs, labels = batch
        logits = jax.vmap(model)(inputs)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    step = fwdeqx.make_step(loss, fwd_adam(3e-2), fwdeqx.ForwardGradient())
    state = step.init(model)
    start = loss(model, (x, y))
    for key in jax.random.split(getkey(), 300):
        model, state, _ = step(model, state, (x, y), key)
    assert loss(model, (x, y)) < 0.5 * start


def test_errors():
    with pytest.raises(ValueError, match="second_moment"):
        scale_by_fwd_adam(second_moment="row")  # pyright: ignore
    with pytest.raises(ValueError, match="b1"):
        scale_by_fwd_adam(b1=1.0)
