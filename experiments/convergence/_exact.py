"""Forward SGD on the quadratic problem in expectation, with no sampling.

With e_k = θ_k − c̄, the stochastic gradient is (a·v)v with a = He + ξ_i
(ξ_i = H(c̄ − c_i), E ξ = 0). Its second moment E[(a·v)² vvᵀ] comes from
`Moments.quartic` (`experiments._moments`), so M_k = E[e_k e_kᵀ] follows the
linear recursion

    M' = M − α(MH + HM) + α²·Q(HMH + Σ_ξ),  Q(S) = tr(S)·I + 2S + (κ − 3) diag(S),

and E‖∇f(θ_k)‖² = tr(H M_k H).
"""

import numpy as np

from .._moments import moments
from ._problems import Problem
from ._theorem import TANGENTS


def _next_moment(moment, hessian, noise, alpha, tangents: str):
    """One step of the recursion M -> M'."""
    quartic = moments(TANGENTS[tangents]).quartic(hessian @ moment @ hessian + noise)
    return moment - alpha * (moment @ hessian + hessian @ moment) + alpha**2 * quartic


def exact_quadratic_moments(problem: Problem, tangents: str, alphas, steps):
    """E‖∇f(θ_k)‖² exactly (float64) for k < `steps`, one column per α; `inf` from
    the step where it passes 1e30."""
    hessian = problem.constants["hessian"]
    noise = problem.constants["noise_covariance"]
    error0 = problem.theta0 - problem.constants["centre"]
    out = np.empty((steps, len(alphas)))
    for j, alpha in enumerate(alphas):
        moment = np.outer(error0, error0)
        for k in range(steps):
            out[k, j] = np.trace(hessian @ moment @ hessian)
            if not np.isfinite(out[k, j]) or out[k, j] > 1e30:
                out[k:, j] = np.inf
                break
            moment = _next_moment(moment, hessian, noise, alpha, tangents)
    return out


def _moment_map(problem: Problem, tangents: str, alpha: float):
    """The recursion M' = Lin(M) + α²·Q(Σ_ξ) as the matrix of Lin acting on vec(M)
    and the constant vec(α²·Q(Σ_ξ))."""
    hessian = problem.constants["hessian"]
    n = problem.n
    zero_noise = np.zeros((n, n))
    columns = []
    for index in range(n * n):
        moment = np.zeros(n * n)
        moment[index] = 1.0
        image = _next_moment(moment.reshape(n, n), hessian, zero_noise, alpha, tangents)
        columns.append(image.reshape(-1))
    quartic = moments(TANGENTS[tangents]).quartic
    constant = alpha**2 * quartic(problem.constants["noise_covariance"])
    return np.stack(columns, axis=1), constant.reshape(-1)


def quadratic_stability_threshold(problem: Problem, tangents: str) -> float:
    """The largest α for which E‖θ_k − c̄‖² stays bounded on the quadratic: the
    spectral radius of the linear part of the moment recursion crosses 1
    (bisection on a log scale)."""

    def stable(alpha):
        linear, _ = _moment_map(problem, tangents, alpha)
        return np.max(np.abs(np.linalg.eigvals(linear))) < 1.0

    low, high = 1e-6, 10.0
    for _ in range(40):
        middle = np.sqrt(low * high)
        low, high = (middle, high) if stable(middle) else (low, middle)
    return float(low)


def quadratic_stationary(problem: Problem, tangents: str, alpha: float) -> float:
    """lim_k E‖∇f(θ_k)‖² on the quadratic (exact): tr(H M* H) with M* the fixed
    point of the moment recursion, for α below the stability threshold."""
    linear, constant = _moment_map(problem, tangents, alpha)
    fixed = np.linalg.solve(np.eye(linear.shape[0]) - linear, constant)
    hessian = problem.constants["hessian"]
    moment = fixed.reshape(problem.n, problem.n)
    return float(np.trace(hessian @ moment @ hessian))
