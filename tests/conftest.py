import random

import jax
import pytest


# Strict numerics, as equinox's own test-suite: no silent dtype or rank promotion.
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def getkey():
    """`getkey()` returns a fresh PRNG key on each call (seeded per test, so tests are
    reproducible but independent)."""
    seed = random.Random(0).randint(0, 2**31 - 1)
    keys = iter(jax.random.split(jax.random.key(seed), 10_000))
    return lambda: next(keys)


@pytest.fixture
def fast_compile():
    """XLA without most of its optimisation passes (`jax_disable_most_optimizations`)
    while the test runs: end-to-end runs that compile many small programs and run
    each only a few times spend most of their time compiling. The setting is not
    part of JAX's compilation cache key, so the caches are cleared afterwards: no
    later test reuses an unoptimised executable (the bit-identity tests compare
    in-process runs with subprocesses)."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)
    jax.clear_caches()
