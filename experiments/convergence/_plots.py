"""The convergence experiment's figures: curves against the bound, the ratio at
every grid point, the plateau against α and the transient against αt."""

import matplotlib.pyplot as plt
import numpy as np

from ._theorem import TANGENTS, bound


def plot_curves(problems, results):
    """min_{k<t} E‖∇f(θ_k)‖² and the bound against t, one panel per problem and
    tangent distribution, one line per α."""
    panels = [(p, t) for p in problems for t in TANGENTS]
    fig, axes = plt.subplots(2, 2, figsize=(13, 10), layout="constrained")
    for ax, (problem, name) in zip(axes.ravel(), panels, strict=True):
        entry = results[problem.name][name]
        colours = plt.get_cmap("plasma")(np.linspace(0, 0.9, len(entry["alphas"])))
        t = np.asarray(entry["curves"]["t"])
        for j, (alpha, mult) in enumerate(
            zip(entry["alphas"], entry["alpha_multipliers"], strict=True)
        ):
            style = "-" if mult <= 1 else ":"
            ax.plot(
                t,
                np.asarray(entry["curves"]["min_measured"])[:, j],
                style,
                color=colours[j],
                lw=1.6,
                label=f"α = {mult:.3g}·α_max",
            )
            if mult <= 1:
                ax.plot(
                    t, bound(problem, name, alpha, t), "--", color=colours[j], lw=0.9
                )
        ax.set(xscale="log", yscale="log")
        ax.set_ylim(bottom=max(1e-4, ax.get_ylim()[0]))
        ax.set_xlabel("t")
        ax.set_ylabel("min_{k<t} E‖∇f(θ_k)‖²")
        ax.set_title(
            f"{problem.name}, {name} (n = {problem.n}, C1 = {entry['C1']:g})\n"
            "measured (solid; dotted beyond α_max), bound (dashed)",
            fontsize=9,
        )
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, ncol=2)
    return fig


def plot_ratio(problems, results):
    """Measured against bound at every (α, t) grid point."""
    fig, axes = plt.subplots(1, len(problems), figsize=(6.5 * len(problems), 5))
    markers = {"gaussian": "o", "rademacher": "s"}
    for ax, problem in zip(np.atleast_1d(axes), problems, strict=True):
        for name in TANGENTS:
            rows = results[problem.name][name]["grid"]
            for applies, filled in ((True, True), (False, False)):
                sel = [r for r in rows if r["theorem_applies"] == applies]
                ax.scatter(
                    [r["bound"] for r in sel],
                    [max(r["measured"], 1e-6) for r in sel],
                    marker=markers[name],
                    s=14,
                    facecolors=None if filled else "none",
                    edgecolors="tab:blue" if applies else "tab:red",
                    c="tab:blue" if filled else None,
                    label=f"{name}, α ≤ α_max" if applies else f"{name}, α > α_max",
                )
        ax.set(xscale="log", yscale="log")
        low, high = ax.get_xlim()
        bottom, top = ax.get_ylim()
        ax.plot([1e-6, 1e7], [1e-6, 1e7], "k-", lw=1, label="measured = bound")
        ax.set_xlim(low, high)
        ax.set_ylim(bottom, max(top, 2 * low))
        ax.set_xlabel("bound 2(f0 − f*)/(αt) + 2·L·C1·σ²·α")
        ax.set_ylabel("measured min_{k<t} E‖∇f(θ_k)‖²")
        ax.set_title(f"{problem.name}: every (α, t) grid point", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    return fig


def plot_plateau(problems, results):
    """The late-time E‖∇f‖² against α, with the exact stationary value and the
    stability limit on the quadratic."""
    fig, axes = plt.subplots(1, len(problems), figsize=(6.5 * len(problems), 4.8))
    colours = {"gaussian": "tab:red", "rademacher": "tab:purple"}
    for ax, problem in zip(np.atleast_1d(axes), problems, strict=True):
        for name in TANGENTS:
            entry = results[problem.name][name]
            points = [p for p in entry["plateau"] if p["converged"]]
            alphas = np.asarray([p["alpha"] for p in points])
            if len(points):
                measured = np.asarray([p["measured"] for p in points])
                ax.plot(
                    alphas,
                    measured,
                    "o",
                    color=colours[name],
                    label=f"{name}: measured",
                )
                if problem.name == "quadratic":
                    ax.plot(
                        alphas,
                        [p["exact"] for p in points],
                        "x",
                        color="k",
                        ms=8,
                        label=f"{name}: exact (recursion)"
                        if name == "gaussian"
                        else None,
                    )
            if entry["stationary_exact"] is not None:
                curve = entry["stationary_exact"]
                ax.plot(
                    curve["alpha"],
                    curve["value"],
                    "-",
                    color=colours[name],
                    lw=1.5,
                    label=f"{name}: exact stationary E‖∇f‖²",
                )
            grid = np.geomspace(min(entry["alphas"]), max(entry["alphas"]), 50)
            c1 = entry["C1"]
            ax.plot(
                grid,
                2 * problem.lipschitz * c1 * problem.sigma2 * grid,
                "--",
                color=colours[name],
                lw=1,
                label=f"{name}: bound term 2·L·C1·σ²·α",
            )
            ax.axvline(entry["alpha_max"], color=colours[name], lw=0.8, ls=":")
            diverged = [p["alpha"] for p in entry["plateau"] if p["diverged"]]
            if diverged:
                top = 2 * problem.lipschitz * c1 * problem.sigma2 * max(grid)
                ax.plot(
                    diverged,
                    [top] * len(diverged),
                    "v",
                    color=colours[name],
                    ms=9,
                    label=f"{name}: diverged (E‖∇f‖² → ∞)",
                )
            if entry["stability_threshold"] is not None:
                ax.axvline(
                    entry["stability_threshold"],
                    color=colours[name],
                    lw=1.2,
                    ls="-.",
                    label=f"{name}: exact stability limit",
                )
        ax.set(xscale="log", yscale="log")
        ax.set_xlabel("α (dotted: α_max = 1/(2·L·C1))")
        ax.set_ylabel("late-time E‖∇f(θ_k)‖²")
        ax.set_title(f"{problem.name}: plateau against α", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    return fig


def plot_transient(problems, results):
    """min_{k<t} E‖∇f(θ_k)‖² against αt (Gaussian tangents, α ≤ α_max)."""
    fig, axes = plt.subplots(1, len(problems), figsize=(6.5 * len(problems), 4.8))
    for ax, problem in zip(np.atleast_1d(axes), problems, strict=True):
        entry = results[problem.name]["gaussian"]
        t = np.asarray(entry["curves"]["t"], np.float64)
        colours = plt.get_cmap("plasma")(np.linspace(0, 0.9, len(entry["alphas"])))
        for j, (alpha, mult) in enumerate(
            zip(entry["alphas"], entry["alpha_multipliers"], strict=True)
        ):
            if mult > 1:
                continue
            ax.plot(
                alpha * t,
                np.asarray(entry["curves"]["min_measured"])[:, j],
                color=colours[j],
                label=f"α = {mult:g}·α_max",
            )
        at = np.geomspace(1e-3, max(entry["alphas"]) * t[-1], 50)
        ax.plot(at, 2 * problem.f0_minus_fstar / at, "k--", label="2(f0 − f*)/(αt)")
        ax.set(xscale="log", yscale="log")
        ax.set_ylim(bottom=1e-3)
        ax.set_xlabel("α·t")
        ax.set_ylabel("min_{k<t} E‖∇f(θ_k)‖²")
        ax.set_title(f"{problem.name}, Gaussian: transient against αt", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    return fig
