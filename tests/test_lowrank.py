"""LowRank tangents: the factored jvp is exactly the dense directional derivative,
on any module that applies its `eqx.nn.Linear`s through `__call__`."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import pytest

import fwdeqx
from fwdeqx._directional import value_and_derivatives
from fwdeqx._lowrank import LowRankMatrix
from fwdeqx._structured import densify
from fwdeqx.models import CNN

from .helpers import assert_unbiased, tree_dot


def _float64(tree):
    return jtu.tree_map(
        lambda x: x.astype(jnp.float64) if eqx.is_inexact_array(x) else x, tree
    )


def _check_exact(model, x, key, rank=2):
    """⟨∇f, densify(v)⟩ from reverse mode equals the factored forward derivative."""

    def loss(m):
        return jnp.sum(jnp.tanh(jax.vmap(m)(x)))

    tangent = fwdeqx.LowRank(rank=rank)(key, eqx.filter(model, eqx.is_inexact_array))
    assert any(
        isinstance(leaf, LowRankMatrix)
        for leaf in jtu.tree_leaves(
            tangent, is_leaf=lambda n: isinstance(n, LowRankMatrix)
        )
    )
    stack = jtu.tree_map(lambda leaf: leaf[None], tangent)  # K = 1
    (value, _), derivatives = eqx.filter_jit(value_and_derivatives)(
        lambda m: (loss(m), None), model, stack
    )
    derivative = derivatives[0]
    exact = tree_dot(eqx.filter_jit(eqx.filter_grad(loss))(model), densify(tangent))
    assert derivative.dtype == jnp.float64
    np.testing.assert_allclose(value, loss(model), rtol=1e-12)
    np.testing.assert_allclose(derivative, exact, rtol=1e-10, atol=1e-12)


def test_exact_on_mlp(getkey):
    with jax.enable_x64(True):
        model = eqx.nn.MLP(5, 3, 8, 2, key=getkey(), dtype=jnp.float64)
        x = jax.random.normal(getkey(), (4, 5), jnp.float64)
        _check_exact(model, x, getkey())


def test_exact_on_cnn_head(getkey):
    """Convolutions get the dense fallback, the head Linear the factored tangent."""
    with jax.enable_x64(True):
        model = _float64(CNN(key=getkey(), channels=2, image_size=4))
        x = jax.random.normal(getkey(), (3, 1, 4, 4), jnp.float64)
        _check_exact(model, x, getkey(), rank=1)


@pytest.mark.parametrize("sizes", [("scalar", 3), (3, "scalar"), ("scalar", "scalar")])
def test_exact_on_scalar_linear(sizes, getkey):
    in_size, out_size = sizes
    with jax.enable_x64(True):
        model = _float64(eqx.nn.Linear(in_size, out_size, key=getkey()))
        shape = (4,) if in_size == "scalar" else (4, in_size)
        x = jax.random.normal(getkey(), shape, jnp.float64)
        _check_exact(model, x, getkey(), rank=1)


def test_stacked_tangents_match_one_by_one(getkey):
    """K stacked LowRank tangents: one batched pass gives each tangent's derivative."""
    with jax.enable_x64(True):
        model = eqx.nn.MLP(4, 2, 6, 2, key=getkey(), dtype=jnp.float64)
        x = jax.random.normal(getkey(), (3, 4), jnp.float64)
        like = eqx.filter(model, eqx.is_inexact_array)

        def fn(m):
            return jnp.sum(jax.vmap(m)(x) ** 2), None

        keys = jax.random.split(getkey(), 5)
        stack = jax.vmap(fwdeqx.LowRank(rank=2), in_axes=(0, None))(keys, like)
        (value, _), derivatives = value_and_derivatives(fn, model, stack)
        assert derivatives.shape == (5,)
        grad = eqx.filter_grad(lambda m: fn(m)[0])(model)
        one_by_one = jax.vmap(lambda v: tree_dot(grad, v))(densify(stack))
        np.testing.assert_allclose(derivatives, one_by_one, rtol=1e-10)
        np.testing.assert_allclose(value, fn(model)[0], rtol=1e-12)


def test_unbiased_forward_gradient(getkey):
    """LowRank forward gradients are unbiased (`assert_unbiased`)."""
    model = eqx.nn.MLP(3, 1, 4, 1, key=getkey())  # 3x4 + 4 + 4x1 + 1 = 21 params
    x = jax.random.normal(getkey(), (8, 3))

    def loss(m):
        return jnp.mean(jax.vmap(m)(x) ** 2)

    est = fwdeqx.ForwardGradient(fwdeqx.LowRank())
    assert_unbiased(est, loss, model, key=getkey(), num=5000)


class _ReadsWeight(eqx.Module):
    linear: eqx.nn.Linear

    def __call__(self, x):
        return self.linear.weight @ x


def test_clear_error_when_weight_is_read(getkey):
    model = _ReadsWeight(eqx.nn.Linear(3, 2, key=getkey()))
    loss = lambda m: jnp.sum(m(jnp.ones(3)))
    with pytest.raises(AttributeError, match=r"reads `\.weight` directly"):
        fwdeqx.filter_fwd_grad(loss, tangents=fwdeqx.LowRank())(model, key=getkey())


def test_rank_must_be_positive():
    with pytest.raises(ValueError, match="rank"):
        fwdeqx.LowRank(rank=0)


def test_generic_modules_never_import_lowrank():
    """Structured tangents are reached through `AbstractStructuredTangent` only:
    `_lowrank` is imported by `__init__.py` alone."""
    import pathlib
    import re

    source = pathlib.Path(fwdeqx.__file__).parent
    importers = sorted(
        str(path.relative_to(source))
        for path in source.rglob("*.py")
        if path.name != "_lowrank.py"
        and re.search(r"^\s*(from|import)\s+\S*_lowrank\b", path.read_text(), re.M)
    )
    assert importers == ["__init__.py"]


class _Unconsumed(fwdeqx.AbstractStructuredTangent):
    """A structured tangent whose hook consumes nothing."""

    value: jax.Array

    def weighted_sum(self, weights):
        return jnp.tensordot(weights, self.value, axes=1)

    def gram(self):
        flat = self.value.reshape(self.value.shape[0], -1)
        return flat @ flat.T

    def scaled(self, scale):
        return _Unconsumed(scale * self.value)

    def to_dense(self):
        return self.value

    @classmethod
    def prepare_jvp(cls, x, tangent):
        return x, tangent


def test_structured_interface(getkey):
    """The combiners reach a structured leaf through its `gram` / `weighted_sum`;
    a tangent left unconsumed by its `prepare_jvp` hook is a clear error."""
    stack = {"w": _Unconsumed(jax.random.normal(getkey(), (3, 4)))}
    dense = {"w": stack["w"].value}
    derivatives = jnp.array([1.0, -2.0, 0.5])
    for combine in (fwdeqx.Mean(), fwdeqx.Projection()):
        np.testing.assert_allclose(
            combine(derivatives, stack, 4)["w"],
            combine(derivatives, dense, 4)["w"],
            rtol=1e-5,
        )
    with pytest.raises(TypeError, match="nothing in the model consumes it"):
        value_and_derivatives(
            lambda w: (jnp.sum(w["w"] ** 2), None), {"w": jnp.ones(4)}, stack
        )
