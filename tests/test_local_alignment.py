"""`fwdeqx.local.alignment`: per-site cosine similarities with the exact gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fwdeqx
import fwdeqx.local as fl


def _batch(key, n=16, features=12):
    kx, ky = jax.random.split(key)
    return jax.random.normal(kx, (n, features)), jax.random.randint(ky, (n,), 0, 10)


def test_an_exact_estimator_is_aligned_with_its_objective(getkey):
    model = fl.mlp(12, 8, 3, 10, key=getkey())
    x, y = _batch(getkey())
    layers = fl.alignment(fwdeqx.Backprop(), fl.LocalLoss(), model, x, y, key=getkey())
    assert [layer.block for layer in layers] == [0, 1, 2]
    assert [layer.site for layer in layers] == [0, 1, 2]
    np.testing.assert_allclose([float(a.objective) for a in layers], 1.0, rtol=1e-5)
    # The last block's local loss is the network's loss; earlier blocks train for
    # their own heads.
    assert float(layers[-1].end_to_end) == pytest.approx(1.0, rel=1e-5)
    assert float(layers[0].end_to_end) < 0.999


def test_one_loss_copy_per_unit_makes_rademacher_lg_fg_a_exact(getkey):
    """With one perturbed layer per block and one loss copy per unit (groups equal
    to the width), (d·u)u = (∂L/∂z ⊙ u) ⊙ u = ∂L/∂z for Rademacher u: LG-FG-A returns
    LG-BP's gradient exactly. Such a configuration says nothing about the
    estimator's variance (docs/local-losses.md)."""
    model = fl.mlp(12, 8, 2, 10, groups=8, key=getkey())
    x, y = _batch(getkey())
    estimator = fl.ActivityPerturbation(fwdeqx.Rademacher())
    layers = fl.alignment(estimator, fl.LocalLoss(), model, x, y, key=getkey())
    np.testing.assert_allclose([float(a.objective) for a in layers], 1.0, rtol=1e-5)
    # Gaussian tangents, or fewer copies, are not exact.
    for other in (
        fl.alignment(
            fl.ActivityPerturbation(), fl.LocalLoss(), model, x, y, key=getkey()
        ),
        fl.alignment(
            estimator,
            fl.LocalLoss(),
            fl.mlp(12, 8, 2, 10, groups=2, key=getkey()),
            x,
            y,
            key=getkey(),
        ),
    ):
        assert all(float(a.objective) < 0.999 for a in other)


def test_bad_arguments_are_named(getkey):
    model = fl.mlp(12, 8, 1, 10, key=getkey())
    x, y = _batch(getkey())
    with pytest.raises(TypeError, match="local objective"):
        fl.alignment(
            fwdeqx.Backprop(), lambda m, x, y: jnp.sum(x), model, x, y, key=getkey()
        )
    with pytest.raises(TypeError, match="key"):
        fl.alignment(fwdeqx.Backprop(), fl.LocalLoss(), model, x, y, key=None)
    with pytest.raises(ValueError, match="num_keys"):
        fl.alignment(
            fwdeqx.Backprop(), fl.LocalLoss(), model, x, y, key=getkey(), num_keys=0
        )
