"""fwdeqx.local's containers, objectives, constructors and error messages."""

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
import pytest

import fwdeqx
import fwdeqx.local as fl


def test_constructors_and_objectives(getkey):
    """Each ready-made network maps one example to logits; LocalLoss sums one loss
    per block and equals GlobalLoss for a single block."""
    cases = [
        (fl.mlp(12, 8, 2, 3, key=getkey(), groups=2), (5, 12)),
        (fl.cnn(1, (4, 8), 3, key=getkey(), image_size=8, groups=4), (5, 8, 8)),
        (fl.local_mixer(8, 4, 1, 8, 2, 3, key=getkey(), groups=2), (5, 1, 8, 8)),
    ]
    y = jnp.arange(5) % 3
    for model, shape in cases:
        x = jax.random.normal(getkey(), shape)
        logits, total, end_to_end = eqx.filter_eval_shape(
            lambda m, x: (
                jax.vmap(m)(x),
                fl.LocalLoss()(m, x, y),
                fl.GlobalLoss()(m, x, y),
            ),
            model,
            x,
        )
        assert logits.shape == (5, 3) and total.shape == end_to_end.shape == ()
    single = fl.mlp(12, 8, 1, 3, key=getkey())
    x = jax.random.normal(getkey(), (5, 12))
    assert jnp.allclose(fl.LocalLoss()(single, x, y), fl.GlobalLoss()(single, x, (y)))
    assert jnp.allclose(fl.GlobalLoss()(single, (x, y)), fl.GlobalLoss()(single, x, y))


def test_head_losses_are_the_terms_of_the_objective(getkey):
    """`head_losses` gives one batch-mean loss per counted head, summing to the
    objective; GlobalLoss's single term is the end-to-end cross-entropy."""
    model = fl.mlp(12, 8, 3, 3, key=getkey(), groups=2)
    x = jax.random.normal(getkey(), (5, 12))
    y = jnp.arange(5) % 3
    local = fl.LocalLoss().head_losses(model, x, y)
    assert local.shape == (3,)
    assert jnp.allclose(jnp.sum(local), fl.LocalLoss()(model, x, y))
    (end_to_end,) = fl.GlobalLoss().head_losses(model, (x, y))
    logits = jax.vmap(model)(x)
    expected = jnp.mean(jax.nn.logsumexp(logits, axis=1) - logits[jnp.arange(5), y])
    assert jnp.allclose(end_to_end, expected)
    assert jnp.allclose(local[-1], end_to_end)  # the last head is the output


def test_make_step_trains_with_lg_fg_a(getkey):
    """The estimators plug into fwdeqx.make_step (loss(model, batch)) unchanged."""
    model = fl.mlp(6, 16, 2, 3, key=getkey())
    x = jax.random.normal(getkey(), (32, 6))
    y = (x[:, 0] > 0).astype(jnp.int32) + (x[:, 1] > 0).astype(jnp.int32)
    step = fwdeqx.make_step(
        fl.LocalLoss(), optax.sgd(0.2), fl.ActivityPerturbation(num_tangents=4)
    )
    state = step.init(model)
    first = None
    for i in range(60):
        model, state, value = step(model, state, (x, y), jax.random.key(i))
        first = value if first is None else first
    assert value < 0.8 * first


def test_grads_cover_every_leaf(getkey):
    mixer = fl.local_mixer(8, 4, 1, 8, 2, 3, key=getkey(), groups=2)
    mlp = fl.mlp(8, 8, 2, 3, key=getkey())
    y = jnp.arange(4) % 3
    for model, x, objective, estimator in (
        (
            mixer,
            jax.random.normal(getkey(), (4, 8, 8)),
            fl.LocalLoss(),
            fl.ActivityPerturbation(),
        ),
        (
            mlp,
            jax.random.normal(getkey(), (4, 8)),
            fl.GlobalLoss(),
            fl.LocalWeightPerturbation(),
        ),
    ):
        value, grads = eqx.filter_jit(estimator)(objective, model, x, y, key=getkey())
        params = eqx.filter(model, eqx.is_inexact_array)
        assert jax.tree.structure(grads) == jax.tree.structure(params)
        assert jnp.allclose(value, objective(model, x, y), rtol=1e-5)
        for g, p in zip(jax.tree.leaves(grads), jax.tree.leaves(params), strict=True):
            assert g.shape == p.shape and g.dtype == p.dtype
        # every block's layers get a non-zero estimate
        for block in grads.blocks:
            assert any(jnp.any(g != 0) for g in jax.tree.leaves(block.layers))


def test_errors(getkey):
    x, y = jnp.zeros((4, 6)), jnp.zeros((4,), jnp.int32)
    model = fl.mlp(6, 4, 2, 3, key=getkey())
    est = fl.ActivityPerturbation()
    with pytest.raises(TypeError, match="needs per-example losses"):
        est(lambda m, x, y: jnp.sum(jax.vmap(m)(x)), model, x, y, key=getkey())
    with pytest.raises(TypeError, match="LocalNetwork"):
        est(fl.LocalLoss(), eqx.nn.Linear(6, 3, key=getkey()), x, y, key=getkey())
    with pytest.raises(ValueError, match="same leading size"):
        est(fl.LocalLoss(), model, x, y[:3], key=getkey())
    plain = fl.LocalNetwork(
        [
            fl.Block(
                [eqx.nn.Linear(6, 4, key=getkey())], fl.LinearHead(4, 3, key=getkey())
            )
        ]
    )
    with pytest.raises(ValueError, match="no perturbation points"):
        est(fl.LocalLoss(), plain, x, y, key=getkey())
    # ...but weight perturbation trains it
    eqx.filter_eval_shape(
        fl.LocalWeightPerturbation(), fl.LocalLoss(), plain, x, y, key=getkey()
    )
    with pytest.raises(ValueError, match="positive divisor"):
        fl.LinearHead(6, 3, groups=4, key=getkey())
    with pytest.raises(ValueError, match="may mix channels"):
        fl.Block(
            [
                fl.Perturbed(eqx.nn.Linear(6, 8, key=getkey()), grouped=True),
                jax.nn.relu,
                eqx.nn.Linear(8, 4, key=getkey()),
            ],
            fl.LinearHead(4, 3, groups=2, key=getkey()),
        )
    headless = fl.LocalNetwork(
        [
            fl.Block([fl.Perturbed(eqx.nn.Linear(6, 4, key=getkey()))]),
            fl.Block([jax.nn.relu], fl.LinearHead(4, 3, key=getkey())),
        ]
    )
    with pytest.raises(ValueError, match="needs a head on blocks"):
        est(fl.LocalLoss(), headless, x, y, key=getkey())
    eqx.filter_eval_shape(est, fl.GlobalLoss(), headless, x, y, key=getkey())
    nested = fl.LocalNetwork(
        [
            fl.Block(
                [eqx.nn.Sequential([fl.Perturbed(eqx.nn.Linear(6, 4, key=getkey()))])],
                fl.LinearHead(4, 3, key=getkey()),
            )
        ]
    )
    with pytest.raises(ValueError, match="nested inside another module"):
        est(fl.LocalLoss(), nested, x, y, key=getkey())
    with pytest.raises(TypeError):  # "wraps an affine layer" (or the type checker)
        fl.Perturbed(eqx.nn.LayerNorm(4))  # pyright: ignore
    with pytest.raises(ValueError, match="last Block"):
        fl.LocalNetwork([fl.Block([jax.nn.relu])])
