"""fwdeqx.local's extension contracts: a new objective and a new perturbation site,
each one class, work with `ActivityPerturbation` unchanged; ReLU masking and
grouping are checked; unusable configurations are refused at construction."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fwdeqx
import fwdeqx.local as fl

from .helpers import assert_unbiased


class DeepSupervision(fl.AbstractLocalObjective):
    """Every head's loss counts and no gradient is stopped: block 0's sites reach
    its own head (paired by group) and the last head (summed)."""

    per_example_loss: Callable = fl.softmax_cross_entropy

    def detaches(self, block: int) -> bool:
        return False

    def counts(self, block: int, num_blocks: int) -> bool:
        return True


class PerturbedNorm(fl.AbstractSite):
    """A site around a LayerNorm: its output gets activity tangents, every unit
    paired with the sum of its head's loss copies."""

    layer: eqx.nn.LayerNorm

    def apply(self, layer, x):
        return layer(x)

    @property
    def channel_axis(self) -> int:
        return -1

    def check_downstream(self, layers) -> None:
        pass

    def pair(self, derivatives, shape, head):
        n, k, _ = derivatives.shape
        return jnp.sum(derivatives, axis=-1).reshape(n, k, *([1] * len(shape)))


def _net(key, norm=lambda: eqx.nn.LayerNorm(8, dtype=jnp.float64), act=jax.nn.relu):
    f64 = jnp.float64
    k = jax.random.split(key, 4)
    return fl.LocalNetwork(
        [
            fl.Block(
                [
                    fl.Perturbed(
                        eqx.nn.Linear(5, 8, key=k[0], dtype=f64), grouped=True
                    ),
                    act,
                ],
                fl.LinearHead(8, 3, groups=2, key=k[1], dtype=f64),
            ),
            fl.Block(
                [norm(), fl.Perturbed(eqx.nn.Linear(8, 6, key=k[2], dtype=f64)), act],
                fl.LinearHead(6, 3, key=k[3], dtype=f64),
            ),
        ]
    )


def _batch():
    x = jax.random.normal(jax.random.key(1), (3, 5), jnp.float64)
    return x, jnp.arange(3) % 3


@pytest.mark.parametrize("toy", ["objective", "site"])
def test_toy_objective_and_site_unbiased(toy):
    with jax.enable_x64(True):
        if toy == "objective":
            model, objective = _net(jax.random.key(0)), DeepSupervision()
        else:
            norm = lambda: PerturbedNorm(eqx.nn.LayerNorm(8, dtype=jnp.float64))
            model, objective = _net(jax.random.key(0), norm), fl.LocalLoss()
        estimator = fl.ActivityPerturbation(fwdeqx.Rademacher())
        assert_unbiased(
            estimator, objective, model, *_batch(), key=jax.random.key(2), num=1000
        )


class MyReLU(fl.AbstractReLU):
    def __call__(self, x, *, key=None):
        return jax.nn.relu(x)


class Undeclared(fl.AbstractChannelwise):
    """A ReLU that does not declare itself one: not masked."""

    def __call__(self, x, *, key=None):
        return jnp.maximum(x, 0.0)


def test_relu_spellings_mask_alike():
    """`jax.nn.relu`, `eqx.nn.Lambda(jax.nn.relu)` and an `AbstractReLU` subclass
    give the same estimate; an unknown activation is not masked."""
    estimate = lambda act: fl.ActivityPerturbation()(
        fl.LocalLoss(),
        _net(jax.random.key(0), act=act),
        *_batch(),
        key=jax.random.key(3),
    )[1]
    same = lambda a, b: all(
        np.allclose(u, v)
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )
    with jax.enable_x64(True):
        relu = estimate(jax.nn.relu)
        assert same(estimate(eqx.nn.Lambda(jax.nn.relu)), relu)
        assert same(estimate(MyReLU()), relu)
        unknown = estimate(Undeclared())
        assert not same(unknown, relu)


def test_grouped_site_refuses_channel_mixing(getkey):
    grouped = lambda: fl.Perturbed(eqx.nn.Linear(6, 8, key=getkey()), grouped=True)
    head = fl.LinearHead(4, 3, groups=2, key=getkey())
    with pytest.raises(ValueError, match="may mix channels"):
        fl.Block([grouped(), jax.nn.relu, eqx.nn.Linear(8, 4, key=getkey())], head)
    with pytest.raises(ValueError, match="may mix channels"):
        fl.Block([fl.Residual([grouped()]), eqx.nn.LayerNorm(8)])
    with pytest.raises(ValueError, match="may mix channels"):
        fl.Block([grouped(), lambda h: h[::-1]])
    # channel-preserving layers build (the ready-made networks: test_local_layers)
    fl.Block([grouped(), eqx.nn.Lambda(jax.nn.gelu), fl.Residual([jax.nn.relu])])
    conv = fl.Perturbed(eqx.nn.Conv2d(1, 4, 3, key=getkey()), grouped=True)
    fl.Block([conv, MyReLU(), eqx.nn.MaxPool2d(2, 2), eqx.nn.Dropout(0.1)])


def test_bad_configurations_refused_at_construction():
    for estimator in (fl.ActivityPerturbation, fl.LocalWeightPerturbation):
        with pytest.raises(TypeError, match=r"LowRank|low-rank"):
            estimator(fwdeqx.LowRank())
        with pytest.raises(TypeError, match=r"low-rank"):
            estimator(fwdeqx.Scaled(fwdeqx.LowRank(), 2.0))
        with pytest.raises(TypeError, match="num_tangents"):
            estimator(num_tangents=True)  # pyright: ignore
        with pytest.raises(ValueError, match="num_tangents"):
            estimator(num_tangents=0)
        with pytest.raises(TypeError, match="tangent"):
            estimator("gaussian")  # pyright: ignore
    with pytest.raises(TypeError, match=r"Projection"):
        fl.ActivityPerturbation(combine=fwdeqx.Projection())


def test_key_errors_are_the_cores(getkey):
    model = fl.mlp(6, 4, 2, 3, key=getkey())
    x, y = jnp.zeros((4, 6)), jnp.zeros((4,), jnp.int32)
    for estimator in (fl.ActivityPerturbation(), fl.LocalWeightPerturbation()):
        with pytest.raises(TypeError, match="needs a keyword-only `key`"):
            estimator(fl.LocalLoss(), model, x, y, key=None)
        with pytest.raises(TypeError, match="single JAX PRNG key"):
            estimator(fl.LocalLoss(), model, x, y, key=jnp.zeros(3))
