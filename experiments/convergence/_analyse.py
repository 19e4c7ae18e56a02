"""Measured E‖∇f(θ_k)‖² against Theorem 4's bound on an (α, t) grid, and the
late-time plateau against the exact stationary value."""

import numpy as np

from ._exact import quadratic_stability_threshold, quadratic_stationary
from ._problems import Problem
from ._theorem import ALPHA_MULTIPLIERS, alpha_sharp, bound, sharpened_bound


def prefix_min(values):
    """min_{k<t} values[k] for t = 1 … len(values), per column."""
    return np.minimum.accumulate(values, axis=0)


def analyse(problem, tangents, alphas, multipliers, measured, stderr, exact, t_grid):
    """One row per (α, t) with the measured min_{k<t} E‖∇f(θ_k)‖², the bound and
    their ratio (also from the mean + 3 standard errors, the average over k < t —
    what the proof actually bounds — and the exact expectation where known). Returns
    the rows and those where the theorem applies but the bound is exceeded."""
    curves = {
        "measured": prefix_min(measured),
        "upper": prefix_min(measured + 3 * stderr),
        "average": np.cumsum(measured, axis=0)
        / np.arange(1, measured.shape[0] + 1)[:, None],
        "exact": prefix_min(exact) if exact is not None else None,
    }
    sharp_limit = alpha_sharp(problem, tangents)
    rows, violations = [], []
    for j, (alpha, multiplier) in enumerate(zip(alphas, multipliers, strict=True)):
        for t in t_grid:
            row = _grid_row(problem, tangents, alpha, multiplier, t, curves, j)
            if alpha <= sharp_limit:
                sharp = float(sharpened_bound(problem, tangents, alpha, t))
                row["sharpened_bound"] = sharp
                row["ratio_sharpened"] = float(curves["measured"][t - 1, j] / sharp)
            rows.append(row)
            worst = max(row["ratio"], row.get("ratio_exact", 0.0))
            if row["theorem_applies"] and worst > 1.0:
                violations.append(row)
    return rows, violations


def _grid_row(problem, tangents, alpha, multiplier, t, curves, j) -> dict:
    b = float(bound(problem, tangents, alpha, t))
    row = {
        "alpha": float(alpha),
        "alpha_over_alpha_max": float(multiplier),
        "t": int(t),
        "theorem_applies": bool(multiplier <= 1.0),
        "bound": b,
        "measured": float(curves["measured"][t - 1, j]),
        "ratio": float(curves["measured"][t - 1, j] / b),
        "ratio_upper_3se": float(curves["upper"][t - 1, j] / b),
        "ratio_average_over_k": float(curves["average"][t - 1, j] / b),
    }
    if curves["exact"] is not None:
        row["exact"] = float(curves["exact"][t - 1, j])
        row["ratio_exact"] = float(curves["exact"][t - 1, j] / b)
    return row


def stationary_curve(problem: Problem, tangents: str, alpha_max: float) -> dict:
    """Exact lim_k E‖∇f(θ_k)‖² on a grid of α from α_max/64 up to 0.95 × the
    stability threshold."""
    limit = quadratic_stability_threshold(problem, tangents)
    alphas = np.geomspace(ALPHA_MULTIPLIERS[0] * alpha_max, 0.95 * limit, 40)
    return {
        "alpha": alphas,
        "value": [quadratic_stationary(problem, tangents, a) for a in alphas],
    }


def plateau(problem: Problem, alphas, measured, exact, steps) -> list[dict]:
    """Late-time E‖∇f‖²: mean over the last quarter of the run (only where
    α·μ·steps > 8, i.e. the transient has decayed by e⁻⁸·…), and the exact
    stationary value for the quadratic (the recursion run long enough)."""
    tail = measured[3 * steps // 4 :]
    out = []
    for j, alpha in enumerate(alphas):
        last = float(measured[-1, j])
        diverged = not np.isfinite(last) or last > 1e3 * measured[0, j]
        converged = alpha * problem.strong_convexity * steps > 8 and not diverged
        entry = {
            "alpha": float(alpha),
            "converged": bool(converged),
            "diverged": bool(diverged),
            "last_iterate": last if np.isfinite(last) else "inf",
            "measured": float(tail[:, j].mean()) if converged else None,
        }
        if exact is not None:
            entry["exact"] = (
                float(exact[3 * steps // 4 :, j].mean()) if converged else None
            )
        out.append(entry)
    return out


def diverged_multipliers(entry: dict) -> list[float]:
    """The α/α_max whose runs diverged, from a `run_problem` entry."""
    return [
        mult
        for mult, point in zip(
            entry["alpha_multipliers"], entry["plateau"], strict=True
        )
        if point["diverged"]
    ]
