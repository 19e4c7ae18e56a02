"""Figure 1 of "Gradients with or without Backpropagation" on Beale's function, and
beyond it: error of the mean of K forward gradients against K, and descent
trajectories.

    python -m experiments.beale [--quick] [--out DIR] [--seed S]

Writes to `results/beale/` (or `--out`), one file of this package per figure:

- `beale_arrows.png` (`_arrows.py`): contours of Beale's function, the minimum
  (3, 0.5) as a star, and at the paper's point (1.5, -0.1) the descent direction
  -∇f (blue) and minus the mean of K Gaussian forward gradients (red), one panel
  per K in 5, 10, 100. Every arrow is multiplied by the same factor (chosen so that
  the blue arrow has length `ARROW_LENGTH` in the plot's units), so a red arrow
  longer than the blue one is a forward-gradient mean of larger norm.
- `beale_error_vs_k.png` (`_error_vs_k.py`): relative error ‖ḡ_K − ∇f‖/‖∇f‖ and
  cosine similarity of ḡ_K (the mean of K forward gradients) against K = 1 … 1000,
  mean ± std over repetitions, Gaussian and Rademacher tangents, with the exact
  root-mean-square theory √((n+1)/K) (Gaussian) and √((n−1)/K) (Rademacher), n = 2.
- `beale_trajectories.png` (`_trajectories.py`): gradient descent against
  forward-gradient descent (same start, same step size, several seeds) on Beale and
  on 2-D Rosenbrock.
- `beale.json`: every number behind the figures.
"""

import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fwdeqx.testfns import BEALE_PAPER_POINT

from .._theory import finish, log_grid, master_key, parse_args, save_figure
from ._arrows import ARROW_LENGTH, arrows_experiment, plot_arrows
from ._error_vs_k import (
    TANGENTS as TANGENTS,
    error_vs_k_experiment,
    plot_error_vs_k,
    theory_rms,
)
from ._trajectories import (
    plot_trajectories,
    summarise_trajectories,
    trajectories_experiment,
)


NAME = "beale"


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the three parts, write the figures and `beale.json`, return the record."""
    args = parse_args(NAME, __doc__.split("\n\n")[0], argv)
    started = time.perf_counter()
    key_arrows, key_k, key_traj = jax.random.split(master_key(args.seed), 3)
    point = jnp.asarray(BEALE_PAPER_POINT, dtype=jnp.float32)
    n = int(point.shape[0])

    true, means = arrows_experiment(key_arrows, point)
    figures = [
        save_figure(plot_arrows(point, true, means), args.out, "beale_arrows.png")
    ]

    ks = log_grid(1, 100 if args.quick else 1000, 8 if args.quick else 25)
    repetitions = 200 if args.quick else 4000
    errors = error_vs_k_experiment(key_k, point, ks, repetitions)
    figures.append(
        save_figure(
            plot_error_vs_k(errors, n, repetitions), args.out, "beale_error_vs_k.png"
        )
    )
    for name, rows in errors.items():
        for row in rows:
            row["relative_error_rms_theory"] = float(theory_rms(name, n, row["K"]))

    steps, seeds = (300, 3) if args.quick else (5000, 8)
    trajectories = trajectories_experiment(key_traj, steps, seeds)
    figures.append(
        save_figure(plot_trajectories(trajectories), args.out, "beale_trajectories.png")
    )

    results = {
        "point": np.asarray(point),
        "n": n,
        "true_gradient": true,
        "arrows": {
            "what": (
                "descent directions at the point: blue = -∇f, red = -(1/K) Σ_k "
                "(∇f·v_k) v_k with v_k ~ N(0, I); every arrow is the vector times "
                f"{ARROW_LENGTH}/‖∇f‖ (one scale for all panels)"
            ),
            "arrow_scale": ARROW_LENGTH / float(np.linalg.norm(true)),
            "mean_forward_gradients": {str(k): v for k, v in means.items()},
            "cosine": {
                str(k): float(v @ true / (np.linalg.norm(v) * np.linalg.norm(true)))
                for k, v in means.items()
            },
        },
        "error_vs_k": {
            "what": (
                "for each K and tangent distribution, `repetitions` independent "
                "means ḡ_K of K forward gradients at the point; relative_error = "
                "‖ḡ_K − ∇f‖/‖∇f‖ (mean, std and root-mean-square over repetitions), "
                "cosine = cos(ḡ_K, ∇f). Theory (exact): RMS = √((n+1)/K) Gaussian, "
                "√((n−1)/K) Rademacher. For Rademacher in 2-D, ḡ_K − ∇f = s̄·(∂_y f, "
                "∂_x f) with s̄ the mean of K independent signs v_1 v_2, so the "
                "relative error is exactly |s̄| (= 1 for K = 1, zero spread)."
            ),
            "repetitions": repetitions,
            "results": errors,
        },
        "trajectories": summarise_trajectories(trajectories),
    }
    return finish(args.out, NAME, args, started, figures, results)
