"""Per-location local losses: `fl.LocationHead` (one loss copy per location and
channel group) with `fl.LocationPerturbed` sites, for conv blocks (spatial
positions) and mixer blocks (tokens). Statistical checks in float64 through
`tests.helpers` (the false-failure probability is in `assert_unbiased`'s
docstring)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fwdeqx
import fwdeqx.local as fl

from .helpers import assert_unbiased, flat_estimates, unbiasedness


# Compile-bound (a few estimators on tiny networks): see conftest.fast_compile.
pytestmark = pytest.mark.usefixtures("fast_compile")


F64 = jnp.float64


def conv_net(key):
    """One conv block with two perturbed layers (so no estimate is exact): a plain
    `Perturbed` conv, ReLU, a location-paired conv, ReLU, 2×2 max pooling of the
    6×6 maps to 3×3 locations, 2 channel groups: 18 loss copies."""
    k = jax.random.split(key, 3)
    first = eqx.nn.Conv2d(1, 4, 3, padding="SAME", key=k[0], dtype=F64)
    second = eqx.nn.Conv2d(4, 4, 3, padding="SAME", key=k[1], dtype=F64)
    site = fl.LocationPerturbed(second, pool_stride=2)
    head = fl.LinearHead(4, 3, groups=2, key=k[2], dtype=F64)
    layers = [fl.Perturbed(first), jax.nn.relu, site, jax.nn.relu]
    return fl.LocalNetwork(
        [fl.Block([*layers, eqx.nn.MaxPool2d(2, 2)], fl.LocationHead(head, (3, 3)))]
    )


def mixer_net(key):
    """`fl.local_mixer` (4 tokens of width 4, 2 groups) with its grouped
    channel-mixing layer paired by token and group."""
    model = fl.local_mixer(4, 2, 1, 4, 1, 3, key=key, groups=2, dtype=F64)
    block = model.blocks[0]
    mixing = list(block.layers[4].layers)
    mixing[-1] = fl.LocationPerturbed(mixing[-1].layer, tokenwise=True)
    layers = [*block.layers[:4], fl.Residual(mixing), *block.layers[5:]]
    assert isinstance(block.head, fl.LinearHead)
    return fl.LocalNetwork([fl.Block(layers, fl.LocationHead(block.head, (4,)))])


def batch(key, shape, n=3):
    kx, ky = jax.random.split(key)
    return jax.random.normal(kx, (n, *shape), F64), jax.random.randint(ky, (n,), 0, 3)


def exact(objective, model, x, y):
    """`tests.helpers.exact_gradient`, compiled (eager backprop through convolutions
    is slow)."""
    grads = eqx.filter_jit(
        lambda m: fwdeqx.Backprop()(objective, m, x, y, key=jax.random.key(0))[1]
    )(model)
    return np.concatenate([np.asarray(g).reshape(-1) for g in jax.tree.leaves(grads)])


class Misrouted(fl.AbstractSite):
    """A wrong pairing: a location-paired conv whose units get the copy of the
    pooled location one step to the left (cyclically) instead of their own."""

    layer: eqx.nn.Conv2d

    def apply(self, layer, x):
        return layer(x)

    @property
    def channel_axis(self) -> int:
        return 0

    def check_downstream(self, layers) -> None:
        pass

    def pair(self, derivatives, shape, head):
        right = fl.LocationPerturbed(self.layer, pool_stride=2)
        return jnp.roll(right.pair(derivatives, shape, head), 2, axis=-1)


def test_conv_location_copies_unbiased_and_misrouting_biased():
    """LG-FG-A with location copies is unbiased for `LocalLoss`; pairing each
    location with another location's copy is detectably biased."""
    with jax.enable_x64(True):
        model = conv_net(jax.random.key(0))
        x, y = batch(jax.random.key(1), (1, 6, 6))
        objective, estimator = fl.LocalLoss(), fl.ActivityPerturbation()
        truth = exact(objective, model, x, y)
        assert_unbiased(
            estimator,
            objective,
            model,
            x,
            y,
            key=jax.random.key(2),
            num=2000,
            truth=truth,
        )
        site = lambda m: m.blocks[0].layers[2]
        wrong = eqx.tree_at(site, model, replace=Misrouted(site(model).layer))
        samples = flat_estimates(
            estimator, objective, wrong, x, y, key=jax.random.key(3), num=1000
        )
        assert not unbiasedness(samples, truth)[0]


class Shortsighted(fl.NeighbourhoodPerturbed):
    """A wrong pairing: a neighbourhood site that ignores the later convolution's
    reach (its checks skipped)."""

    def check_downstream(self, layers) -> None:
        pass


def test_neighbourhood_copies_unbiased_and_too_small_reach_biased():
    """The first conv paired with every group's copies within its reach (1, the
    second 3×3 conv's) is unbiased for `LocalLoss`; with reach 0 the copies its
    units reach through the second conv's neighbours are missed: biased."""
    with jax.enable_x64(True):
        model = conv_net(jax.random.key(7))
        site = lambda m: m.blocks[0].layers[0]
        first = site(model).layer
        right = fl.NeighbourhoodPerturbed(first, reach=1, pool_stride=2)
        model = eqx.tree_at(site, model, replace=right)
        fl.Block(model.blocks[0].layers, model.blocks[0].head)  # passes the checks
        x, y = batch(jax.random.key(8), (1, 6, 6))
        objective, estimator = fl.LocalLoss(), fl.ActivityPerturbation()
        truth = exact(objective, model, x, y)
        assert_unbiased(
            estimator, objective, model, x, y, key=jax.random.key(9), truth=truth
        )
        wrong = eqx.tree_at(
            site, model, replace=Shortsighted(first, reach=0, pool_stride=2)
        )
        samples = flat_estimates(
            estimator, objective, wrong, x, y, key=jax.random.key(10), num=1000
        )
        assert not unbiasedness(samples, truth)[0]


def test_grouped_neighbourhood_copies_unbiased_and_mixed_groups_biased():
    """The first conv paired with its own group's copies within its reach is
    unbiased for `LocalLoss` when the second conv keeps the 2 groups apart
    (`groups=2`); with a second conv that mixes the groups (checks skipped), a
    unit's tangent also reaches the other group's copies, which the pairing
    misses: biased."""
    with jax.enable_x64(True):
        k = jax.random.split(jax.random.key(11), 4)
        first = eqx.nn.Conv2d(1, 4, 3, padding="SAME", key=k[0], dtype=F64)

        def net(site, groups):
            second = eqx.nn.Conv2d(
                4, 4, 3, padding="SAME", groups=groups, key=k[1], dtype=F64
            )
            head = fl.LinearHead(4, 3, groups=2, key=k[2], dtype=F64)
            layers = [site, jax.nn.relu, fl.LocationPerturbed(second, pool_stride=2)]
            layers += [jax.nn.relu, eqx.nn.MaxPool2d(2, 2)]
            block = fl.Block(layers, fl.LocationHead(head, (3, 3)))
            return fl.LocalNetwork([block])

        right = fl.NeighbourhoodPerturbed(first, reach=1, pool_stride=2, groups=2)
        model = net(right, groups=2)
        x, y = batch(k[3], (1, 6, 6))
        objective, estimator = fl.LocalLoss(), fl.ActivityPerturbation()
        truth = exact(objective, model, x, y)
        assert_unbiased(
            estimator, objective, model, x, y, key=jax.random.key(12), truth=truth
        )
        wrong = net(Shortsighted(first, reach=1, pool_stride=2, groups=2), groups=1)
        truth = exact(objective, wrong, x, y)
        samples = flat_estimates(
            estimator, objective, wrong, x, y, key=jax.random.key(13), num=1000
        )
        assert not unbiasedness(samples, truth)[0]


def test_mixer_token_copies_unbiased():
    with jax.enable_x64(True):
        model = mixer_net(jax.random.key(4))
        x, y = batch(jax.random.key(5), (4, 4))
        estimator, objective = (
            fl.ActivityPerturbation(fwdeqx.Rademacher()),
            fl.LocalLoss(),
        )
        truth = exact(objective, model, x, y)
        assert_unbiased(
            estimator, objective, model, x, y, key=jax.random.key(6), truth=truth
        )


def test_copies_share_the_value_and_split_the_derivative():
    """Every copy has the loss's value; copy (l, g)'s derivative is the loss's
    derivative along the tangent of location l's group g alone, so the copies sum
    to the loss's derivative."""
    with jax.enable_x64(True):
        k = jax.random.split(jax.random.key(7), 3)
        head = fl.LocationHead(
            fl.LinearHead(4, 3, groups=2, key=k[0], dtype=F64), (2, 3)
        )
        h = jax.random.normal(k[1], (4, 2, 3), F64)
        dh = jax.random.normal(k[2], (4, 2, 3), F64)
        only = jnp.zeros_like(dh).at[2:, 1, 0].set(dh[2:, 1, 0])  # (l=(1, 0), g=1)
        y = jnp.asarray(1)

        @jax.jit
        def derivatives(h, dh, only):
            loss = lambda h: fl.softmax_cross_entropy(head(h), y)
            copies = lambda h: head.loss_copies(h, y, fl.softmax_cross_entropy)[0]
            return (
                jax.jvp(loss, (h,), (dh,)),
                jax.jvp(copies, (h,), (dh,)),
                jax.jvp(loss, (h,), (only,))[1],
            )

        (value, derivative), (values, by_copy), alone = derivatives(h, dh, only)
        assert head.copy_shape == (2, 3, 2) and values.shape == (12,)
        np.testing.assert_allclose(values, value, rtol=1e-12)
        np.testing.assert_allclose(by_copy.sum(), derivative, rtol=1e-10)
        np.testing.assert_allclose(by_copy.reshape(2, 3, 2)[1, 0, 1], alone)


def test_location_pairing_reduces_to_group_pairing(getkey):
    """With a pooled `LinearHead`, `LocationPerturbed` pairs as
    `Perturbed(grouped=True)`; with a `LocationHead`, `Perturbed(grouped=True)`
    pairs each group with the sum of its copies over locations."""
    conv = eqx.nn.Conv2d(4, 4, 3, padding="SAME", key=getkey())
    pooled = fl.LinearHead(4, 3, groups=2, key=getkey())
    located = fl.LocationHead(pooled, (3, 3))
    grouped = fl.Perturbed(conv, grouped=True)
    by_location = jnp.asarray(
        np.random.default_rng(0).normal(size=(5, 2, 18)).astype(np.float32)
    )  # [N, K, 3·3·2]
    shape = (4, 6, 6)

    @jax.jit
    def pairings(by_location):
        by_group = by_location.reshape(5, 2, 9, 2).sum(2)
        return (
            grouped.pair(by_group, shape, pooled),
            fl.LocationPerturbed(conv, pool_stride=2).pair(by_group, shape, pooled),
            grouped.pair(by_location, shape, located),
        )

    want, located_pooled, grouped_located = pairings(by_location)
    assert want.shape == (5, 2, 4, 1, 1)
    np.testing.assert_array_equal(located_pooled, want)
    np.testing.assert_allclose(grouped_located, want, rtol=1e-6)


def test_misconfigurations_refused(getkey):
    conv = lambda: eqx.nn.Conv2d(4, 4, 3, padding="SAME", key=getkey())
    head = fl.LocationHead(fl.LinearHead(4, 3, groups=2, key=getkey()), (3, 3))
    site = lambda stride=2: fl.LocationPerturbed(conv(), pool_stride=stride)
    with pytest.raises(ValueError, match="overlap"):
        fl.Block([site(), eqx.nn.MaxPool2d(3, 2)], head)
    with pytest.raises(ValueError, match="set pool_stride=4"):
        fl.Block([site(), eqx.nn.MaxPool2d(2, 2), eqx.nn.AvgPool2d(2, 2)], head)
    with pytest.raises(ValueError, match="may mix channels"):
        fl.Block([site(1), jax.nn.relu, conv()], head)
    with pytest.raises(ValueError, match="positive int"):
        site(0)
    with pytest.raises(TypeError):
        fl.LocationPerturbed(eqx.nn.LayerNorm(4))  # pyright: ignore
    with pytest.raises(TypeError):
        fl.LocationHead(head, (3, 3))  # pyright: ignore
    block = fl.Block([site(), jax.nn.relu, eqx.nn.MaxPool2d(2, 2)], head)
    with pytest.raises(ValueError, match=r"locations \(3, 3\)"):
        head(block(jnp.zeros((4, 8, 8))))
    derivatives = jnp.zeros((1, 1, 18))
    with pytest.raises(ValueError, match="pool to"):  # 6×6 maps, stride 3: 2×2
        site(3).pair(derivatives, (4, 6, 6), head)


def test_neighbourhood_misconfigurations_refused(getkey):
    conv = lambda **kw: eqx.nn.Conv2d(4, 4, 3, key=getkey(), **{"padding": 1, **kw})
    head = fl.LocationHead(fl.LinearHead(4, 3, groups=2, key=getkey()), (3, 3))
    site = lambda reach=1: fl.NeighbourhoodPerturbed(conv(), reach=reach, pool_stride=2)
    pool = eqx.nn.MaxPool2d(2, 2)
    fl.Block([site(), jax.nn.relu, conv(), pool], head)
    fl.Block([site(2), jax.nn.relu, conv(padding="SAME"), pool], head)
    with pytest.raises(ValueError, match="set reach=2"):
        fl.Block([site(), conv(), conv(), pool], head)
    with pytest.raises(ValueError, match="does not keep the positions"):
        fl.Block([site(), conv(stride=2)], head)
    with pytest.raises(ValueError, match="only pooling after the last"):
        fl.Block([site(), pool, conv()], head)
    with pytest.raises(ValueError, match="set pool_stride=1"):
        fl.Block([site(), conv()], head)
    with pytest.raises(ValueError, match="may mix locations"):
        fl.Block([site(), eqx.nn.LayerNorm((4, 6, 6)), pool], head)
    with pytest.raises(ValueError, match="non-negative int"):
        site(-1)
    with pytest.raises(TypeError, match=r"wraps an eqx\.nn\.Conv"):
        fl.NeighbourhoodPerturbed(eqx.nn.Linear(2, 2, key=getkey()))


def test_grouped_neighbourhood_misconfigurations_refused(getkey):
    """A grouped neighbourhood site refuses later layers that mix its groups, and a
    head whose groups do not divide its own."""
    conv = lambda groups=1: eqx.nn.Conv2d(
        4, 4, 1, groups=groups, key=getkey(), padding="SAME"
    )
    head = lambda groups: fl.LocationHead(
        fl.LinearHead(4, 3, groups=groups, key=getkey()), (6, 6)
    )
    site = lambda groups=2: fl.NeighbourhoodPerturbed(conv(), reach=0, groups=groups)
    fl.Block([site(), jax.nn.relu, conv(groups=4)], head(2))
    fl.Block(
        [
            site(),
            fl.location_mixer(4, 1, 2, 4, 1, 3, key=getkey(), groups=2)
            .blocks[0]
            .layers[6],
        ],
        head(2),
    )  # the mixer's N_G keeps 2 groups
    with pytest.raises(ValueError, match="mixes channels across its 2 groups"):
        fl.Block([site(), jax.nn.relu, conv()], head(2))
    with pytest.raises(ValueError, match="mixes channels across its 2 groups"):
        fl.Block([site(), eqx.nn.LayerNorm((4, 6, 6))], head(2))
    with pytest.raises(ValueError, match="positive int"):
        site(0)
    derivatives = jnp.zeros((1, 1, 6 * 6 * 4))
    with pytest.raises(ValueError, match="head's groups must divide groups"):
        site(2).pair(derivatives, (4, 6, 6), head(4))
