"""Statistical tests of fwdeqx.local's estimators, in float64, through
`tests.helpers.assert_unbiased` (its docstring gives the false-failure probability)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import pytest

import fwdeqx
import fwdeqx.local as fl

from .helpers import assert_unbiased, exact_gradient, flat_estimates, unbiasedness


def two_block_net(key):
    """Grouped heads, a LayerNorm (weight-perturbed) and ReLU masking."""
    f64 = jnp.float64
    k = jax.random.split(key, 4)
    first = fl.Block(
        [
            fl.Perturbed(eqx.nn.Linear(5, 8, key=k[0], dtype=f64), grouped=True),
            jax.nn.relu,
        ],
        fl.LinearHead(8, 3, groups=2, key=k[1], dtype=f64),
    )
    second = fl.Block(
        [
            eqx.nn.LayerNorm(8, dtype=f64),
            fl.Perturbed(eqx.nn.Linear(8, 6, key=k[2], dtype=f64), grouped=True),
            jax.nn.relu,
        ],
        fl.LinearHead(6, 3, groups=3, key=k[3], dtype=f64),
    )
    return fl.LocalNetwork([first, second])


def batch(key, shape, n=3, classes=3):
    kx, ky = jax.random.split(key)
    x = jax.random.normal(kx, (n, *shape), jnp.float64)
    return x, jax.random.randint(ky, (n,), 0, classes)


def mixer(key=jax.random.key(1)):
    model = fl.local_mixer(4, 2, 1, 4, 1, 3, key=key, groups=2, dtype=jnp.float64)
    return model, *batch(jax.random.key(2), (4, 4))


@pytest.mark.parametrize(
    "objective, estimator",
    [
        (fl.GlobalLoss(), fl.ActivityPerturbation()),
        (fl.LocalLoss(), fl.ActivityPerturbation(num_tangents=2)),
        (fl.LocalLoss(), fl.LocalWeightPerturbation(fwdeqx.Rademacher())),
    ],
    ids=["fg-a", "lg-fg-a", "lg-fg-w"],
)
def test_mixer_unbiased(objective, estimator):
    with jax.enable_x64(True):
        model, x, y = mixer()
        assert_unbiased(estimator, objective, model, x, y, key=jax.random.key(3))


def test_weight_projection_unbiased():
    """LG-FG-W with the rescaled projection, combined per block (the blocks of
    `LocalLoss` reach their own loss only)."""
    with jax.enable_x64(True):
        model = fl.mlp(4, 4, 2, 3, key=jax.random.key(4), dtype=jnp.float64)
        x, y = batch(jax.random.key(5), (4,))
        estimator = fl.LocalWeightPerturbation(
            num_tangents=2, combine=fwdeqx.Projection(rescale=True)
        )
        assert_unbiased(
            estimator, fl.LocalLoss(), model, x, y, key=jax.random.key(6), num=600
        )


@pytest.mark.parametrize("net", ["layernorm", "cnn"])
def test_groups_masking_unbiased(net):
    """LG-FG-A with Rademacher tangents on a net with grouped heads (G = 2, 3), ReLU
    masking and a LayerNorm (weight-perturbed in the same pass); and on a CNN
    (Conv2d points, channel axis 0, max pooling, G = 2)."""
    with jax.enable_x64(True):
        if net == "cnn":
            model = fl.cnn(
                1,
                (2, 4),
                3,
                key=jax.random.key(4),
                image_size=4,
                groups=2,
                dtype=jnp.float64,
            )
            x, y = batch(jax.random.key(5), (4, 4))
        else:
            model = two_block_net(jax.random.key(4))
            x, y = batch(jax.random.key(5), (5,))
        estimator = fl.ActivityPerturbation(fwdeqx.Rademacher())
        assert_unbiased(estimator, fl.LocalLoss(), model, x, y, key=jax.random.key(6))


def test_negative_controls_fail():
    """The same check rejects a scaled tangent (E[g] = 1.5² ∇f) and a point wrongly
    declared `grouped` (its channels reach every head copy through a mixing layer;
    built with `eqx.tree_at`, which skips the construction check)."""
    with jax.enable_x64(True):
        model, x, y = mixer()
        objective = fl.LocalLoss()
        truth = exact_gradient(objective, model, x, y)
        scaled = fl.ActivityPerturbation(fwdeqx.Scaled(fwdeqx.Rademacher(), 1.5))
        samples = flat_estimates(
            scaled, objective, model, x, y, key=jax.random.key(7), num=3000
        )
        assert not unbiasedness(samples, truth)[0]

        hidden = lambda m: m.blocks[0].layers[4].layers[4]
        wrong = fl.Perturbed(hidden(model).layer, tokenwise=True, grouped=True)
        misrouted = eqx.tree_at(hidden, model, replace=wrong)
        estimator = fl.ActivityPerturbation()
        samples = flat_estimates(
            estimator, objective, misrouted, x, y, key=jax.random.key(8), num=12000
        )
        assert not unbiasedness(samples, truth)[0]


def test_activity_variance_shrinks_by_fan_in():
    """Ren et al.'s Table 1 on one wide layer z = Wx + b (p = 64 inputs, q = 16
    units, one example, exact head): summed over W's coordinates, weight
    perturbation's variance is (pq(1 + 1/‖x‖²) + 1)‖∇_W‖² and activity
    perturbation's (q + 1)‖∇_W‖², so activity perturbation is ~p times less
    noisy. Each measured variance must be within 15% of its prediction."""
    p, q = 64, 16
    with jax.enable_x64(True):
        k = jax.random.split(jax.random.key(9), 3)
        layer = eqx.nn.Linear(p, q, key=k[0], dtype=jnp.float64)
        head = fl.LinearHead(q, 4, key=k[1], dtype=jnp.float64)
        model = fl.LocalNetwork([fl.Block([fl.Perturbed(layer)], head)])
        x, y = batch(k[2], (p,), n=1, classes=4)
        objective = fl.LocalLoss()
        grad_w = np.asarray(
            fwdeqx.Backprop()(objective, model, x, y, key=k[0])[1]
            .blocks[0]
            .layers[0]
            .layer.weight
        )
        norm2 = float(np.sum(grad_w**2))
        x2 = float(np.sum(np.asarray(x) ** 2))

        def weight_variance(estimator, key):
            one = lambda key_: estimator(objective, model, x, y, key=key_)[1]
            grads = eqx.filter_jit(eqx.filter_vmap(one))(jax.random.split(key, 4000))
            w = np.asarray(grads.blocks[0].layers[0].layer.weight)
            return float(np.sum(w.var(axis=0, ddof=1)))

        activity = weight_variance(fl.ActivityPerturbation(), jax.random.key(10))
        weights = weight_variance(fl.LocalWeightPerturbation(), jax.random.key(11))
    assert activity == pytest.approx((q + 1) * norm2, rel=0.15)
    assert weights == pytest.approx((p * q * (1 + 1 / x2) + 1) * norm2, rel=0.15)
    assert weights / activity > p / 2


@pytest.mark.parametrize(
    "estimator, objectives",
    [
        (fl.ActivityPerturbation(), (fl.LocalLoss(), fl.GlobalLoss())),
        (fl.LocalWeightPerturbation(), (fl.LocalLoss(),)),
    ],
    ids=["activity", "weights"],
)
def test_no_gradient_crosses_a_block_boundary(estimator, objectives):
    """Under LocalLoss, changing a later block's parameters or its loss leaves an
    earlier block's estimate bit-identical for the same key; under GlobalLoss it
    does not (the control that shows this test can fail)."""
    model = two_block_net_f32(jax.random.key(12))
    x, y = jax.random.normal(jax.random.key(13), (4, 5)), jnp.arange(4) % 3
    key = jax.random.key(14)
    later = lambda m: (
        m.blocks[1].layers[1].layer.weight,
        m.blocks[1].head.linear.weight,
    )
    changed = eqx.tree_at(later, model, replace_fn=lambda w: 2 * w + 0.1)

    @eqx.filter_jit
    def first_block(objective, m):
        return estimator(objective, m, x, y, key=key)[1].blocks[0]

    for objective in objectives:
        same = isinstance(objective, fl.LocalLoss)
        before = first_block(objective, model)
        after = first_block(objective, changed)
        equal = all(
            np.array_equal(a, b)
            for a, b in zip(
                jtu.tree_leaves(before.layers),
                jtu.tree_leaves(after.layers),
                strict=True,
            )
        )
        assert equal is same, type(objective).__name__


def two_block_net_f32(key):
    k = jax.random.split(key, 4)
    return fl.LocalNetwork(
        [
            fl.Block(
                [fl.Perturbed(eqx.nn.Linear(5, 8, key=k[0])), jax.nn.relu],
                fl.LinearHead(8, 3, key=k[1]),
            ),
            fl.Block(
                [
                    eqx.nn.LayerNorm(8),
                    fl.Perturbed(eqx.nn.Linear(8, 6, key=k[2])),
                    jax.nn.relu,
                ],
                fl.LinearHead(6, 3, key=k[3]),
            ),
        ]
    )
