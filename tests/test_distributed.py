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
from benchmarks._hlo import collective_bytes

import fwdeqx
import fwdeqx.distributed as distributed
import fwdeqx.local
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


def test_bad_arguments():
    mesh = jax.make_mesh((1,), ("batch",))
    sgd, fg = optax.sgd(0.1), fwdeqx.ForwardGradient()
    with pytest.raises(TypeError, match="mesh"):
        distributed.make_step(_loss, sgd, fg, mesh="batch")  # pyright: ignore
    with pytest.raises(ValueError, match="not an axis of the mesh"):
        distributed.make_step(_loss, sgd, fg, mesh=mesh, axis_name="model")
    # The test-suite's runtime type checks reject the `Literal` first (a
    # TypeError); without them `make_step` raises a ValueError naming it.
    with pytest.raises((TypeError, ValueError), match="parallelism"):
        distributed.make_step(_loss, sgd, fg, mesh=mesh, parallelism="pipeline")  # pyright: ignore
    with pytest.raises(TypeError, match="estimator"):
        distributed.make_step(_loss, sgd, "forward", mesh=mesh)  # pyright: ignore
    with pytest.raises(TypeError, match="optimizer"):
        distributed.make_step(_loss, optax.sgd, fg, mesh=mesh)  # pyright: ignore
    with pytest.raises(TypeError, match="optimizer"):
        distributed.make_backprop_step(_loss, optax.sgd, mesh=mesh)  # pyright: ignore
    step = distributed.make_step(_loss, sgd, fg, mesh=mesh)
    model = jnp.zeros(3)
    with pytest.raises(TypeError, match="key"):
        step(model, step.init(model), (model, model), 0)  # pyright: ignore


@pytest.mark.parametrize(
    ("estimator", "match"),
    [
        (fwdeqx.Backprop(), "Backprop` computes the exact gradient"),
        (fwdeqx.SPSA(num_directions=2), "SPSA` has no batch of tangents"),
    ],
    ids=["backprop", "spsa"],
)
def test_tangent_parallelism_needs_tangents_to_split(estimator, match):
    mesh = jax.make_mesh((1,), ("batch",))
    with pytest.raises(TypeError, match=match):
        distributed.make_step(
            _loss, optax.sgd(0.1), estimator, mesh=mesh, parallelism="tangent"
        )
    # Data parallelism works with every estimator.
    distributed.make_step(_loss, optax.sgd(0.1), estimator, mesh=mesh)


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
    return collective_bytes(text)


@needs_devices
@pytest.mark.parametrize(
    "parallelism, estimator",
    [
        ("data", fwdeqx.ForwardGradient(fwdeqx.LowRank(), 1)),
        ("data", fwdeqx.ForwardGradient(fwdeqx.Rademacher(), 4)),
        ("tangent", fwdeqx.ForwardGradient(fwdeqx.LowRank(rank=2), 8)),
        ("data", fwdeqx.ForwardGradient(num_tangents=4, combine=fwdeqx.Projection())),
        (
            "tangent",
            fwdeqx.ForwardGradient(num_tangents=4, combine=fwdeqx.Projection()),
        ),
    ],
    ids=[
        "data-lowrank-k1",
        "data-rade-k4",
        "tangent-lowrank-k8",
        "data-proj",
        "tangent-proj",
    ],
)
def test_forward_gradient_matches_one_device(getkey, parallelism, estimator):
    """Two steps of SGD with momentum on four devices equal two steps of
    `fwdeqx.make_step` with the same estimator and keys, and the compiled step
    all-reduces K + 1 scalars (the derivatives and the loss) and nothing else."""
    model, batch = _problem(getkey)
    key = getkey()
    optimizer = optax.sgd(1e-2, momentum=0.9)
    mesh = jax.make_mesh((NUM_DEVICES,), ("batch",))
    step = distributed.make_step(
        _loss, optimizer, estimator, mesh=mesh, parallelism=parallelism
    )
    reference = fwdeqx.make_step(_loss, optimizer, estimator)
    got = _run(step, model, batch, key)
    want = _run(reference, model, batch, key)
    assert tree_allclose(got, want, rtol=1e-5, atol=1e-6)
    _assert_replicated(got[0])

    collectives = _collectives(step, model, batch, key)
    assert collectives["all-reduce"] == (estimator.num_tangents + 1) * 4
    assert sum(collectives.values()) == collectives["all-reduce"]


@needs_devices
def test_spsa_data_parallel_matches_one_device(getkey):
    """Data parallelism takes any estimator: SPSA's function evaluations are
    averaged over the devices, one scalar each."""
    model, batch = _problem(getkey)
    key = getkey()
    estimator = fwdeqx.SPSA(num_directions=2)
    mesh = jax.make_mesh((NUM_DEVICES,), ("batch",))
    step = distributed.make_step(_loss, optax.sgd(1e-2), estimator, mesh=mesh)
    reference = fwdeqx.make_step(_loss, optax.sgd(1e-2), estimator)
    got = _run(step, model, batch, key)
    want = _run(reference, model, batch, key)
    assert tree_allclose(got, want, rtol=1e-4, atol=1e-6)


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
@pytest.mark.parametrize(
    "estimator",
    [fwdeqx.ForwardGradient(num_tangents=2), fwdeqx.local.ActivityPerturbation()],
    ids=["fg", "activity"],
)
def test_steps_inside_a_jitted_scan(getkey, estimator):
    """The step traced inside a jitted `lax.scan` over steps (the experiments'
    chunks) equals the step called step by step; the batch slices are
    constrained to the batch sharding inside the trace."""
    model, batch = _problem(getkey)
    if isinstance(estimator, fwdeqx.local.ActivityPerturbation):
        model = fwdeqx.local.mlp(6, 8, 1, 3, key=getkey())
        loss = fwdeqx.local.LocalLoss()
    else:
        loss = _loss
    key = getkey()
    mesh = jax.make_mesh((NUM_DEVICES,), ("batch",))
    step = distributed.make_step(loss, optax.sgd(1e-2), estimator, mesh=mesh)
    params, static = eqx.partition(model, eqx.is_array)

    @jax.jit
    def scanned(carry, xs, ys):
        def body(carry, inputs):
            params, state = carry
            x, y, step_key = inputs
            model, state, value = step(
                eqx.combine(params, static), state, (x, y), step_key
            )
            return (eqx.filter(model, eqx.is_array), state), value

        return jax.lax.scan(body, carry, (xs, ys, jax.random.split(key, 2)))

    xs, ys = (jnp.stack([leaf, leaf[::-1]]) for leaf in batch)
    (params, state), values = scanned((params, step.init(model)), xs, ys)
    want_model, want_state = model, step.init(model)
    want_values = []
    for x, y, step_key in zip(xs, ys, jax.random.split(key, 2), strict=True):
        want_model, want_state, value = step(want_model, want_state, (x, y), step_key)
        want_values.append(value)
    got = (params, state, values)
    want = (eqx.filter(want_model, eqx.is_array), want_state, jnp.stack(want_values))
    assert tree_allclose(got, want, rtol=1e-5, atol=1e-6)


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
            _loss,
            optax.sgd(0.1),
            fwdeqx.ForwardGradient(num_tangents=6),
            mesh=mesh,
            parallelism="tangent",
        )
    model, batch = _problem(getkey, batch_size=6)
    step = distributed.make_backprop_step(_loss, optax.sgd(0.1), mesh=mesh)
    with pytest.raises(ValueError, match=r"divisible by 4; got an array of shape \(6"):
        step(model, step.init(model), batch, getkey())
