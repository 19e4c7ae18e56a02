"""Theorem 4 of "Gradients with or without Backpropagation" (appendix B), checked
numerically.

    python -m experiments.convergence [--quick] [--out DIR] [--seed S]

The theorem: forward SGD θ_{k+1} = θ_k − α g_k on f = (1/m) Σ_i f_i, with
g_k = (∇f_{i_k}(θ_k)·v_k) v_k, i_k uniform on {1..m} (one index per step, drawn
independently of everything else) and v_k a fresh tangent, satisfies for a
constant step α ≤ 1/(2·L·C1) and every t ≥ 1

    min_{k<t} E‖∇f(θ_k)‖² ≤ 2(f(θ_0) − f*)/(αt) + 2·L·C1·σ²·α,

with L the Lipschitz constant of ∇f, σ² ≥ E_i‖∇f_i(θ) − ∇f(θ)‖² for all θ, and
C1 = E‖v‖⁴ = n(n+2) (Gaussian v ∈ R^n) or n² (Rademacher). E is over the whole
history (all i_j and v_j); here it is the average over `seeds` independent runs
(vectorised with `jax.vmap`), taken at every k, and the minimum over k < t is taken
of that average. For the quadratic problem E is also computed exactly by the
second-moment recursion, with no sampling at all.

The package, one layer per file:

| file | what |
|---|---|
| `_problems.py` | the quadratic and logistic problems and their constants |
| `_theorem.py` | the bound, C1 and the step-size limits (from `experiments._moments`) |
| `_exact.py` | the exact second-moment recursion on the quadratic |
| `_simulate.py` | forward SGD over step sizes and seeds in one compiled scan |
| `_analyse.py`, `_run.py` | measured against the bound, per problem |
| `_plots.py` | the figures |

Writes `convergence_curves.png` (measured min_k E‖∇f‖² and the bound against t, per
α), `convergence_ratio.png` (measured against bound, every grid point),
`convergence_plateau.png` (the late-time E‖∇f‖² against α), and
`convergence_transient.png` (min_k E‖∇f‖² against αt), and `convergence.json`.
"""

import sys
import time
from collections.abc import Sequence

import jax

from .._theory import finish, log_grid, master_key, parse_args, save_figure
from ._exact import exact_quadratic_moments as exact_quadratic_moments
from ._plots import plot_curves, plot_plateau, plot_ratio, plot_transient
from ._problems import (
    Problem as Problem,
    make_logistic as make_logistic,
    make_quadratic as make_quadratic,
)
from ._run import run_problem as run_problem
from ._simulate import simulate as simulate
from ._theorem import TANGENTS as TANGENTS, bound as bound


NAME = "convergence"
WHAT = (
    "E = average over `seeds` independent runs (each with its own i_k ~ "
    "U{1..m}, one index per step, and tangents v_k); measured = min over "
    "k < t of that average of ‖∇f(θ_k)‖² (exact full gradient); ratio = "
    "measured / bound; ratio_upper_3se uses the average + 3 standard errors "
    "at every k; exact / ratio_exact (quadratic) use E computed by the "
    "second-moment recursion (no sampling); ratio_average_over_k uses the "
    "average over k < t instead of the minimum (what the proof bounds). "
    "theorem_applies: α ≤ "
    "1/(2·L·C1). sharpened_bound: the proof with (n+2) (n for Rademacher) in "
    "place of C1 and without the slack 2, valid for α ≤ 1/(L(n+2))."
)


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the experiment, write the figures and `convergence.json`, return the
    record."""
    args = parse_args(NAME, __doc__.split("\n\n")[0], argv)
    started = time.perf_counter()
    n, m = 10, 50
    seeds, steps = (48, 1000) if args.quick else (400, 10_000)
    t_grid = log_grid(1, steps, 12 if args.quick else 30)
    key_q, key_l, key_run = jax.random.split(master_key(args.seed), 3)
    problems = [make_quadratic(key_q, n, m), make_logistic(key_l, n, 2 * m)]
    results = {}
    violations = []
    for problem, key_p in zip(
        problems, jax.random.split(key_run, len(problems)), strict=True
    ):
        results[problem.name], found = run_problem(
            problem, key_p, seeds=seeds, steps=steps, t_grid=t_grid
        )
        violations += found
    if violations:
        _warn(violations)
    figures = [
        save_figure(plot_curves(problems, results), args.out, "convergence_curves.png"),
        save_figure(plot_ratio(problems, results), args.out, "convergence_ratio.png"),
        save_figure(
            plot_plateau(problems, results), args.out, "convergence_plateau.png"
        ),
        save_figure(
            plot_transient(problems, results), args.out, "convergence_transient.png"
        ),
    ]
    record = {
        "what": WHAT,
        "seeds": seeds,
        "steps": steps,
        "problems": {p.name: _constants(p) for p in problems},
        "violations": violations,
        "results": results,
    }
    return finish(args.out, NAME, args, started, figures, record)


def _warn(violations: list[dict]) -> None:
    message = (
        f"!!! THEOREM 4 BOUND EXCEEDED at {len(violations)} grid points where it "
        "should hold (α ≤ 1/(2·L·C1)): a bug or a counterexample. First: "
        f"{violations[0]}"
    )
    print(message)
    print(message, file=sys.stderr)


def _constants(problem: Problem) -> dict:
    """A problem's constants for the JSON (without the matrices)."""
    return {
        "n": problem.n,
        "m": problem.m,
        "L": problem.lipschitz,
        "sigma2": problem.sigma2,
        "f0_minus_fstar": problem.f0_minus_fstar,
        "strong_convexity": problem.strong_convexity,
        "sampling": "i_k uniform on {1..m}, one index per step, with replacement",
        **{
            k: v
            for k, v in problem.constants.items()
            if k not in ("hessian", "noise_covariance", "centre")
        },
    }
