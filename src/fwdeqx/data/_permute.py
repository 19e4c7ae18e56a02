"""Seeded permutations from a fixed integer hash (SplitMix64), so that shuffles and
hold-out splits are the same on every platform and every NumPy version (NumPy's
`Generator` streams are not guaranteed stable across releases)."""

import numpy as np


_MASK = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser, vectorised over uint64 (wraps modulo 2**64)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _mix_int(value: int) -> int:
    return int(_mix(np.array([value & _MASK], dtype=np.uint64))[0])


def permutation(n: int, seed: int, stream: int = 0) -> np.ndarray:
    """A permutation of `range(n)` (int64) determined by `(seed, stream)` alone:
    the indices sorted by a 64-bit hash of `(seed, stream, index)`.

    **Arguments:**

    - `n`: length.
    - `seed`: any non-negative integer.
    - `stream`: a second integer (e.g. the epoch) giving independent permutations.
    """
    # SplitMix64 outputs: mix(state + gamma). Keyed by (seed, stream), then one
    # output per index.
    key = _mix_int((_mix_int(seed + _GAMMA) ^ ((stream * _GAMMA) & _MASK)) + _GAMMA)
    with np.errstate(over="ignore"):
        steps = np.arange(1, n + 1, dtype=np.uint64) * np.uint64(_GAMMA)
        state = steps + np.uint64(key)
        hashes = _mix(state)
    return np.argsort(hashes, kind="stable")
