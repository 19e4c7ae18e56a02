"""Classic optimisation test functions with known minima, typed with jaxtyping.

!!! Example

    ```python
    from fwdeqx import testfns
    testfns.beale(jnp.array([1.5, -0.1]))      # the paper's Figure 1 point
    testfns.BEALE_MINIMUM                       # (3, 0.5), where beale = 0
    ```
"""

import jax.numpy as jnp
from jaxtyping import Array, Float


__all__ = [
    "BEALE_MINIMUM",
    "BEALE_PAPER_POINT",
    "beale",
    "rosenbrock",
    "rosenbrock_minimum",
]

BEALE_MINIMUM: tuple[float, float] = (3.0, 0.5)
"""The global minimum of `beale`, where it equals 0."""

BEALE_PAPER_POINT: tuple[float, float] = (1.5, -0.1)
"""The point of Figure 1 of "Gradients with or without Backpropagation"."""


def beale(xy: Float[Array, "2"]) -> Float[Array, ""]:
    """Beale's function, f(x, y) = (1.5 − x + xy)² + (2.25 − x + xy²)²
    + (2.625 − x + xy³)².

    **Arguments:**

    - `xy`: the point `(x, y)`.

    **Returns:**

    f(x, y) ≥ 0, equal to 0 only at `BEALE_MINIMUM` = (3, 0.5).
    """
    x, y = xy[0], xy[1]
    return (
        (1.5 - x + x * y) ** 2
        + (2.25 - x + x * y**2) ** 2
        + (2.625 - x + x * y**3) ** 2
    )


def rosenbrock(
    x: Float[Array, " n"], a: float = 1.0, b: float = 100.0
) -> Float[Array, ""]:
    """The n-dimensional Rosenbrock function,
    f(x) = Σ_i b (x_{i+1} − x_i²)² + (a − x_i)².

    **Arguments:**

    - `x`: a point in R^n, n ≥ 2.
    - `a`, `b`: the usual constants (1 and 100).

    **Returns:**

    f(x) ≥ 0, equal to 0 only at x = (a, a², ...); for a = 1, at
    `rosenbrock_minimum(n)` = (1, ..., 1).
    """
    if x.shape[0] < 2:
        raise ValueError(f"rosenbrock needs at least 2 dimensions, got {x.shape[0]}.")
    head, tail = x[:-1], x[1:]
    return jnp.sum(b * (tail - head**2) ** 2 + (a - head) ** 2)


def rosenbrock_minimum(n: int, a: float = 1.0) -> Float[Array, " n"]:
    """The global minimum of `rosenbrock` in n dimensions (for the given `a`; it
    does not depend on `b`). For n > 2 with a ≠ 1 the classic closed form no longer
    holds, so `a` must be 1 there.

    **Arguments:**

    - `n`: the dimension.
    - `a`: the constant a of `rosenbrock`.

    **Returns:**

    The minimiser, `(a, a²)` for n = 2 and `(1, ..., 1)` otherwise.
    """
    if n > 2 and a != 1.0:
        raise ValueError("The closed-form minimum for n > 2 is known for a = 1 only.")
    if n == 2:
        return jnp.array([a, a**2])
    return jnp.ones(n)
