"""Figure 1 of "Gradients with or without Backpropagation" on Beale's function, and
beyond it: error of the mean of K forward gradients against K, and descent
trajectories.

    python -m experiments.beale [--quick] [--out DIR] [--seed S]

Writes to `results/beale/` (or `--out`):

- `beale_arrows.png`: contours of Beale's function, the minimum (3, 0.5) as a
  star, and at the paper's point (1.5, -0.1) the descent direction -∇f (blue) and
  minus the mean of K Gaussian forward gradients (red), one panel per K in 5, 10,
  100. Every arrow is multiplied by the same factor (chosen so that the blue arrow
  has length `ARROW_LENGTH` in the plot's units), so a red arrow longer than the
  blue one is a forward-gradient mean of larger norm.
- `beale_error_vs_k.png`: relative error ‖ḡ_K − ∇f‖/‖∇f‖ and cosine similarity
  of ḡ_K (the mean of K forward gradients) against K = 1 … 1000, mean ± std over
  repetitions, Gaussian and Rademacher tangents, with the exact root-mean-square
  theory √((n+1)/K) (Gaussian) and √((n−1)/K) (Rademacher), n = 2.
- `beale_trajectories.png`: gradient descent against forward-gradient descent
  (same start, same step size, several seeds) on Beale and on 2-D Rosenbrock.
- `beale.json`: every number behind the figures.
"""

import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm

import fwdeqx
from fwdeqx.testfns import BEALE_MINIMUM, BEALE_PAPER_POINT, beale, rosenbrock

from ._theory import finish, log_grid, master_key, parse_args, save_figure


NAME = "beale"
ARROW_KS = (5, 10, 100)
ARROW_LENGTH = 1.0
"""Length, in plot units, of the blue -∇f arrow; every arrow uses the same scale."""
WINDOW = ((-0.5, 4.5), (-1.5, 1.5))
TANGENTS = {"gaussian": fwdeqx.Gaussian(), "rademacher": fwdeqx.Rademacher()}


def mean_forward_gradient(fun, point, key, *, tangents, num_tangents):
    """ḡ_K = (1/K) Σ_k (∇f·v_k) v_k, from the library's forward gradient."""
    grad = fwdeqx.filter_fwd_grad(fun, tangents=tangents, num_tangents=num_tangents)
    return grad(point, key=key)


def error_statistics(fun, point, key, *, tangents, ks, repetitions):
    """Relative error and cosine similarity of ḡ_K, shape (repetitions, len(ks)).

    Each repetition draws max(ks) independent single-tangent forward gradients with
    the library (vectorised over keys) and ḡ_K is the mean of the first K of them:
    the same distribution as `num_tangents=K`, with one compilation for all K (the
    K of one repetition are nested, so the columns are correlated, each is exact).
    """
    true = jax.jit(jax.grad(fun))(point)
    grad = fwdeqx.filter_fwd_grad(fun, tangents=tangents)
    counts = jnp.asarray(ks)

    def one_repetition(key_):
        samples = jax.vmap(lambda k: grad(point, key=k))(
            jax.random.split(key_, max(ks))
        )
        prefix_means = (jnp.cumsum(samples, axis=0)[counts - 1]) / counts[
            :, None
        ].astype(samples.dtype)
        errors = prefix_means - true[None, :]
        true_norm = jnp.linalg.norm(true)
        relative_error = jnp.linalg.norm(errors, axis=1) / true_norm
        cosine = (prefix_means @ true) / (
            jnp.linalg.norm(prefix_means, axis=1) * true_norm
        )
        return relative_error, cosine

    keys = jax.random.split(key, repetitions)
    relative_error, cosine = jax.jit(jax.vmap(one_repetition))(keys)
    return np.asarray(relative_error), np.asarray(cosine)


def arrows_experiment(key, point):
    true = np.asarray(jax.jit(jax.grad(beale))(point))
    keys = jax.random.split(key, len(ARROW_KS))

    @jax.jit
    def all_means(p, keys_):
        return [
            mean_forward_gradient(
                beale, p, key_k, tangents=fwdeqx.Gaussian(), num_tangents=k
            )
            for k, key_k in zip(ARROW_KS, keys_, strict=True)
        ]

    means = {
        k: np.asarray(m) for k, m in zip(ARROW_KS, all_means(point, keys), strict=True)
    }
    return true, means


def plot_arrows(point, true, means):
    scale = ARROW_LENGTH / np.linalg.norm(true)
    (x_lo, x_hi), (y_lo, y_hi) = WINDOW
    xs, ys = np.meshgrid(np.linspace(x_lo, x_hi, 300), np.linspace(y_lo, y_hi, 200))
    grid = jnp.stack([jnp.asarray(xs.ravel()), jnp.asarray(ys.ravel())], axis=1)
    values = np.asarray(jax.jit(jax.vmap(beale))(grid.astype(jnp.float32)))
    values = values.reshape(xs.shape)
    fig, axes = plt.subplots(1, len(means), figsize=(5.2 * len(means), 4.2))
    for ax, (k, mean) in zip(axes, means.items(), strict=True):
        ax.contour(
            xs,
            ys,
            values + 1e-3,
            levels=np.geomspace(1e-2, 1e4, 25),
            norm=LogNorm(),
            cmap="viridis",
            linewidths=0.7,
        )
        ax.plot(*BEALE_MINIMUM, "*", color="gold", mec="k", ms=16, label="minimum")
        ax.plot(*np.asarray(point), "ko", ms=4)
        for vector, colour, label in (
            (-true, "tab:blue", "−∇f (true)"),
            (-mean, "tab:red", f"−mean of {k} forward gradients"),
        ):
            ax.annotate(
                "",
                xy=np.asarray(point) + scale * vector,
                xytext=np.asarray(point),
                arrowprops={"arrowstyle": "-|>", "color": colour, "lw": 2.2},
            )
            ax.plot([], [], color=colour, lw=2.2, label=label)
        cosine = float(mean @ true / (np.linalg.norm(mean) * np.linalg.norm(true)))
        ax.set_title(
            f"K = {k}: cos = {cosine:.3f}, "
            f"‖ḡ‖/‖∇f‖ = {np.linalg.norm(mean) / np.linalg.norm(true):.2f}"
        )
        ax.set_xlim(x_lo, x_hi)
        ax.set_ylim(y_lo, y_hi)
        ax.set_aspect("equal")
        ax.set_xlabel("x")
        ax.legend(loc="lower right", fontsize=8)
    axes[0].set_ylabel("y")
    fig.suptitle(
        "Beale at (1.5, −0.1): descent directions; all arrows share one scale "
        f"(blue arrow = {ARROW_LENGTH} unit, ‖∇f‖ = {np.linalg.norm(true):.2f})",
        fontsize=11,
    )
    return fig


def error_vs_k_experiment(key, point, ks, repetitions):
    results = {}
    for (name, tangents), key_t in zip(
        TANGENTS.items(), jax.random.split(key, len(TANGENTS)), strict=True
    ):
        relative_error, cosine = error_statistics(
            beale, point, key_t, tangents=tangents, ks=ks, repetitions=repetitions
        )
        results[name] = [
            {
                "K": k,
                "relative_error_mean": float(relative_error[:, j].mean()),
                "relative_error_std": float(relative_error[:, j].std()),
                "relative_error_rms": float(
                    np.sqrt(np.mean(relative_error[:, j] ** 2))
                ),
                "cosine_mean": float(cosine[:, j].mean()),
                "cosine_std": float(cosine[:, j].std()),
            }
            for j, k in enumerate(ks)
        ]
    return results


def theory_rms(name, n, k):
    """√(E‖ḡ_K − ∇f‖²)/‖∇f‖: (n+1)/K for Gaussian, (n−1)/K for Rademacher."""
    return np.sqrt((n + 1 if name == "gaussian" else n - 1) / np.asarray(k))


def plot_error_vs_k(results, n, repetitions):
    fig, (ax_err, ax_cos) = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = {"gaussian": "tab:red", "rademacher": "tab:purple"}
    for name, rows in results.items():
        ks = np.array([row["K"] for row in rows])
        mean = np.array([row["relative_error_mean"] for row in rows])
        std = np.array([row["relative_error_std"] for row in rows])
        rms = np.array([row["relative_error_rms"] for row in rows])
        colour = colours[name]
        ax_err.plot(ks, mean, "-", color=colour, label=f"{name}: mean ± std")
        ax_err.fill_between(
            ks, np.maximum(mean - std, 1e-3), mean + std, color=colour, alpha=0.2
        )
        ax_err.plot(ks, rms, "o", color=colour, ms=4, label=f"{name}: RMS (measured)")
        ax_err.plot(
            ks,
            theory_rms(name, n, ks),
            "--",
            color="k" if name == "gaussian" else "grey",
            label=f"{name}: theory RMS √(({n}{'+' if name == 'gaussian' else '−'}1)/K)",
        )
        cos_mean = np.array([row["cosine_mean"] for row in rows])
        cos_std = np.array([row["cosine_std"] for row in rows])
        ax_cos.plot(ks, cos_mean, "-", color=colour, label=f"{name}: mean ± std")
        ax_cos.fill_between(
            ks,
            cos_mean - cos_std,
            np.minimum(cos_mean + cos_std, 1.0),
            color=colour,
            alpha=0.2,
        )
    ax_err.set_xscale("log")
    ax_err.set_yscale("log")
    ax_err.set_xlabel("K (tangents averaged)")
    ax_err.set_ylabel("‖ḡ_K − ∇f‖ / ‖∇f‖")
    ax_err.set_title(f"Relative error at (1.5, −0.1), {repetitions} repetitions per K")
    ax_err.legend(fontsize=8)
    ax_cos.set_xscale("log")
    ax_cos.set_xlabel("K (tangents averaged)")
    ax_cos.set_ylabel("cos(ḡ_K, ∇f)")
    ax_cos.set_title("Cosine similarity")
    ax_cos.legend(fontsize=8)
    ax_cos.grid(alpha=0.3)
    ax_err.grid(alpha=0.3, which="both")
    return fig


def descend(fun, start, key, *, lr, steps, seeds):
    """Gradient descent, and forward-gradient descent (Gaussian, K = 1) for each of
    `seeds` keys, with the same step size: returns the paths, shape (steps+1, 2) and
    (seeds, steps+1, 2)."""
    forward = fwdeqx.filter_fwd_grad(fun)
    exact = jax.grad(fun)

    def run(gradient):
        def step(point, key_):
            new = point - lr * gradient(point, key_)
            return new, new

        return step

    @jax.jit
    def gd_path(point):
        keys = jax.random.split(jax.random.key(0), steps)
        _, path = jax.lax.scan(run(lambda p, _: exact(p)), point, keys)
        return jnp.concatenate([point[None, :], path])

    @jax.jit
    def fgd_path(point, key_):
        keys = jax.random.split(key_, steps)
        _, path = jax.lax.scan(run(lambda p, k: forward(p, key=k)), point, keys)
        return jnp.concatenate([point[None, :], path])

    keys = jax.random.split(key, seeds)
    fgd = jax.jit(jax.vmap(fgd_path, in_axes=(None, 0)))(start, keys)
    return np.asarray(gd_path(start)), np.asarray(fgd)


TRAJECTORY_PROBLEMS = {
    # name: (function, start, step size, window, minimum)
    "beale": (beale, (1.0, 1.4), 3e-3, ((-0.5, 4.0), (-1.0, 2.0)), BEALE_MINIMUM),
    "rosenbrock": (
        rosenbrock,
        (-1.2, 1.0),
        5e-4,
        ((-2.0, 2.0), (-1.0, 3.0)),
        (1.0, 1.0),
    ),
}


def trajectories_experiment(key, steps, seeds):
    results = {}
    for (name, (fun, start, lr, _, minimum)), key_p in zip(
        TRAJECTORY_PROBLEMS.items(),
        jax.random.split(key, len(TRAJECTORY_PROBLEMS)),
        strict=True,
    ):
        start_array = jnp.asarray(start, dtype=jnp.float32)
        gd, fgd = descend(fun, start_array, key_p, lr=lr, steps=steps, seeds=seeds)
        f_gd = np.asarray(jax.jit(jax.vmap(fun))(jnp.asarray(gd)))
        f_fgd = np.asarray(jax.jit(jax.vmap(jax.vmap(fun)))(jnp.asarray(fgd)))
        results[name] = {
            "start": list(start),
            "lr": lr,
            "steps": steps,
            "seeds": seeds,
            "minimum": list(minimum),
            "gd_path": gd,
            "fgd_paths": fgd,
            "gd_loss": f_gd,
            "fgd_loss": f_fgd,
        }
    return results


def plot_trajectories(results):
    fig, axes = plt.subplots(2, len(results), figsize=(6.2 * len(results), 9.5))
    for column, (name, result) in enumerate(results.items()):
        fun, _, _, ((x_lo, x_hi), (y_lo, y_hi)), minimum = TRAJECTORY_PROBLEMS[name]
        xs, ys = np.meshgrid(np.linspace(x_lo, x_hi, 300), np.linspace(y_lo, y_hi, 240))
        grid = jnp.asarray(np.stack([xs.ravel(), ys.ravel()], axis=1), jnp.float32)
        values = np.asarray(jax.jit(jax.vmap(fun))(grid)).reshape(xs.shape)
        ax = axes[0, column]
        ax.contour(
            xs,
            ys,
            values + 1e-3,
            levels=np.geomspace(1e-2, max(values.max(), 1.0), 25),
            norm=LogNorm(),
            cmap="viridis",
            linewidths=0.6,
        )
        for i, path in enumerate(result["fgd_paths"]):
            ax.plot(
                path[:, 0],
                path[:, 1],
                "-",
                color="tab:red",
                lw=0.8,
                alpha=0.6,
                label="forward-gradient descent (one line per seed)"
                if i == 0
                else None,
            )
        gd = result["gd_path"]
        ax.plot(
            gd[:, 0], gd[:, 1], "-", color="tab:blue", lw=2, label="gradient descent"
        )
        ax.plot(*result["start"], "ko", ms=6, label="start")
        ax.plot(*minimum, "*", color="gold", mec="k", ms=16, label="minimum")
        ax.set_xlim(x_lo, x_hi)
        ax.set_ylim(y_lo, y_hi)
        ax.set_title(
            f"{name}: {result['steps']} steps, step size {result['lr']}, "
            f"{result['seeds']} seeds"
        )
        ax.legend(fontsize=8, loc="best")
        ax_loss = axes[1, column]
        steps = np.arange(result["gd_loss"].shape[0])
        for i, loss in enumerate(result["fgd_loss"]):
            ax_loss.plot(
                steps,
                loss,
                color="tab:red",
                lw=0.7,
                alpha=0.5,
                label="forward-gradient descent" if i == 0 else None,
            )
        ax_loss.plot(steps, result["gd_loss"], color="tab:blue", lw=2, label="GD")
        ax_loss.set_yscale("log")
        ax_loss.set_xlabel("step")
        ax_loss.set_ylabel(f"{name}(θ_k)")
        ax_loss.legend(fontsize=8)
        ax_loss.grid(alpha=0.3, which="both")
    return fig


def summarise_trajectories(results):
    summary = {}
    for name, result in results.items():
        minimum = np.asarray(result["minimum"])
        fgd_final = result["fgd_paths"][:, -1, :]
        summary[name] = {
            key: result[key] for key in ("start", "lr", "steps", "seeds", "minimum")
        }
        summary[name].update(
            {
                "gd_final_point": result["gd_path"][-1],
                "gd_final_loss": float(result["gd_loss"][-1]),
                "gd_final_distance": float(
                    np.linalg.norm(result["gd_path"][-1] - minimum)
                ),
                "fgd_final_points": fgd_final,
                "fgd_final_loss": result["fgd_loss"][:, -1],
                "fgd_final_distance": np.linalg.norm(fgd_final - minimum, axis=1),
                "fgd_final_loss_median": float(np.median(result["fgd_loss"][:, -1])),
                "fgd_diverged_seeds": int(
                    np.sum(~np.isfinite(result["fgd_loss"][:, -1]))
                ),
                # Every 10th point of the paths, enough to redraw the figure.
                "gd_path_every_10": result["gd_path"][::10],
                "fgd_paths_every_10": result["fgd_paths"][:, ::10],
            }
        )
    return summary


def main(argv: Sequence[str] | None = None) -> dict:
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


if __name__ == "__main__":
    main()
