"""Figure 1: at the paper's point, the descent direction −∇f against minus the mean
of K Gaussian forward gradients, on the contours of Beale's function."""

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm

import fwdeqx
from fwdeqx.testfns import BEALE_MINIMUM, beale


ARROW_KS = (5, 10, 100)
ARROW_LENGTH = 1.0
"""Length, in plot units, of the blue -∇f arrow; every arrow uses the same scale."""
WINDOW = ((-0.5, 4.5), (-1.5, 1.5))


def mean_forward_gradient(fun, point, key, *, tangents, num_tangents):
    """ḡ_K = (1/K) Σ_k (∇f·v_k) v_k, from the library's forward gradient."""
    grad = fwdeqx.filter_fwd_grad(fun, tangents=tangents, num_tangents=num_tangents)
    return grad(point, key=key)


def arrows_experiment(key, point):
    """∇f at `point` and the mean of K Gaussian forward gradients for each K in
    `ARROW_KS`."""
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
    """One panel per K: contours, −∇f (blue) and −ḡ_K (red), on one scale."""
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
