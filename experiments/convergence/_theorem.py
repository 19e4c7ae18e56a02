"""Theorem 4's bound and the constants it takes from the tangent distribution.

min_{k<t} E‖∇f(θ_k)‖² ≤ 2(f(θ_0) − f*)/(αt) + 2·L·C1·σ²·α,  α ≤ 1/(2·L·C1).
"""

import fwdeqx

from .._moments import moments
from ._problems import Problem


TANGENTS = {"gaussian": fwdeqx.Gaussian(), "rademacher": fwdeqx.Rademacher()}
ALPHA_MULTIPLIERS = (1 / 64, 1 / 16, 1 / 4, 1.0, 2.0, 8.0, 32.0, 128.0)
"""α = multiplier × 1/(2·L·C1): up to 1 the theorem applies, beyond it does not."""


def fourth_moment(tangents: str, n: int) -> float:
    """C1 = E‖v‖⁴: n(n+2) for Gaussian, n² for Rademacher."""
    return float(moments(TANGENTS[tangents]).norm_fourth_moment(n))


def second_moment_factor(tangents: str, n: int) -> float:
    """E_v[(a·v)²‖v‖²]/‖a‖²: n+2 Gaussian, n Rademacher (C1 bounds it by ‖v‖² ≤ …)."""
    return float(moments(TANGENTS[tangents]).second_moment(n))


def alpha_max(problem: Problem, tangents: str) -> float:
    """The largest step size the theorem covers, 1/(2·L·C1)."""
    return 1 / (2 * problem.lipschitz * fourth_moment(tangents, problem.n))


def alpha_sharp(problem: Problem, tangents: str) -> float:
    """The largest step size `sharpened_bound` covers, 1/(L·(n+2)) (or 1/(L·n))."""
    return 1 / (problem.lipschitz * second_moment_factor(tangents, problem.n))


def bound(problem: Problem, tangents: str, alpha, t):
    """2(f(θ_0) − f*)/(αt) + 2·L·C1·σ²·α."""
    c1 = fourth_moment(tangents, problem.n)
    return 2 * problem.f0_minus_fstar / (alpha * t) + 2 * problem.lipschitz * c1 * (
        problem.sigma2 * alpha
    )


def sharpened_bound(problem: Problem, tangents: str, alpha, t):
    """The same proof with E_v[(a·v)²‖v‖²] = (n+2)‖a‖² (n for Rademacher) in place of
    C1‖a‖² and without the slack factor 2: valid for α ≤ 1/(L·(n+2)) (or 1/(L·n))."""
    factor = second_moment_factor(tangents, problem.n)
    return 2 * problem.f0_minus_fstar / (alpha * t) + problem.lipschitz * factor * (
        problem.sigma2 * alpha
    )
