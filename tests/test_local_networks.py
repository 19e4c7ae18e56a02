"""`fl.location_cnn` and `fl.location_mixer`: networks with per-location local
losses. Statistical checks in float64 through `tests.helpers` (the false-failure
probability is in `assert_unbiased`'s docstring)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fwdeqx
import fwdeqx.local as fl

from .helpers import assert_unbiased


# Compile-bound (a few estimators on tiny networks): see conftest.fast_compile.
pytestmark = pytest.mark.usefixtures("fast_compile")


F64 = jnp.float64


def tiny_cnn(key, dtype=None):
    """One block of 2 channels on 4×4 images (2×2 head locations), 2 channel
    groups: 8 loss copies."""
    return fl.location_cnn(1, 2, 3, key=key, image_size=4, groups=2, dtype=dtype)


def tiny_mixer(key, dtype=None):
    """4 patches of 2×2 pixels, width 4, a patch-embedding block and one mixer
    block, 2 channel groups."""
    return fl.location_mixer(4, 1, 2, 4, 2, 3, key=key, groups=2, dtype=dtype)


def tiny_one_conv_cnn(key, dtype=None):
    """`fl.cnn` with per-location losses: one block of 2 channels on 4×4 images,
    one channel group (one perturbed layer per block, so not exact)."""
    return fl.cnn(1, 2, 3, key=key, image_size=4, locations=True, dtype=dtype)


def sites(block):
    is_site = lambda node: isinstance(node, fl.AbstractSite)
    return [s for s in jax.tree.leaves(block, is_leaf=is_site) if is_site(s)]


def batch(key, n=3, size=4, dtype=None):
    kx, ky = jax.random.split(key)
    x = jax.random.normal(kx, (n, 1, size, size), dtype or jnp.float32)
    return x, jax.random.randint(ky, (n,), 0, 3)


def abstract(build, *args, **kwargs):
    """The network's structure, without initialising it (eager initialisation of
    many layers is slow on a loaded CPU)."""
    return eqx.filter_eval_shape(build, *args, **kwargs)


def shape(model, *example):
    call = lambda m, x: jax.vmap(m)(x)
    return eqx.filter_eval_shape(call, model, jax.ShapeDtypeStruct(example, "f4")).shape


def test_shapes_and_configurations(getkey):
    for build in (tiny_cnn, tiny_mixer):
        model = abstract(build, getkey())
        assert shape(model, 3, 1, 4, 4) == shape(model, 3, 16) == (3, 3)
    copies = lambda model: [block.head.copy_shape for block in model.blocks]
    cifar = abstract(fl.location_mixer, 32, 3, 8, 512, 4, 10, key=getkey(), groups=16)
    assert shape(cifar, 2, 3, 32, 32) == (2, 10)  # M/8/16
    assert copies(cifar) == [(64, 16)] * 4
    small = abstract(fl.location_mixer, 28, 1, 4, 64, 3, 10, key=getkey(), groups=8)
    assert shape(small, 2, 28, 28) == (2, 10)
    assert copies(small) == [(16, 8)] * 3
    cnn = abstract(fl.location_cnn, 1, (16, 32), 10, key=getkey(), groups=4)
    assert shape(cnn, 2, 784) == (2, 10)
    assert copies(cnn) == [(14, 14, 4), (7, 7, 4)]


@pytest.mark.parametrize("build", [tiny_cnn, tiny_mixer])
def test_blocks_pass_the_pairing_checks(build, getkey):
    """Every block has at least two perturbed layers, one of them paired by
    location, and a `LocationHead`; rebuilding each block reruns `Block`'s checks."""
    for block in abstract(build, getkey()).blocks:
        found = sites(block)
        assert len(found) >= 2
        assert any(isinstance(site, fl.LocationPerturbed) for site in found)
        assert isinstance(block.head, fl.LocationHead)
        fl.Block(block.layers, block.head)


def test_pairing_the_mixed_layer_by_location_is_refused(getkey):
    """The first convolution's output is mixed by the second: pairing it by
    location is refused."""
    block = abstract(tiny_cnn, getkey()).blocks[0]
    layers = list(block.layers)
    layers[1] = fl.LocationPerturbed(layers[1].layer, pool_stride=2)
    with pytest.raises(ValueError, match="may mix channels"):
        fl.Block(layers, block.head)
    with pytest.raises(ValueError, match="divide"):
        fl.location_mixer(28, 1, 3, 8, 1, 10, key=getkey())
    with pytest.raises(ValueError, match="divisible by 4"):
        fl.location_cnn(1, (4, 4), 10, key=getkey(), image_size=6)


def test_cnn_with_location_losses_keeps_its_outputs(getkey):
    """`fl.cnn(locations=True)` has the same logits as `fl.cnn` and one loss copy
    per pooled position and group (the third block's 7×7 map pools to 3×3)."""
    key, x = getkey(), jax.random.normal(getkey(), (2, 1, 28, 28))
    pooled = fl.cnn(1, (4, 8, 8), 10, key=key, groups=2)
    located = fl.cnn(1, (4, 8, 8), 10, key=key, groups=2, locations=True)
    assert [block.head.copy_shape for block in located.blocks] == [
        (14, 14, 2),
        (7, 7, 2),
        (3, 3, 2),
    ]
    assert all(isinstance(sites(b)[0], fl.LocationPerturbed) for b in located.blocks)
    np.testing.assert_allclose(jax.vmap(located)(x), jax.vmap(pooled)(x), rtol=1e-6)


@pytest.mark.parametrize("build", [tiny_cnn, tiny_mixer, tiny_one_conv_cnn])
def test_lg_fg_a_unbiased_for_the_local_loss_and_not_exact(build):
    """Unbiased for `LocalLoss`; with two or three perturbed layers per block, not
    exact even with Rademacher tangents (the estimates differ from key to key,
    unlike `test_one_layer_and_one_copy_per_unit_is_exactly_lg_bp`'s)."""
    with jax.enable_x64(True):
        model = build(jax.random.key(0), F64)
        x, y = batch(jax.random.key(1), dtype=F64)
        truth = exact(model, x, y)
        samples = assert_unbiased(
            fl.ActivityPerturbation(fwdeqx.Rademacher()),
            fl.LocalLoss(),
            model,
            x,
            y,
            key=jax.random.key(2),
            num=3000,
            truth=truth,
        )
        assert samples.std(axis=0).max() > 1e-3 * np.abs(truth).max()


def exact(model, x, y):
    """`tests.helpers.exact_gradient`, compiled (eager backprop through
    convolutions is slow)."""
    grads = eqx.filter_jit(
        lambda m: fwdeqx.Backprop()(fl.LocalLoss(), m, x, y, key=jax.random.key(0))[1]
    )(model)
    return np.concatenate([np.asarray(g).reshape(-1) for g in jax.tree.leaves(grads)])


def one_layer_blocks(key):
    """Two conv blocks with ONE perturbed layer each, paired by location, and one
    loss copy per unit and location (groups = channels, no pooling)."""
    k = jax.random.split(key, 4)
    blocks = []
    for i, (fan_in, width) in enumerate(((1, 2), (2, 3))):
        conv = eqx.nn.Conv2d(fan_in, width, 3, padding="SAME", key=k[2 * i], dtype=F64)
        head = fl.LinearHead(width, 3, groups=width, key=k[2 * i + 1], dtype=F64)
        layers = [fl.LocationPerturbed(conv), jax.nn.relu]
        blocks.append(fl.Block(layers, fl.LocationHead(head, (4, 4))))
    return fl.LocalNetwork(blocks)


def test_one_layer_and_one_copy_per_unit_is_exactly_lg_bp():
    """With one perturbed layer per block and one loss copy per unit and location,
    (d·u)u = (∂L/∂z ⊙ u) ⊙ u = ∂L/∂z for Rademacher u: LG-FG-A returns LG-BP's
    gradient exactly, whatever the key. Such a configuration says nothing about
    the estimator's variance (docs/local-losses.md)."""
    with jax.enable_x64(True):
        x, y = batch(jax.random.key(3), size=4, dtype=F64)
        estimator = fl.ActivityPerturbation(fwdeqx.Rademacher())

        @eqx.filter_jit
        def gap(model, key):
            _, estimate = estimator(fl.LocalLoss(), model, x, y, key=key)
            _, exact = fwdeqx.Backprop()(fl.LocalLoss(), model, x, y, key=key)
            flat = lambda tree: jnp.concatenate(
                [jnp.ravel(leaf) for leaf in jax.tree.leaves(tree)]
            )
            return jnp.max(jnp.abs(flat(estimate) - flat(exact))), jnp.max(
                jnp.abs(flat(exact))
            )

        model = one_layer_blocks(jax.random.key(5))
        for key in jax.random.split(jax.random.key(4), 2):
            error, scale = gap(model, key)
            assert scale > 0 and error <= 1e-12 * scale
