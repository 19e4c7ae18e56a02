"""`filter_value_and_fwd_grad` / `filter_fwd_grad`: exactness, statistics, contracts."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import pytest

import fwdeqx

from .helpers import (
    assert_unbiased,
    flat_estimates,
    tree_allclose,
    tree_dot,
    unbiasedness,
)


class _OddModule(eqx.Module):
    """Floats next to an integer array, a function, a Python float and a string."""

    linear: eqx.nn.Linear
    counts: jax.Array
    activation: object
    scale: float
    name: str

    def __call__(self, x):
        total = jnp.sum(self.counts).astype(x.dtype)
        return jnp.sum(self.activation(self.linear(x))) * total * self.scale


class _ConvModule(eqx.Module):
    conv: eqx.nn.Conv2d
    head: eqx.nn.Linear

    def __call__(self, x):
        return self.head(jax.nn.tanh(self.conv(x)).reshape(-1))


def _models_and_losses(key):
    k1, k2, k3, k4, k5 = jax.random.split(key, 5)
    mlp = eqx.nn.MLP(3, 2, 8, 2, key=k1)
    odd = _OddModule(eqx.nn.Linear(3, 4, key=k2), jnp.arange(3), jnp.tanh, 0.5, "odd")
    conv = _ConvModule(
        eqx.nn.Conv2d(1, 2, 3, padding=1, key=k3), eqx.nn.Linear(2 * 5 * 5, 1, key=k4)
    )
    w = jax.random.normal(k5, (3, 3))
    nested = {"a": (w, 2.0 * w[0]), "b": {"c": w[:, 1], "count": 3, "flag": True}}
    x = jnp.linspace(-1.0, 1.0, 3)
    image = jnp.linspace(-1.0, 1.0, 25).reshape(1, 5, 5)

    def nested_loss(tree):
        a, b = tree["a"]
        return jnp.sum(jnp.sin(a @ b) * tree["b"]["c"]) * tree["b"]["count"]

    return [
        ("mlp", mlp, lambda m: jnp.sum(m(x) ** 2)),
        ("odd", odd, lambda m: m(x)),
        ("conv", conv, lambda m: jnp.sum(m(image))),
        ("nested", nested, nested_loss),
    ]


@pytest.mark.parametrize("index", range(4))
@pytest.mark.parametrize(
    "tangents",
    [fwdeqx.Gaussian(), fwdeqx.Gaussian(generator="hash"), fwdeqx.Rademacher()],
    ids=["gauss", "gauss-hash", "rade"],
)
def test_forward_gradient_is_directional_derivative_times_tangent(index, tangents):
    """g = ⟨∇f, v⟩ v exactly (float64), with v drawn as every direction is, from
    `split(key, K)[k]`: for K = 1, `tangents(split(key, 1)[0], like)`."""
    with jax.enable_x64(True):
        name, x, loss = _models_and_losses(jax.random.key(0))[index]
        key = jax.random.key(1)
        like = eqx.filter(x, eqx.is_inexact_array)
        assert jtu.tree_leaves(like)[0].dtype == jnp.float64, name
        v = tangents(jax.random.split(key, 1)[0], like)
        true_grad = eqx.filter_grad(loss)(x)
        expected = jtu.tree_map(lambda t: tree_dot(true_grad, v) * t, v)

        value, grad = fwdeqx.filter_value_and_fwd_grad(loss, tangents=tangents)(
            x, key=key
        )
        assert np.allclose(value, loss(x), rtol=1e-12)
        assert tree_allclose(grad, expected, rtol=1e-9, atol=1e-12), name
        # Non-differentiated leaves are None, exactly as eqx.filter_grad.
        assert jtu.tree_structure(grad) == jtu.tree_structure(true_grad)


def test_has_aux_returns_aux_untouched():
    def loss(w, x):
        prediction = w * x
        return jnp.sum(prediction**2), {"prediction": prediction, "step": 3}

    w, x, key = jnp.array([1.0, 2.0]), jnp.array([3.0, -1.0]), jax.random.key(0)
    (value, aux), grad = fwdeqx.filter_value_and_fwd_grad(loss, has_aux=True)(
        w, x, key=key
    )
    assert np.allclose(value, 9.0 + 4.0)
    assert np.allclose(aux["prediction"], w * x) and aux["step"] == 3
    grad_only, aux_only = fwdeqx.filter_fwd_grad(loss, has_aux=True)(w, x, key=key)
    assert tree_allclose(grad_only, grad) and aux_only["step"] == 3
    v = fwdeqx.Gaussian()(jax.random.split(key, 1)[0], w)
    assert np.allclose(grad, jnp.vdot(2 * w * x**2, v) * v, rtol=1e-5)


def _quadratic(n, key):
    a_key, b_key, x_key = jax.random.split(key, 3)
    a = jax.random.normal(a_key, (n, n)) / jnp.sqrt(n)
    b = jax.random.normal(b_key, (n,))
    x = jax.random.normal(x_key, (n,))
    loss = lambda x: 0.5 * jnp.sum((a @ x - b) ** 2) + jnp.sum(jnp.sin(x))
    return loss, x, jax.grad(loss)(x)


def _sample_grads(loss, x, key, num_samples, **kwargs):
    fwd_grad = fwdeqx.filter_fwd_grad(loss, **kwargs)
    keys = jax.random.split(key, num_samples)
    return jax.jit(jax.vmap(lambda k: fwd_grad(x, key=k)))(keys)


@pytest.mark.parametrize(
    "tangents",
    [fwdeqx.Gaussian(), fwdeqx.Gaussian(generator="hash"), fwdeqx.Rademacher()],
    ids=["gauss", "gauss-hash", "rade"],
)
def test_mean_of_forward_gradients_is_unbiased(tangents, getkey):
    """`assert_unbiased` on a 10-parameter function; a tangent distribution with
    Cov = 4 I (`Scaled(·, 2)`) must fail the same check, which shows it can fail."""
    loss, x, true_grad = _quadratic(10, getkey())
    assert_unbiased(fwdeqx.ForwardGradient(tangents), loss, x, key=getkey())
    scaled = fwdeqx.ForwardGradient(fwdeqx.Scaled(tangents, 2.0))
    samples = flat_estimates(scaled, loss, x, key=getkey(), num=3000)
    assert not unbiasedness(samples, np.asarray(true_grad))[0]


@pytest.mark.parametrize(
    ("tangents", "excess"),
    [(fwdeqx.Gaussian(), 1), (fwdeqx.Rademacher(), -1)],
    ids=["gauss", "rade"],
)
@pytest.mark.parametrize("num_tangents", [1, 4, 16])
def test_averaging_k_tangents_divides_variance_by_k(
    tangents, excess, num_tangents, getkey
):
    """E‖ḡ_K − ∇f‖² = (n ± 1)‖∇f‖² / K (Gaussian +, Rademacher −), estimated from
    20,000 draws. The estimate's relative standard error is below 2.5% here, so the
    15% tolerance is > 6 standard errors: false-failure probability < 1e-8."""
    n, num_samples = 10, 20_000
    loss, x, true_grad = _quadratic(n, getkey())
    grads = _sample_grads(
        loss, x, getkey(), num_samples, tangents=tangents, num_tangents=num_tangents
    )
    measured = jnp.mean(jnp.sum((grads - true_grad[None, :]) ** 2, axis=1))
    theory = (n + excess) * jnp.sum(true_grad**2) / num_tangents
    assert abs(measured / theory - 1) < 0.15


def test_same_key_same_gradient_different_key_different(getkey):
    model = eqx.nn.MLP(4, 1, 8, 1, key=getkey())
    x = jnp.ones(4)
    loss = lambda m: jnp.sum(m(x))
    fwd = fwdeqx.filter_value_and_fwd_grad(loss, num_tangents=3)
    key = getkey()
    _, grad_a = fwd(model, key=key)
    _, grad_b = fwd(model, key=key)
    _, grad_c = fwd(model, key=getkey())
    assert tree_allclose(grad_a, grad_b, rtol=0, atol=0)
    assert not tree_allclose(grad_a, grad_c)


def test_decorator_forms_jit_and_method(getkey):
    key = getkey()
    w = jnp.array([1.0, -2.0])

    @fwdeqx.filter_value_and_fwd_grad
    def bare(w):
        return jnp.sum(w**2)

    @fwdeqx.filter_value_and_fwd_grad(tangents=fwdeqx.Rademacher(), num_tangents=2)
    def with_args(w):
        return jnp.sum(w**2)

    class Model(eqx.Module):
        w: jax.Array

        @fwdeqx.filter_value_and_fwd_grad
        def loss(self, scale):
            return scale * jnp.sum(self.w**2)

    assert np.allclose(bare(w, key=key)[0], 5.0)
    assert np.allclose(with_args(w, key=key)[0], 5.0)
    value, grad = eqx.filter_jit(bare)(w, key=key)
    assert np.allclose(value, 5.0) and tree_allclose(grad, bare(w, key=key)[1])
    value, grad = Model(w).loss(2.0, key=key)
    assert np.allclose(value, 10.0) and isinstance(grad, Model)
    assert bare.__wrapped__.__name__ == "bare"


def test_gradient_drops_into_apply_updates_and_optax(getkey):
    import optax

    model = eqx.nn.MLP(2, 1, 4, 1, key=getkey())
    loss = lambda m: jnp.sum(m(jnp.ones(2)) ** 2)
    grad = fwdeqx.filter_fwd_grad(loss)(model, key=getkey())
    optimizer = optax.adam(1e-2)
    state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    with jax.numpy_dtype_promotion("standard"):  # optax mixes int counts and floats
        updates, _ = optimizer.update(grad, state)
    updated = eqx.apply_updates(model, updates)
    assert updated.activation is model.activation


def _loss(w):
    return jnp.sum(w**2)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda f, w: f(w), TypeError, "key"),
        (lambda f, w: f(w, key=0), TypeError, "PRNG key"),
        (
            lambda f, w: f(w, key=jax.random.split(jax.random.key(0))),
            TypeError,
            "single",
        ),
        (lambda f, w: f(key=jax.random.key(0), w=w), TypeError, "by position"),
        (lambda f, w: f(key=jax.random.key(0)), TypeError, "positional"),
    ],
    ids=["missing-key", "int-key", "many-keys", "keyword-first-arg", "no-args"],
)
def test_bad_calls_raise_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call(fwdeqx.filter_value_and_fwd_grad(_loss), jnp.ones(2))


@pytest.mark.parametrize(
    ("loss", "kwargs", "error", "match"),
    [
        (lambda w: w**2, {}, ValueError, "scalar"),
        (lambda w: jnp.sum(w**2).astype(jnp.int32), {}, TypeError, "floating"),
        (lambda w: jnp.sum(w**2), {"has_aux": True}, TypeError, "2-tuple"),
    ],
    ids=["vector-output", "int-output", "aux-not-tuple"],
)
def test_bad_outputs_raise_clear_errors(loss, kwargs, error, match):
    with pytest.raises(error, match=match):
        fwdeqx.filter_value_and_fwd_grad(loss, **kwargs)(
            jnp.ones(2), key=jax.random.key(0)
        )


def test_bad_configuration_raises():
    with pytest.raises(ValueError, match="at least 1"):
        fwdeqx.filter_value_and_fwd_grad(_loss, num_tangents=0)
    with pytest.raises(TypeError, match="int"):
        fwdeqx.filter_value_and_fwd_grad(_loss, num_tangents=2.0)  # pyright: ignore
    with pytest.raises(TypeError, match="tangents"):
        fwdeqx.filter_value_and_fwd_grad(_loss, tangents="gaussian")  # pyright: ignore


def _bitwise_equal(x, y) -> bool:
    x_leaves, y_leaves = jtu.tree_leaves(x), jtu.tree_leaves(y)
    return jtu.tree_structure(x) == jtu.tree_structure(y) and all(
        np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(x_leaves, y_leaves, strict=True)
    )


@pytest.mark.parametrize("num_tangents", [1, 4])
@pytest.mark.parametrize(
    "combine",
    [None, fwdeqx.Mean(), fwdeqx.Projection()],
    ids=["default", "mean", "proj"],
)
def test_transformation_is_forward_gradient_estimator(num_tangents, combine, getkey):
    """`filter_value_and_fwd_grad(...)` is bit-for-bit
    `ForwardGradient(tangents, num_tangents, combine)(fun, x, ..., key=key)`."""
    model = eqx.nn.MLP(3, 2, 8, 2, key=getkey())
    x, key = jnp.linspace(-1.0, 1.0, 3), getkey()

    def loss(model, x, *, scale):
        out = model(x)
        return scale * jnp.sum(out**2), out

    options = {} if combine is None else {"combine": combine}
    transformed = fwdeqx.filter_value_and_fwd_grad(
        loss,
        has_aux=True,
        tangents=fwdeqx.Rademacher(),
        num_tangents=num_tangents,
        **options,
    )
    estimator = fwdeqx.ForwardGradient(fwdeqx.Rademacher(), num_tangents, **options)
    got = transformed(model, x, scale=2.0, key=key)
    want = estimator(loss, model, x, scale=2.0, key=key, has_aux=True)
    assert _bitwise_equal(got, want)
    grad_only = fwdeqx.filter_fwd_grad(
        loss,
        has_aux=True,
        tangents=fwdeqx.Rademacher(),
        num_tangents=num_tangents,
        **options,
    )(model, x, scale=2.0, key=key)
    assert _bitwise_equal(grad_only, (want[1], want[0][1]))


_ESTIMATORS = [
    fwdeqx.ForwardGradient(),
    fwdeqx.ForwardGradient(num_tangents=2, combine=fwdeqx.Projection()),
    fwdeqx.SPSA(num_directions=2),
    fwdeqx.Backprop(),
]


@pytest.mark.parametrize(
    ("x", "loss"),
    [
        (jnp.arange(3), lambda x: jnp.sum(x).astype(jnp.float32)),
        ({"a": jnp.arange(3), "b": 2}, lambda x: jnp.sum(x["a"]).astype(jnp.float32)),
        (jnp.ones(3), lambda x: jnp.float32(2.0)),
        ({"w": jnp.ones((2, 2)), "n": 3}, lambda x: jnp.sum(jnp.ones(2))),
        (jnp.ones(3), lambda x: 2.0),
        (jnp.arange(3), lambda x: 2.0),
    ],
    ids=[
        "int-leaves",
        "no-float-leaves",
        "no-dependence",
        "no-dependence-tree",
        "python-float",
        "python-float-int-leaves",
    ],
)
@pytest.mark.parametrize("estimator", _ESTIMATORS, ids=["fg", "fg-proj", "spsa", "bp"])
def test_degenerate_losses_match_filter_value_and_grad(x, loss, estimator):
    """As `eqx.filter_value_and_grad` (issue 15): `None` gradients where the first
    argument has no floating leaves, zeros where the loss does not depend on them,
    and a Python-float loss works."""
    want_value, want_grad = eqx.filter_value_and_grad(loss)(x)
    value, grad = estimator(loss, x, key=jax.random.key(0))
    assert np.allclose(value, want_value)
    assert jtu.tree_structure(grad) == jtu.tree_structure(want_grad)
    assert tree_allclose(grad, want_grad, rtol=0, atol=0)
    if not isinstance(estimator, fwdeqx.SPSA):
        value, grad = fwdeqx.filter_value_and_fwd_grad(loss)(x, key=jax.random.key(0))
        assert np.allclose(value, want_value)
        assert tree_allclose(grad, want_grad, rtol=0, atol=0)
