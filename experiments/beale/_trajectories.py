"""Gradient descent against forward-gradient descent (same start, same step size,
several seeds) on Beale and on 2-D Rosenbrock."""

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm

import fwdeqx
from fwdeqx.testfns import BEALE_MINIMUM, beale, rosenbrock


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
    """Paths and losses of GD and forward-gradient descent per test function."""
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
    """Paths on the contours (top) and loss against step (bottom), per function."""
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
    """The JSON-ready numbers: final points, losses, distances to the minimum,
    diverged seeds, and every 10th point of the paths."""
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
