"""Theorem 1 (unbiasedness) and the second moment of forward gradients, measured for n
across several orders of magnitude.

    python -m experiments.unbiasedness [--quick] [--out DIR] [--seed S]

Two problems, each at n ≈ 10, 100, 1000, 10000 parameters (10 with `--quick`):

- `quadratic`: f(x) = ½ Σ_i λ_i (x_i − c_i)² + ½ ‖B(x − c)‖²/8, λ_i ~ U(0.5, 2), B a
  8 × n Gaussian matrix, at a random point;
- `mlp`: the mean squared error of `eqx.nn.MLP(4 → width → 1, depth 1, tanh)` on 16
  random inputs with targets from a random teacher (n = 6·width + 1 parameters).

For each problem, n and tangent distribution (Gaussian, Rademacher, and
`fwdeqx.Scaled(fwdeqx.Gaussian(), 2.0)`, which violates Cov[v] = I), R independent
replicates each draw N_max single-tangent forward gradients g_j with
`fwdeqx.filter_fwd_grad` (vectorised over keys), and record for every N ≤ N_max the
relative error ‖ḡ_N − ∇f‖/‖∇f‖ of the running mean ḡ_N, and for every sample
‖g_j‖²/‖∇f‖².

Writes `unbiasedness_rate.png` (relative error against N with the exact RMS theory
√((n+1)/N) Gaussian, √((n−1)/N) Rademacher), `unbiasedness_second_moment.png`
(E‖g‖²/‖∇f‖² against the theory n+2 Gaussian, n Rademacher, with 95% confidence
intervals), `unbiasedness_scaled_bias.png` (the scaled distribution: ḡ_N converges
to 4∇f, not ∇f) and `unbiasedness.json`.
"""

import time
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from jax.flatten_util import ravel_pytree

import fwdeqx

from .._moments import moments
from .._theory import finish, log_grid, master_key, mean_ci, parse_args, save_figure


NAME = "unbiasedness"
SCALE = 2.0
TANGENTS = {
    "gaussian": fwdeqx.Gaussian(),
    "rademacher": fwdeqx.Rademacher(),
    "scaled_gaussian": fwdeqx.Scaled(fwdeqx.Gaussian(), SCALE),
}
MLP_INPUTS = 4
MLP_BATCH = 16


def second_moment_theory(tangents: str, n: int) -> float:
    """E‖g‖²/‖∇f‖²: n+2 (Gaussian), n (Rademacher), scale⁴(n+2) (scaled Gaussian)."""
    return moments(TANGENTS[tangents]).second_moment(n)


def mean_theory(tangents: str) -> float:
    """E[g] = c ∇f with c = 1 when Cov[v] = I and c = scale² for the scaled one."""
    return moments(TANGENTS[tangents]).mean_factor


def rms_error_theory(tangents: str, n: int, num: np.ndarray) -> np.ndarray:
    """√(E‖ḡ_N − c∇f‖²)/‖c∇f‖ for N samples (exact): √((n+1)/N) for the (scaled)
    Gaussian, √((n−1)/N) for Rademacher."""
    excess = moments(TANGENTS[tangents]).relative_variance(n)
    return np.sqrt(excess / np.asarray(num, dtype=np.float64))


def make_quadratic(key, n):
    key_lam, key_c, key_b, key_x = jax.random.split(key, 4)
    lam = jax.random.uniform(key_lam, (n,), minval=0.5, maxval=2.0)
    centre = jax.random.normal(key_c, (n,))
    mixing = jax.random.normal(key_b, (8, n))

    def loss(x):
        diff = x - centre
        return 0.5 * jnp.sum(lam * diff**2) + 0.5 * jnp.sum((mixing @ diff) ** 2) / 8

    return loss, jax.random.normal(key_x, (n,))


def make_mlp(key, n):
    width = max(1, round((n - 1) / (MLP_INPUTS + 2)))
    key_model, key_teacher, key_x = jax.random.split(key, 3)
    model = eqx.nn.MLP(
        MLP_INPUTS, "scalar", width, depth=1, activation=jnp.tanh, key=key_model
    )
    inputs = jax.random.normal(key_x, (MLP_BATCH, MLP_INPUTS))
    targets = jnp.tanh(inputs @ jax.random.normal(key_teacher, (MLP_INPUTS,)))

    def loss(model_):
        return jnp.mean((jax.vmap(model_)(inputs) - targets) ** 2)

    return loss, model


PROBLEMS = {"quadratic": make_quadratic, "mlp": make_mlp}


def replicates_for(n: int, quick: bool) -> int:
    """Independent replicates R: fewer for the largest n, where each costs most."""
    if quick:
        return 8
    return 32 if n <= 1000 else 8


def monte_carlo(loss, params, key, *, replicates, chunks, chunk_size):
    """For every distribution in `TANGENTS` and `replicates` independent runs of
    N_max = chunks·chunk_size forward gradients: the relative error of the running
    mean ḡ_N to ∇f and to c∇f for every N, ‖g_j‖²/‖∇f‖² for every sample, and
    ⟨ḡ_{N_max}, ∇f⟩/‖∇f‖². One compiled program for all distributions."""
    true, _ = ravel_pytree(eqx.filter_grad(loss)(params))
    true_norm = jnp.linalg.norm(true)

    def run(grad, scaled_true, key_):
        def flat_sample(key_sample):
            return ravel_pytree(grad(params, key=key_sample))[0]

        def chunk(carry, inputs):
            running_sum, start = carry
            samples = jax.vmap(flat_sample)(inputs)
            sums = running_sum[None, :] + jnp.cumsum(samples, axis=0)
            counts = (start + jnp.arange(1, chunk_size + 1)).astype(true.dtype)
            means = sums / counts[:, None]
            to_true = jnp.linalg.norm(means - true[None, :], axis=1) / true_norm
            to_scaled = jnp.linalg.norm(means - scaled_true[None, :], axis=1) / (
                jnp.linalg.norm(scaled_true)
            )
            squared = jnp.sum(samples**2, axis=1) / true_norm**2
            return (sums[-1], start + chunk_size), (to_true, to_scaled, squared)

        keys = jax.random.split(key_, (chunks, chunk_size))
        init = (jnp.zeros_like(true), jnp.asarray(0, jnp.int32))
        (total, _), (to_true, to_scaled, squared) = jax.lax.scan(chunk, init, keys)
        projection = jnp.dot(total / (chunks * chunk_size), true) / true_norm**2
        return (
            to_true.reshape(-1),
            to_scaled.reshape(-1),
            squared.reshape(-1),
            projection,
        )

    def replicate(key_):
        keys = jax.random.split(key_, len(TANGENTS))
        return {
            name: run(
                fwdeqx.filter_fwd_grad(loss, tangents=tangents),
                jnp.asarray(mean_theory(name), true.dtype) * true,
                key_name,
            )
            for (name, tangents), key_name in zip(TANGENTS.items(), keys, strict=True)
        }

    keys = jax.random.split(key, replicates)
    outputs = jax.jit(jax.vmap(replicate))(keys)
    return {
        name: [np.asarray(x, dtype=np.float64) for x in values]
        for name, values in outputs.items()
    }


def summarise(name, n, to_true, to_scaled, squared, projection, checkpoints):
    """Per-checkpoint RMS over replicates with a 95% CI, and the moments."""
    index = np.asarray(checkpoints) - 1
    reference = to_scaled if name == "scaled_gaussian" else to_true
    mse, mse_half = mean_ci(reference[:, index] ** 2)
    rms = np.sqrt(mse)
    log_n = np.log(np.asarray(checkpoints, dtype=np.float64))
    fit = np.asarray(checkpoints) >= 10
    slope = float(np.polyfit(log_n[fit], np.log(rms[fit]), 1)[0])
    moment, moment_half = mean_ci(squared.reshape(-1))
    theory_moment = second_moment_theory(name, n)
    proj_mean, proj_half = mean_ci(projection)
    return {
        "n": n,
        "N": checkpoints,
        "relative_error_rms": rms,
        "relative_error_rms_ci95": [
            np.sqrt(np.maximum(mse - mse_half, 0.0)),
            np.sqrt(mse + mse_half),
        ],
        "relative_error_rms_theory": rms_error_theory(name, n, np.asarray(checkpoints)),
        "relative_error_to_grad_rms": np.sqrt(np.mean(to_true[:, index] ** 2, axis=0)),
        "fitted_slope_log_rms_vs_log_N": slope,
        "second_moment_ratio": float(moment),
        "second_moment_ratio_ci95": float(moment_half),
        "second_moment_theory": float(theory_moment),
        "second_moment_z": float(
            (moment - theory_moment) / (moment_half / 1.96 + 1e-300)
        ),
        "projection_on_grad": float(proj_mean),
        "projection_on_grad_ci95": float(proj_half),
        "projection_theory": mean_theory(name),
    }


def plot_rate(results, problems, sizes):
    names = ("gaussian", "rademacher")
    fig, axes = plt.subplots(
        len(problems),
        len(names),
        figsize=(12, 4.6 * len(problems)),
        squeeze=False,
        layout="constrained",
    )
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.85, len(sizes[problems[0]])))
    for row, problem in enumerate(problems):
        for col, name in enumerate(names):
            ax = axes[row, col]
            for colour, entry in zip(colours, results[problem][name], strict=True):
                num = np.asarray(entry["N"])
                low, high = entry["relative_error_rms_ci95"]
                ax.plot(num, entry["relative_error_rms"], color=colour, lw=1.6)
                ax.fill_between(num, low, high, color=colour, alpha=0.25)
                ax.plot(
                    num,
                    entry["relative_error_rms_theory"],
                    "--",
                    color=colour,
                    lw=1,
                    label=f"n = {entry['n']}",
                )
            ax.set(xscale="log", yscale="log")
            ax.grid(alpha=0.3, which="both")
            ax.set_xlabel("N (forward gradients averaged)")
            ax.set_ylabel("RMS of ‖ḡ_N − ∇f‖ / ‖∇f‖")
            excess = moments(TANGENTS[name]).relative_variance_text()
            ax.set_title(
                f"{problem}, {name}\nsolid: measured RMS (band: 95% CI), "
                f"dashed: √(({excess})/N)",
                fontsize=10,
            )
            ax.legend(fontsize=8, loc="lower left")
    return fig


def plot_second_moment(results, problems):
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    markers = {"quadratic": "o", "mlp": "s"}
    colours = {
        "gaussian": "tab:red",
        "rademacher": "tab:purple",
        "scaled_gaussian": "tab:orange",
    }
    shift = {"gaussian": 0.94, "rademacher": 1.0, "scaled_gaussian": 1.06}
    for problem in problems:
        for name, entries in results[problem].items():
            n = np.array([e["n"] for e in entries], dtype=np.float64)
            theory = np.array([e["second_moment_theory"] for e in entries])
            ratio = np.array([e["second_moment_ratio"] for e in entries]) / theory
            half = np.array([e["second_moment_ratio_ci95"] for e in entries]) / theory
            x = n * shift[name] * (1.03 if problem == "mlp" else 1 / 1.03)
            ax.errorbar(
                x,
                ratio,
                yerr=half,
                fmt=markers[problem],
                color=colours[name],
                capsize=3,
                label=f"{problem}, {name}",
            )
    ax.axhline(1.0, color="k", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("n (parameters)")
    ax.set_ylabel("measured E‖g‖²/‖∇f‖² ÷ theory")
    ax.set_title(
        "Second moment / theory (n+2 Gaussian, n Rademacher, 16(n+2) scaled), 95% CI",
        fontsize=10,
    )
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    return fig


def plot_scaled_bias(results, problems):
    fig, axes = plt.subplots(1, len(problems), figsize=(6 * len(problems), 4.3))
    axes = np.atleast_1d(axes)
    for ax, problem in zip(axes, problems, strict=True):
        # The n ≈ 100 entry (the only one with --quick).
        index = min(1, len(results[problem]["gaussian"]) - 1)
        gaussian = results[problem]["gaussian"][index]
        scaled = results[problem]["scaled_gaussian"][index]
        num = np.asarray(scaled["N"])
        ax.plot(
            num,
            gaussian["relative_error_to_grad_rms"],
            color="tab:red",
            label="Gaussian: ‖ḡ_N − ∇f‖/‖∇f‖",
        )
        ax.plot(
            num,
            scaled["relative_error_to_grad_rms"],
            color="tab:orange",
            label=f"Scaled(Gaussian, {SCALE}): ‖ḡ_N − ∇f‖/‖∇f‖",
        )
        ax.plot(
            num,
            scaled["relative_error_rms"],
            "--",
            color="tab:orange",
            label=f"Scaled: ‖ḡ_N − {SCALE**2:g}∇f‖/‖{SCALE**2:g}∇f‖",
        )
        ax.axhline(SCALE**2 - 1, color="grey", lw=1, ls=":", label="bias = 3‖∇f‖")
        ax.set(xscale="log", yscale="log")
        ax.grid(alpha=0.3, which="both")
        ax.set_xlabel("N")
        ax.set_ylabel("RMS relative error")
        ax.set_title(
            f"{problem}, n = {scaled['n']}: ⟨ḡ, ∇f⟩/‖∇f‖² = "
            f"{scaled['projection_on_grad']:.3f} ± "
            f"{scaled['projection_on_grad_ci95']:.3f}",
            fontsize=10,
        )
        ax.legend(fontsize=8)
    return fig


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(NAME, __doc__.split("\n\n")[0], argv)
    started = time.perf_counter()
    if args.quick:
        targets, chunks, chunk_size = (10,), 10, 50
    else:
        targets, chunks, chunk_size = (10, 100, 1000, 10_000), 100, 100
    n_max = chunks * chunk_size
    checkpoints = log_grid(1, n_max, 30)
    problems = list(PROBLEMS)
    results = {problem: {name: [] for name in TANGENTS} for problem in problems}
    sizes = {}
    key = master_key(args.seed)
    for problem in problems:
        sizes[problem] = []
        for target in targets:
            key, key_problem = jax.random.split(key)
            loss, params = PROBLEMS[problem](key_problem, target)
            n = int(ravel_pytree(eqx.filter(params, eqx.is_inexact_array))[0].size)
            sizes[problem].append(n)
            key, key_mc = jax.random.split(key)
            replicates = replicates_for(n, args.quick)
            outputs = monte_carlo(
                loss,
                params,
                key_mc,
                replicates=replicates,
                chunks=chunks,
                chunk_size=chunk_size,
            )
            for name in TANGENTS:
                entry = summarise(name, n, *outputs[name], checkpoints)
                results[problem][name].append(entry)
                print(
                    f"{problem:9s} n={n:6d} {name:15s} "
                    f"E‖g‖²/‖∇f‖² = {entry['second_moment_ratio']:.4g} ± "
                    f"{entry['second_moment_ratio_ci95']:.2g} "
                    f"(theory {entry['second_moment_theory']:.4g}), "
                    f"⟨ḡ,∇f⟩/‖∇f‖² = {entry['projection_on_grad']:.3f}, "
                    f"slope {entry['fitted_slope_log_rms_vs_log_N']:.3f}"
                )

    figures = [
        save_figure(
            plot_rate(results, problems, sizes), args.out, "unbiasedness_rate.png"
        ),
        save_figure(
            plot_second_moment(results, problems),
            args.out,
            "unbiasedness_second_moment.png",
        ),
        save_figure(
            plot_scaled_bias(results, problems),
            args.out,
            "unbiasedness_scaled_bias.png",
        ),
    ]
    record = {
        "what": (
            "For each problem, n and tangent distribution: `replicates` independent "
            "runs of N_max single-tangent forward gradients (fwdeqx.filter_fwd_grad); "
            "relative_error_rms[N] = √(mean over replicates of (‖ḡ_N − c∇f‖/‖c∇f‖)²) "
            "with c = 1 (c = 4 for scaled_gaussian), its 95% CI from the normal CI "
            "of the mean square, and the exact theory √((n±1)/N); "
            "relative_error_to_grad_rms uses c = 1 for every distribution. "
            "second_moment_ratio = mean of ‖g‖²/‖∇f‖² over all replicates × N_max "
            "samples (95% CI half-width, z-score against theory). "
            "projection_on_grad = ⟨ḡ_{N_max}, ∇f⟩/‖∇f‖² averaged over replicates "
            "(theory 1, or 4 for scaled_gaussian). The N of one replicate share "
            "samples (running mean), so the curve's points are correlated."
        ),
        "replicates": {
            problem: [replicates_for(n, args.quick) for n in sizes[problem]]
            for problem in problems
        },
        "N_max": n_max,
        "sizes": sizes,
        "results": results,
    }
    return finish(args.out, NAME, args, started, figures, record)
