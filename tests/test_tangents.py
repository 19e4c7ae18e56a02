"""Statistical and contract tests of the tangent distributions.

Moment tests draw enough samples that the tolerance is at least 6 standard errors
of each checked statistic; with the number of statistics checked per test the
false-failure probability of every test below is under 1e-6.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import pytest
import scipy.stats

import fwdeqx
from fwdeqx._hash_random import hash_normal
from fwdeqx._structured import densify


def _flat(tangent) -> jax.Array:
    leaves = jtu.tree_leaves(densify(tangent))
    return jnp.concatenate([leaf.reshape(-1) for leaf in leaves])


def _samples(distribution, like, key, num: int) -> np.ndarray:
    """`num` tangents, each flattened to one row (structured leaves made dense)."""
    keys = jax.random.split(key, num)
    flat = jax.jit(jax.vmap(lambda k: _flat(distribution(k, like))))(keys)
    return np.asarray(flat, np.float64)


def _small_model(key):
    """6 + 2 + 8 = 16 parameters: a Linear (with bias) and a free matrix."""
    linear_key, other_key = jax.random.split(key)
    return {
        "linear": eqx.nn.Linear(3, 2, key=linear_key),  # weight 2x3, bias 2
        "matrix": jax.random.normal(other_key, (2, 4)),
        "steps": 3,  # not an inexact array: never gets a tangent
    }


DISTRIBUTIONS = [
    fwdeqx.Gaussian(),
    fwdeqx.Gaussian(generator="hash"),
    fwdeqx.Rademacher(),
    fwdeqx.LowRank(rank=1),
    fwdeqx.LowRank(rank=3),
    fwdeqx.LowRank(rank=2, fallback=fwdeqx.Rademacher()),
]


@pytest.mark.parametrize("distribution", DISTRIBUTIONS, ids=repr)
def test_mean_zero_identity_covariance(distribution, getkey):
    """E[v] = 0 and Cov[v] = I. With N = 20,000 samples the standard error of a mean
    is 1/√N = 0.0071, of an off-diagonal covariance entry at most √(3/N) = 0.0122
    (a² b_j b_k for a rank-1 product a bᵀ) and of a diagonal entry at most
    √(8/N) = 0.02 (Var v² is 2 for Gaussian, 0 for Rademacher, 8 for a·b). The
    tolerances 0.045 / 0.075 / 0.12 are over 6 standard errors each: over all
    16 + 16² statistics P(false failure) < 1e-6."""
    like = eqx.filter(_small_model(getkey()), eqx.is_inexact_array)
    v = _samples(distribution, like, getkey(), 20_000)
    assert v.shape == (20_000, 16)
    np.testing.assert_array_less(np.abs(v.mean(axis=0)), 0.045)
    covariance = v.T @ v / len(v)
    off_diagonal = covariance - np.diag(np.diag(covariance))
    np.testing.assert_array_less(np.abs(off_diagonal), 0.075)
    np.testing.assert_array_less(np.abs(np.diag(covariance) - 1), 0.12)


def _second_moment(distribution, like, direction, key, num):
    """Monte-Carlo E‖g‖² for the linear function f(θ) = ⟨c, θ⟩, g = (c·v) v, and its
    standard error."""
    v = _samples(distribution, like, key, num)
    c = np.asarray(_flat(direction), np.float64)
    g_norm2 = (v @ c) ** 2 * np.sum(v**2, axis=1)
    return g_norm2.mean(), g_norm2.std() / np.sqrt(num)


@pytest.mark.parametrize(
    "distribution, factor",
    [
        (fwdeqx.Gaussian(), lambda n: n + 2),
        (fwdeqx.Gaussian(generator="hash"), lambda n: n + 2),
        (fwdeqx.Rademacher(), lambda n: n),
    ],
    ids=["gaussian", "gaussian-hash", "rademacher"],
)
def test_second_moment_dense(distribution, factor, getkey):
    """E‖g‖² = (n + 2)‖∇f‖² (Gaussian), n‖∇f‖² (Rademacher). n = 6 and N = 200,000
    give a relative standard error about 0.01; the tolerance of 6 estimated standard
    errors fails falsely with probability ~2e-9."""
    like = {"a": jnp.zeros((2, 3))}
    direction = {"a": jax.random.normal(getkey(), (2, 3))}
    mean, stderr = _second_moment(distribution, like, direction, getkey(), 200_000)
    expected = factor(6) * float(np.sum(np.asarray(direction["a"]) ** 2))
    assert abs(mean - expected) < 6 * stderr, (mean, expected, stderr)
    assert stderr < 0.03 * expected  # the test has power to tell n from n + 2


def test_second_moment_low_rank(getkey):
    """Rank-1 LowRank on one Linear weight G (out x in): E‖g‖² = (out + 2)(in + 2)‖G‖²
    (differs from the dense (out·in + 2)‖G‖²). Only the weight is perturbed (no
    bias). Tolerance 6 estimated standard errors: P(false failure) ~2e-9."""
    linear = eqx.nn.Linear(3, 2, use_bias=False, key=getkey())
    like = eqx.filter(linear, eqx.is_inexact_array)
    direction = eqx.tree_at(lambda m: m.weight, like, jnp.ones((2, 3)) / 2)
    mean, stderr = _second_moment(fwdeqx.LowRank(), like, direction, getkey(), 200_000)
    expected = (2 + 2) * (3 + 2) * 6 / 4  # ‖G‖² = 6 / 4
    dense = (2 * 3 + 2) * 6 / 4
    assert abs(mean - expected) < 6 * stderr, (mean, expected, stderr)
    assert abs(mean - dense) > 6 * stderr


@pytest.mark.parametrize("distribution", DISTRIBUTIONS, ids=repr)
def test_deterministic_structure_and_dtype(distribution, getkey):
    like = eqx.filter(_small_model(getkey()), eqx.is_inexact_array)
    key = getkey()
    first, again = distribution(key, like), distribution(key, like)
    other = distribution(getkey(), like)
    assert bool(eqx.tree_equal(first, again))
    assert not np.allclose(_flat(first), _flat(other))
    dense = densify(first)
    assert jtu.tree_structure(dense) == jtu.tree_structure(like)
    for leaf, tangent_leaf in zip(
        jtu.tree_leaves(like), jtu.tree_leaves(dense), strict=True
    ):
        assert tangent_leaf.shape == leaf.shape
        assert tangent_leaf.dtype == leaf.dtype


def test_rademacher_values_and_float16(getkey):
    v = fwdeqx.Rademacher()(getkey(), {"a": jnp.zeros((5, 7), jnp.float16)})["a"]
    assert v.dtype == jnp.float16
    assert set(np.unique(np.asarray(v, np.float32))) <= {-1.0, 1.0}


def test_scaled_covariance(getkey):
    like = {"a": jnp.zeros(3)}
    key = getkey()
    scaled = fwdeqx.Scaled(fwdeqx.Gaussian(), 0.5)(key, like)["a"]
    base = fwdeqx.Gaussian()(key, like)["a"]
    np.testing.assert_allclose(scaled, 0.5 * base, rtol=1e-6)


@pytest.mark.parametrize("distribution", DISTRIBUTIONS, ids=repr)
@pytest.mark.parametrize(
    "leaf, message",
    [
        (jnp.zeros(3, jnp.int32), "floating-point"),
        (jnp.zeros(3, jnp.complex64), "complex"),
    ],
    ids=["int", "complex"],
)
def test_rejects_int_and_complex_leaves(distribution, leaf, message, getkey):
    with pytest.raises(TypeError, match=message):
        distribution(getkey(), {"ok": jnp.zeros(2), "bad": leaf})


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_hash_generator_is_standard_normal(dtype, getkey):
    """Kolmogorov–Smirnov distance of 400,000 hash-generated samples to N(0, 1), and
    the correlation of neighbouring samples and of two keys' samples. The KS
    threshold 2.69/√N is exceeded with probability 1.4e-6 by exact normal samples;
    a correlation has standard error 1/√N = 0.0016, the threshold 0.01 is over 6 of
    them. A generator that drops a mantissa bit or repeats a stream fails."""
    num = 400_000
    with jax.enable_x64(dtype == jnp.float64):
        x = hash_normal(getkey(), (num,), dtype)
        y = hash_normal(getkey(), (num,), dtype)
        assert x.dtype == dtype
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    assert scipy.stats.kstest(x, "norm").statistic < 2.69 / np.sqrt(num)
    assert abs(np.corrcoef(x[:-1], x[1:])[0, 1]) < 0.01
    assert abs(np.corrcoef(x, y)[0, 1]) < 0.01


def test_hash_generator_low_precision_and_errors(getkey):
    assert hash_normal(getkey(), (3, 5), jnp.bfloat16).dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="too large"):
        hash_normal(getkey(), (2**16, 2**16), jnp.float32)
    # Without runtime type checking, `__check_init__` raises the ValueError.
    with pytest.raises((TypeError, ValueError), match="generator"):
        fwdeqx.Gaussian(generator="philox")  # pyright: ignore
