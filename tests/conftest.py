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
