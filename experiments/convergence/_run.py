"""One problem end to end: simulate every tangent distribution and step size,
compute the exact expectation where it is known, and compare with the bound."""

import jax.numpy as jnp
import numpy as np

from .._theory import log_grid
from ._analyse import (
    analyse,
    diverged_multipliers,
    plateau,
    prefix_min,
    stationary_curve,
)
from ._exact import exact_quadratic_moments, quadratic_stability_threshold
from ._problems import Problem
from ._simulate import simulate
from ._theorem import ALPHA_MULTIPLIERS, TANGENTS, alpha_max, fourth_moment


def run_problem(problem: Problem, key, *, seeds, steps, t_grid):
    """Results per tangent distribution (name -> JSON-ready dict), and the grid
    points where the theorem applies but its bound is exceeded."""
    all_alphas = {
        name: np.asarray(ALPHA_MULTIPLIERS)
        / (2 * problem.lipschitz * fourth_moment(name, problem.n))
        for name in TANGENTS
    }
    settings = {
        name: (tangents, jnp.asarray(all_alphas[name], jnp.float32))
        for name, tangents in TANGENTS.items()
    }
    simulated = simulate(problem, settings, key, seeds=seeds, steps=steps)
    results, all_violations = {}, []
    for name in TANGENTS:
        results[name], violations = _summarise(
            problem, name, all_alphas[name], *simulated[name], steps, t_grid
        )
        all_violations += [
            {"problem": problem.name, "tangents": name, **v} for v in violations
        ]
        print(_describe(problem, name, results[name]))
    return results, all_violations


def _summarise(problem, name, alphas, measured, stderr, steps, t_grid):
    quadratic = problem.name == "quadratic"
    exact = exact_quadratic_moments(problem, name, alphas, steps) if quadratic else None
    rows, violations = analyse(
        problem, name, alphas, ALPHA_MULTIPLIERS, measured, stderr, exact, t_grid
    )
    applies = [r for r in rows if r["theorem_applies"]]
    beyond = [r for r in rows if not r["theorem_applies"] and r["ratio"] > 1.0]
    largest = alpha_max(problem, name)
    # Log-spaced t for the curves keeps the JSON small.
    curve_t = log_grid(1, steps, 150)
    curve_index = np.asarray(curve_t) - 1
    entry = {
        "C1": fourth_moment(name, problem.n),
        "alpha_max": largest,
        "stability_threshold": (
            quadratic_stability_threshold(problem, name) if quadratic else None
        ),
        "alphas": alphas,
        "alpha_multipliers": list(ALPHA_MULTIPLIERS),
        "grid": rows,
        "max_ratio_where_theorem_applies": max(r["ratio"] for r in applies),
        "max_average_ratio_where_theorem_applies": max(
            r["ratio_average_over_k"] for r in applies
        ),
        "max_sharpened_ratio": max(
            (r["ratio_sharpened"] for r in rows if "ratio_sharpened" in r),
            default=None,
        ),
        "max_exact_ratio_where_theorem_applies": (
            max(r["ratio_exact"] for r in applies) if exact is not None else None
        ),
        "first_alpha_multiplier_with_ratio_above_1": (
            min(r["alpha_over_alpha_max"] for r in beyond) if beyond else None
        ),
        "plateau": plateau(problem, alphas, measured, exact, steps),
        "stationary_exact": (
            stationary_curve(problem, name, largest) if quadratic else None
        ),
        "curves": {
            "t": curve_t,
            "min_measured": prefix_min(measured)[curve_index],
            "min_exact": (
                prefix_min(exact)[curve_index] if exact is not None else None
            ),
        },
    }
    return entry, violations


def _describe(problem: Problem, name: str, entry: dict) -> str:
    """One line for the console."""
    largest = entry["alpha_max"]
    line = (
        f"{problem.name:9s} {name:10s} α_max = {largest:.3g}: max measured/bound "
        f"where the theorem applies = {entry['max_ratio_where_theorem_applies']:.3g}"
    )
    if entry["max_exact_ratio_where_theorem_applies"] is not None:
        line += f" (exact {entry['max_exact_ratio_where_theorem_applies']:.3g})"
    line += (
        f"; first α/α_max with ratio > 1: "
        f"{entry['first_alpha_multiplier_with_ratio_above_1']}; "
        f"diverged at α/α_max = {diverged_multipliers(entry)}"
    )
    if entry["stability_threshold"] is not None:
        line += (
            f"; exact stability threshold α/α_max = "
            f"{entry['stability_threshold'] / largest:.3g}"
        )
    return line
