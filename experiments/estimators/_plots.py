"""The estimators experiment's figures: gradient quality against K, and validation
loss against iterations and wall time."""

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from ._presets import QUALITY_METHODS
from ._summary import run_label


def plot_quality(quality: dict[str, Any], path: Path) -> None:
    """Cosine and relative error against K, one column per checkpoint."""
    results = quality["results"]
    checkpoints = sorted({r["checkpoint"] for r in results})
    fig, axes = plt.subplots(2, len(checkpoints), figsize=(4.2 * len(checkpoints), 7))
    axes = np.asarray(axes).reshape(2, len(checkpoints))
    for column, checkpoint in enumerate(checkpoints):
        for method in QUALITY_METHODS:
            rows = [
                r
                for r in results
                if r["checkpoint"] == checkpoint and r["method"] == method
            ]
            ks = [r["K"] for r in rows]
            for row, key in enumerate(("cosine", "relative_error")):
                axes[row, column].errorbar(
                    ks,
                    [r[f"{key}_mean"] for r in rows],
                    [r[f"{key}_std"] for r in rows],
                    marker="o",
                    label=method,
                    capsize=2,
                )
        ks = sorted(int(k) for k in quality["sqrt_K_over_n"])
        axes[0, column].plot(
            ks,
            [quality["sqrt_K_over_n"][k] for k in ks],
            "k:",
            label="√(K/n)",
        )
        axes[0, column].set_title(f"after {checkpoint} SGD steps")
        for row in range(2):
            axes[row, column].set_xscale("log", base=2)
            axes[row, column].set_yscale("log")
            axes[row, column].set_xlabel("K (tangents / directions)")
        axes[0, column].set_ylabel("cosine to true gradient")
        axes[1, column].set_ylabel("‖g − ∇f‖ / ‖∇f‖")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(
        f"MLP (n = {quality['num_parameters']:,}), minibatch "
        f"{quality['batch_size']}, {quality['repeats']} draws per point"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_training(runs: list[dict[str, Any]], path: Path) -> None:
    """Validation loss against iterations and wall time, one line per run."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = sorted({run_label(run["config"]) for run in runs})
    palette = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20").colors  # pyright: ignore
    colors = {label: palette[i % len(palette)] for i, label in enumerate(labels)}
    for label in labels:
        group = [run for run in runs if run_label(run["config"]) == label]
        for index, run in enumerate(group):
            kwargs = {"color": colors[label], "alpha": 0.7, "lw": 1}
            if index == 0:
                kwargs["label"] = label
            val = [np.nan if v is None else v for v in run["val_loss"]]
            axes[0].plot(run["iteration"], val, **kwargs)
            axes[1].plot(run["time"], val, **kwargs)
    axes[0].set_xlabel("iteration")
    axes[1].set_xlabel("training wall time (s)")
    for axis in axes:
        axis.set_ylabel("validation loss")
        axis.set_yscale("log")
    axes[1].set_xscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle("MNIST (mnist-5k) MLP: one line per seed")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
