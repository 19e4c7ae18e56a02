"""Figures of the MNIST comparison, in the style of the paper's Figures 2-4: one
panel per optimizer, mean line over seeds with a min-max band, training loss (top)
and validation loss (bottom), against iterations or training wall time. Runs that
diverged end with a cross where they stopped."""

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from ..runner import save_figure
from ._summary import group_runs


_LINESTYLES = ("-", "--", ":", "-.")
_BACKPROP_COLOR = "black"


def _curves(
    group: list[dict], key: str, x_key: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """x (mean over seeds), mean, min, max of `key` over the records all seeds have."""
    length = min(len(run[key]) for run in group)
    if length == 0:
        return None
    values = np.array(
        [[np.nan if v is None else v for v in run[key][:length]] for run in group],
        dtype=float,
    )
    xs = np.array([run[x_key][:length] for run in group], dtype=float).mean(axis=0)
    return xs, np.nanmean(values, 0), np.nanmin(values, 0), np.nanmax(values, 0)


def _colors(estimators: list[str]) -> dict[str, Any]:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    forward = [e for e in estimators if e != "backprop"]
    colors = {e: cycle[i % len(cycle)] for i, e in enumerate(forward)}
    colors["backprop"] = _BACKPROP_COLOR
    return colors


def plot_losses(
    runs: list[dict[str, Any]],
    path: Path,
    *,
    x_key: str,
    title: str,
    lrs: dict[str, list[float]] | None = None,
    x_label: str | None = None,
) -> None:
    """Save a grid: columns = optimizers, rows = training / validation loss.

    **Arguments:**

    - `runs`: records from `runs.jsonl`.
    - `path`: the PNG to write.
    - `x_key`: `"iteration"` or `"time"`.
    - `title`: figure title (name the dataset actually used).
    - `lrs`: optional `{optimizer: [lr, ...]}` restricting which lrs are drawn.
    - `x_label`: the x axis label (default: from `x_key`).
    """
    groups = group_runs(runs)
    optimizers = sorted(
        {opt for opt, _, _ in groups if lrs is None or opt in lrs},
        key=lambda o: (o != "sgd", o != "adam", o),
    )
    if not optimizers:
        _save_empty(path, title, "no run diverged" if lrs is not None else "no runs")
        return
    estimators = sorted({est for _, _, est in groups})
    colors = _colors(estimators)
    fig, axes = plt.subplots(
        2,
        len(optimizers),
        figsize=(5.2 * len(optimizers), 7),
        squeeze=False,
        sharex="col",
    )
    for column, optimizer in enumerate(optimizers):
        all_lrs = sorted({lr for opt, lr, _ in groups if opt == optimizer})
        shown = [lr for lr in all_lrs if lrs is None or lr in lrs.get(optimizer, [])]
        for row, key in enumerate(("train_loss", "val_loss")):
            ax = axes[row][column]
            for lr_index, lr in enumerate(shown):
                style = _LINESTYLES[lr_index % len(_LINESTYLES)]
                for estimator in estimators:
                    group = groups.get((optimizer, lr, estimator))
                    if not group:
                        continue
                    _draw(
                        ax,
                        group,
                        key,
                        x_key,
                        colors[estimator],
                        style,
                        f"{estimator}, lr {lr:g}",
                    )
            ax.set_yscale("log")
            ax.set_xlim(left=0)
            ax.grid(True, which="both", alpha=0.3)
            ax.set_ylabel(
                "training loss (window mean)"
                if key == "train_loss"
                else "validation loss"
            )
            if row == 0:
                ax.set_title(optimizer.upper() if len(optimizer) <= 4 else optimizer)
            if row == 1:
                ax.set_xlabel(
                    x_label
                    or ("iteration" if x_key == "iteration" else "training time (s)")
                )
        if axes[0][column].get_legend_handles_labels()[0]:
            axes[0][column].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def _save_empty(path: Path, title: str, text: str) -> None:
    """A figure that says `text` (no learning rate to draw)."""
    fig, ax = plt.subplots(figsize=(5.2, 2.0))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center")
    fig.suptitle(title)
    save_figure(fig, path, dpi=110)


def _draw(ax, group, key, x_key, color, style, label) -> None:
    curves = _curves(group, key, x_key)
    if curves is not None:
        xs, mean, low, high = curves
        ax.plot(xs, mean, color=color, linestyle=style, label=label, linewidth=1.4)
        if len(group) > 1:
            ax.fill_between(xs, low, high, color=color, alpha=0.15, linewidth=0)
    labelled = curves is not None
    for run in group:
        if not run["diverged"]:
            continue
        # Mark where the run stopped: at its last record, or, when it diverged
        # before the first record, at the top of the panel.
        marker_label = None if labelled else f"{label} (diverged)"
        labelled = True
        if run[key] and run[key][-1] is not None:
            x, y, where = run[x_key][-1], run[key][-1], {}
        else:
            x = run["diverged_at"] if x_key == "iteration" else 0.0
            y, where = 1.0, {"transform": ax.get_xaxis_transform(), "clip_on": False}
        ax.plot(
            [x], [y], marker="x", color=color, markersize=9, label=marker_label, **where
        )
