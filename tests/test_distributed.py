"""Tests of `fwdeqx.distributed`.

The multi-device tests need four devices, which on CPU means
`--xla_force_host_platform_device_count=4` before JAX starts; the main test process
keeps one device, so `test_four_virtual_devices` runs this file again in a
subprocess with that flag, where the multi-device tests run (here they are skipped).
"""

import os
import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optax
import pytest

import fwdeqx
import fwdeqx.distributed as distributed
from fwdeqx.models import MLP, cross_entropy

from .helpers import tree_allclose


NUM_DEVICES = 4
needs_devices = pytest.mark.skipif(
    jax.device_count() < NUM_DEVICES,
    reason="runs in the subprocess of test_four_virtual_devices",
)


def _loss(model, batch):
    x, y = batch
    return cross_entropy(model, x, y)


def _problem(getkey, batch_size=16):
    model = MLP(key=getkey(), in_size=6, width=8, depth=1, out_size=3)
    x = jax.random.normal(getkey(), (batch_size, 6))
    y = jax.random.randint(getkey(), (batch_size,), 0, 3)
    return model, (x, y)


def _num_params(model) -> int:
    return sum(leaf.size for leaf in jtu.tree_leaves(eqx.filter(model, eqx.is_array)))


# ----------------------------------------------------------------- one device


def test_four_virtual_devices():
    """Runs the multi-device tests of this file with four virtual CPU devices."""
    if jax.device_count() >= NUM_DEVICES:
        pytest.skip("already in the multi-device subprocess")
    env = dict(os.environ)
    flag = f"--xla_force_host_platform_device_count={NUM_DEVICES}"
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flag}".strip()
    env["JAX_PLATFORMS"] = "cpu"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            __file__,
            "-k",
            "not test_four_virtual_devices",
        ],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout else ""
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed" in summary and "skipped" not in summary, result.stdout


def test_collective_bytes_parses_hlo():
    hlo = "\n".join(
        [
            "  %a = f32[5]{0} all-reduce(f32[5]{0} %x), to_apply=%add",
            "  %b = (f32[8,6]{1,0}, f32[8]{0}) all-reduce(%p, %q), channel_id=1",
            "  %c = bf16[2,3]{1,0} all-reduce-start(%r), to_apply=%add",
            "  %d = bf16[2,3]{1,0} all-reduce-done(%c)",
            "  %e = f32[16]{0} all-gather(f32[4]{0} %s), dimensions={0}",
            "  %f = f32[1000]{0} add(%g, %h)",
        ]
    )
    totals = distributed.collective_bytes(hlo)
    assert totals["all-reduce"] == 5 * 4 + (48 + 8) * 4 + 6 * 2
    assert totals["all-gather"] == 16 * 4
    assert totals["reduce-scatter"] == totals["all-to-all"] == 0


def test_bad_arguments():
    mesh = jax.make_mesh((1,), ("batch",))
    with pytest.raises(TypeError, match="mesh"):
        distributed.make_step(_loss, optax.sgd(0.1), mesh="batch")  # pyright: ignore
    with pytest.raises(ValueError, match="not an axis of the mesh"):
        distributed.make_step(_loss, optax.sgd(0.1), mesh=mesh, axis_name="model")
    with pytest.raises(ValueError, match="`mode`"):
        distributed.make_step(_loss, optax.sgd(0.1), mesh=mesh, mode="pipeline")
    with pytest.raises(ValueError, match="num_tangents"):
        distributed.make_step(_loss, optax.sgd(0.1), mesh=mesh, num_tangents=0)
    with pytest.raises(TypeError, match="tangents"):
        distributed.make_step(_loss, optax.sgd(0.1), mesh=mesh, tangents="normal")  # pyright: ignore
    with pytest.raises(TypeError, match="optimizer"):
        distributed.make_backprop_step(_loss, optax.sgd, mesh=mesh)  # pyright: ignore
    step = distributed.make_step(_loss, optax.sgd(0.1), mesh=mesh)
    model = jnp.zeros(3)
    with pytest.raises(TypeError, match="key"):
        step(model, step.init(model), (model, model), 0)  # pyright: ignore


# ---------------------------------------------------------------- four devices


def _run(step, model, batch, key):
    """Two steps from `model`, with the two halves of `key`."""
    state = step.init(model)
    values = []
    for step_key in jax.random.split(key, 2):
        model, state, value = step(model, state, batch, step_key)
        values.append(value)
    return model, state, jnp.stack(values)


def _assert_replicated(tree):
    for leaf in jtu.tree_leaves(eqx.filter(tree, eqx.is_array)):
        assert leaf.sharding.is_fully_replicated
        assert len(leaf.sharding.device_set) == NUM_DEVICES


def _collectives(step, model, batch, key):
    text = step.lower(model, step.init(model), batch, key).compile().as_text()
    return distributed.collective_bytes(text)


@needs_devices
@pytest.mark.parametrize(
    "mode, num_tangents, tangents",
    [
        ("data", 1, fwdeqx.LowRank()),
        ("data", 4, fwdeqx.Rademacher()),
        ("tangent", 8, fwdeqx.LowRank(rank=2)),
    ],
)
def test_forward_gradient_matches_one_device(getkey, mode, num_tangents, tangents):
    """Two steps of SGD with momentum on four devices equal two steps of
    `fwdeqx.make_step` with `ForwardGradient` and the same keys, and the compiled
    step all-reduces K + 1 scalars (the derivatives and the loss) and nothing
    else."""
    model, batch = _problem(getkey)
    key = getkey()
    optimizer = optax.sgd(1e-2, momentum=0.9)
    mesh = jax.make_mesh((NUM_DEVICES,), ("batch",))
    step = distributed.make_step(
        _loss,
        optimizer,
        mesh=mesh,
        mode=mode,
        tangents=tangents,
        num_tangents=num_tangents,
    )
    reference = fwdeqx.make_step(
        _loss, optimizer, fwdeqx.ForwardGradient(tangents, num_tangents)
    )
    got = _run(step, model, batch, key)
    want = _run(reference, model, batch, key)
    assert tree_allclose(got, want, rtol=1e-5, atol=1e-6)
    _assert_replicated(got[0])

    collectives = _collectives(step, model, batch, key)
    assert collectives["all-reduce"] == (num_tangents + 1) * 4
    assert sum(collectives.values()) == collectives["all-reduce"]


@needs_devices
def test_backprop_matches_one_device(getkey):
    """Data-parallel backprop equals `fwdeqx.make_step` with `Backprop`, and its
    compiled step all-reduces the whole gradient (one float per parameter) plus
    the loss."""
    model, batch = _problem(getkey)
    key = getkey()
    optimizer = optax.sgd(1e-2, momentum=0.9)
    mesh = jax.make_mesh((NUM_DEVICES,), ("batch",))
    step = distributed.make_backprop_step(_loss, optimizer, mesh=mesh)
    reference = fwdeqx.make_step(_loss, optimizer, fwdeqx.Backprop())
    got = _run(step, model, batch, key)
    want = _run(reference, model, batch, key)
    assert tree_allclose(got, want, rtol=1e-5, atol=1e-6)
    _assert_replicated(got[0])

    collectives = _collectives(step, model, batch, key)
    assert collectives["all-reduce"] == (_num_params(model) + 1) * 4
    assert sum(collectives.values()) == collectives["all-reduce"]


@needs_devices
def test_two_dimensional_mesh(getkey):
    """On a 2x2 mesh the batch is split over the named axis only."""
    model, batch = _problem(getkey)
    devices = np.array(jax.devices()[:NUM_DEVICES]).reshape(2, 2)
    mesh = jax.sharding.Mesh(devices, ("batch", "other"))
    with pytest.raises(ValueError, match="pass `axis_name="):
        distributed.make_backprop_step(_loss, optax.sgd(0.1), mesh=mesh)
    step = distributed.make_backprop_step(
        _loss, optax.sgd(0.1), mesh=mesh, axis_name="batch"
    )
    reference = fwdeqx.make_step(_loss, optax.sgd(0.1), fwdeqx.Backprop())
    key = getkey()
    got = step(model, step.init(model), batch, key)
    want = reference(model, reference.init(model), batch, key)
    assert tree_allclose(got, want, rtol=1e-5, atol=1e-6)


@needs_devices
def test_clear_errors_on_four_devices(getkey):
    mesh = jax.make_mesh((NUM_DEVICES,), ("batch",))
    with pytest.raises(ValueError, match="multiple of 4; got 6"):
        distributed.make_step(
            _loss, optax.sgd(0.1), mesh=mesh, mode="tangent", num_tangents=6
        )
    model, batch = _problem(getkey, batch_size=6)
    step = distributed.make_backprop_step(_loss, optax.sgd(0.1), mesh=mesh)
    with pytest.raises(ValueError, match=r"divisible by 4; got an array of shape \(6"):
        step(model, step.init(model), batch, getkey())
