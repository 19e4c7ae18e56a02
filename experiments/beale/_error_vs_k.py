"""Error of the mean of K forward gradients against K, Gaussian and Rademacher, with
the exact root-mean-square theory √((n±1)/K) from `experiments._moments`."""

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import fwdeqx
from fwdeqx.testfns import beale

from .._moments import moments


TANGENTS = {"gaussian": fwdeqx.Gaussian(), "rademacher": fwdeqx.Rademacher()}


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


def error_vs_k_experiment(key, point, ks, repetitions):
    """Per distribution, one row per K: relative error (mean, std, RMS) and cosine
    (mean, std) over `repetitions`."""
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
    """√(E‖ḡ_K − ∇f‖²)/‖∇f‖ = √((n+1)/K) for Gaussian, √((n−1)/K) for Rademacher."""
    return np.sqrt(moments(TANGENTS[name]).relative_variance(n) / np.asarray(k))


def _theory_label(name: str, n: int) -> str:
    formula = moments(TANGENTS[name]).relative_variance_text().replace("n", str(n))
    return f"{name}: theory RMS √(({formula})/K)"


def plot_error_vs_k(results, n, repetitions):
    """Relative error and cosine against K, with the RMS theory."""
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
            label=_theory_label(name, n),
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
    ax_err.set(xscale="log", yscale="log")
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
