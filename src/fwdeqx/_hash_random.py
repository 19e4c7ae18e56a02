"""Standard normal samples from a counter-based integer hash instead of threefry.

`jax.random.normal` spends most of its time in threefry (20 rounds of add, rotate
and xor per pair of 32-bit words). Hashing a counter with two rounds of a 32-bit
integer mixer is far cheaper on CPU (measured in docs/performance.md), and the
conversion to a normal sample is the one `jax.random.normal` uses (a uniform on
(-1, 1), then √2 erf⁻¹). The samples are exactly as Gaussian as
`jax.random.normal`'s; what differs is the statistical quality of the bits, which is
fine for Monte-Carlo gradient estimates but not cryptographic.
"""

import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray, UInt32


_MAX_SIZE = 2**32


def _mix(x: UInt32[Array, " n"]) -> UInt32[Array, " n"]:
    """`lowbias32`, a 32-bit integer mixer found by C. Wellons' hash prospector:
    a bijection in which every input bit flips every output bit with probability
    close to ½."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def hash_bits(key: PRNGKeyArray, size: int) -> UInt32[Array, " {size}"]:
    """`size` random 32-bit words: word i is mix(mix(i ⊕ s₀) + s₁), with the 64-bit
    seed (s₀, s₁) drawn from `key` by `jax.random.bits`."""
    if size >= _MAX_SIZE:
        raise ValueError(
            f"hash-based random numbers are counted with 32 bits; an array of {size} "
            "elements is too large. Use the default generator (`generator='jax'`)."
        )
    seed = jax.random.bits(key, (2,), jnp.uint32)
    counter = jnp.arange(size, dtype=jnp.uint32)
    return _mix(_mix(counter ^ seed[0]) + seed[1])


def _unit_interval(key: PRNGKeyArray, size: int, dtype) -> Array:
    """Uniform on [0, 1) with every mantissa bit random, as `jax.random.uniform`."""
    if jnp.dtype(dtype) == jnp.float64:
        words = hash_bits(key, 2 * size).astype(jnp.uint64)
        bits = (words[:size] << 32) | words[size:]
        mantissa = (bits >> 12) | jnp.uint64(0x3FF0000000000000)
    else:
        mantissa = (hash_bits(key, size) >> 9) | jnp.uint32(0x3F800000)
    float_dtype = jnp.float64 if jnp.dtype(dtype) == jnp.float64 else jnp.float32
    return jax.lax.bitcast_convert_type(mantissa, float_dtype) - 1


def hash_normal(key: PRNGKeyArray, shape: tuple[int, ...], dtype) -> Array:
    """Standard normal samples of `shape` and floating `dtype` from hashed counters.

    float16 and bfloat16 samples are drawn in float32 and rounded.
    """
    size = math.prod(shape)
    unit = _unit_interval(key, size, dtype)
    low = jnp.nextafter(jnp.array(-1, unit.dtype), jnp.array(0, unit.dtype))
    uniform = jnp.maximum(low, unit * (1 - low) + low)
    normal = jnp.array(math.sqrt(2), unit.dtype) * jax.lax.erf_inv(uniform)
    return normal.astype(dtype).reshape(shape)
