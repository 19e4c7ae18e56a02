"""Tables and figures of the local-losses experiment: `summary.csv`, a `report.md`
laid out like Ren et al.'s Table 3 (rows = methods, test error %, mean ± std over
seeds) and accuracy against epoch and against training wall time."""

import csv
import io
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from ..registry import METHODS, method_parts
from ..runner import save_figure


SUMMARY_COLUMNS = (
    "method",
    "model",
    "seed",
    "test_acc",
    "test_loss",
    "train_acc",
    "train_loss",
    "epochs",
    "steps",
    "wall_s",
    "compile_s",
    "optimizer",
    "lr",
    "num_tangents",
    "batch_size",
    "dataset",
    "diverged",
    "run_id",
)
METHOD_LABELS = {
    "backprop": "BP (end to end)",
    "fg-w": "FG-W",
    "fg-a": "FG-A",
    "lg-bp": "LG-BP",
    "lg-fg-w": "LG-FG-W",
    "lg-fg-a": "LG-FG-A",
}


def _order(method: str) -> int:
    return list(METHODS).index(method) if method in METHODS else len(METHODS)


def sorted_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(runs, key=lambda r: (r["model"], _order(r["method"]), r["seed"]))


def summary_csv(runs: list[dict[str, Any]]) -> str:
    """One row per method × model × seed; accuracies are fractions in [0, 1]."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for run in sorted_runs(runs):
        c = run["config"]
        writer.writerow(
            {
                "method": run["method"],
                "model": run["model"],
                "seed": run["seed"],
                "test_acc": f"{run['test_acc']:.6f}",
                "test_loss": _fmt(run["test_loss"]),
                "train_acc": f"{run['train_acc']:.6f}",
                "train_loss": _fmt(run["train_loss"]),
                "epochs": run["epochs"],
                "steps": run["steps"],
                "wall_s": f"{run['wall_s']:.4f}",
                "compile_s": f"{run['compile_s']:.2f}",
                "optimizer": c["optimizer"],
                "lr": f"{c['lr']:g}",
                "num_tangents": c["num_tangents"],
                "batch_size": c["batch_size"],
                "dataset": run["dataset"]["name"],
                "diverged": run["diverged"],
                "run_id": run["run_id"],
            }
        )
    return buffer.getvalue()


def _fmt(value: float | None) -> str:
    return "nan" if value is None else f"{value:.6f}"


def _group(runs: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict]]:
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for run in sorted_runs(runs):
        groups[(run["model"], run["method"])].append(run)
    return groups


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for one value)."""
    array = np.asarray(values, dtype=float)
    std = float(array.std(ddof=1)) if len(array) > 1 else None
    return float(array.mean()), std


def _pm(values: list[float], digits: int = 2) -> str:
    mean, std = _mean_std(values)
    if std is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def stats(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (model, method): seeds, mean/std of test accuracy, error, wall time."""
    rows = []
    for (model, method), group in _group(runs).items():
        acc = [r["test_acc"] for r in group]
        mean, std = _mean_std(acc)
        rows.append(
            {
                "model": model,
                "method": method,
                "seeds": [r["seed"] for r in group],
                "test_acc_mean": mean,
                "test_acc_std": std,
                "test_error": _pm([100 * (1 - a) for a in acc]),
                "train_error": _pm([100 * (1 - r["train_acc"]) for r in group]),
                "test_loss": _pm(
                    [
                        math.nan if r["test_loss"] is None else r["test_loss"]
                        for r in group
                    ],
                    3,
                ),
                "wall_s": _pm([r["wall_s"] for r in group], 0),
                "step_ms": float(
                    np.mean([1000 * r["wall_s"] / max(r["steps"], 1) for r in group])
                ),
                "diverged": sum(bool(r["diverged"]) for r in group),
            }
        )
    return rows


def text_table(runs: list[dict[str, Any]]) -> str:
    """The stdout table: test error per method (mean ± std over seeds)."""
    lines = [f"{'model':6} {'method':9} {'seeds':>5} {'test err %':>15} {'wall s':>10}"]
    for row in stats(runs):
        lines.append(
            f"{row['model']:6} {row['method']:9} {len(row['seeds']):>5} "
            f"{row['test_error']:>15} {row['wall_s']:>10}"
        )
    return "\n".join(lines)


def report_markdown(
    *, config: dict[str, Any], runs: list[dict[str, Any]], figures: list[str]
) -> str:
    """report.md: the Table-3-style table, the per-method settings, the targets'
    gaps to backprop, the data and the command."""
    dataset = config["dataset"]
    rows = stats(runs)
    models = sorted({row["model"] for row in rows})
    by_key = {(row["model"], row["method"]): row for row in rows}
    methods = sorted({row["method"] for row in rows}, key=_order)
    seed_counts = {len(row["seeds"]) for row in rows}
    lines = [
        f"# Local losses and forward gradients: {dataset['name']}",
        "",
        f"Dataset **{dataset['name']}** ({dataset['num_train']:,} training / "
        f"{dataset['num_test']:,} test images; test split: {dataset['test_split']}; "
        f"source: {dataset['source']}; fingerprint {dataset['fingerprint'][:12]}).",
        f"{config['epochs']} epochs, batch size {config['batch_size']}, seeds "
        f"{', '.join(map(str, config['seeds']))}.",
        "",
        "## Test error (%), as in Ren et al. (2023), Table 3",
        "",
    ]
    if seed_counts == {1}:
        lines.append(
            "One seed per method: the entries are single runs, with no ± (no spread "
            "to estimate)."
        )
    else:
        lines.append(
            "Mean ± sample standard deviation over seeds of the test error of the "
            "network's final output."
        )
    lines += [
        "",
        "| method | " + " | ".join(f"{m} ({_arch(config, m)})" for m in models) + " |",
        "|---|" + "---:|" * len(models),
    ]
    for method in methods:
        cells = []
        for model in models:
            row = by_key.get((model, method))
            cells.append("—" if row is None else row["test_error"])
        k = config["methods"][method].get("num_tangents", 1)
        label = METHOD_LABELS.get(method, method) + (f" (K={k})" if k > 1 else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Details per method",
        "",
        "| model | method | objective / estimator | K | optimizer | lr | seeds | "
        "test acc % | gap to BP (points) | train error % | test loss | "
        "train wall s | ms / step | diverged |",
        "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        model, method = row["model"], row["method"]
        hyper = config["methods"][method]
        bp = by_key.get((model, "backprop"))
        gap = (
            "—"
            if bp is None or method == "backprop"
            else f"{100 * (bp['test_acc_mean'] - row['test_acc_mean']):+.2f}"
        )
        acc_std = row["test_acc_std"]
        acc = f"{100 * row['test_acc_mean']:.2f}" + (
            "" if acc_std is None else f" ± {100 * acc_std:.2f}"
        )
        objective, estimator = method_parts(method)
        lines.append(
            f"| {model} | {method} | {objective} / {estimator} | "
            f"{hyper.get('num_tangents', 1)} | "
            f"{hyper['optimizer']} {hyper.get('schedule', '')} | {hyper['lr']:g} | "
            f"{len(row['seeds'])} | {acc} | "
            f"{gap} | {row['train_error']} | {row['test_loss']} | {row['wall_s']} | "
            f"{row['step_ms']:.2f} | {row['diverged']} |"
        )
    lines += [
        "",
        "K = tangents per forward estimate. Gap to BP = backprop's mean test accuracy "
        "minus the method's, in percentage points (positive: the method is behind). "
        "Train wall time counts the "
        "training steps and data loading, not compilation or evaluation.",
        "",
        "## Learning rates",
        "",
        config["lr_rationale"],
        "",
        "## Figures",
        "",
        *[f"![{name}]({name})" for name in figures],
        "",
        "## Reproduce",
        "",
        "```",
        config["command"],
        "```",
        "",
        f"Environment: jax {config['environment'].get('jax')}, "
        f"{config['environment'].get('jax_backend')} backend, "
        f"{config['environment'].get('cpu_count')} CPUs, "
        f"{config['environment'].get('platform')}.",
        "",
    ]
    return "\n".join(lines)


def _arch(config: dict[str, Any], model: str) -> str:
    arch = config["arch"] if config["model"] == model else {}
    return ", ".join(f"{k} {v}" for k, v in arch.items())


def _colors(methods: list[str]) -> dict[str, Any]:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colors = {m: cycle[i % len(cycle)] for i, m in enumerate(METHODS)}
    colors["backprop"] = "black"
    return {m: colors.get(m, "grey") for m in methods}


def plot_accuracy(
    runs: list[dict[str, Any]], path: Path, *, x_key: str, title: str
) -> None:
    """Test accuracy (%) against `x_key` (`"epoch"` or `"time"`): the mean over
    seeds per method and model, each seed as a faint line."""
    groups = _group(runs)
    colors = _colors(sorted({m for _, m in groups}, key=_order))
    models = sorted({model for model, _ in groups})
    styles = {
        model: style for model, style in zip(models, ("-", "--", ":"), strict=False)
    }
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for (model, method), group in groups.items():
        color, style = colors[method], styles.get(model, "-")
        length = min(len(r["history"]["test_acc"]) for r in group)
        for run in group:
            ax.plot(
                [0.0, *run["history"][x_key]],
                [
                    100 * run["initial_test_acc"],
                    *(100 * np.array(run["history"]["test_acc"])),
                ],
                color=color,
                linestyle=style,
                alpha=0.25,
                linewidth=0.8,
            )
        if length:
            xs = np.mean([r["history"][x_key][:length] for r in group], axis=0)
            ys = 100 * np.mean(
                [r["history"]["test_acc"][:length] for r in group], axis=0
            )
            label = METHOD_LABELS.get(method, method)
            if len(models) > 1:
                label = f"{label} ({model})"
            ax.plot(xs, ys, color=color, linestyle=style, marker="o", ms=3, label=label)
    ax.set_xlabel("epoch" if x_key == "epoch" else "training wall time (s)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=10)
    # Low enough for every epoch's accuracy (an early epoch of a slow method is
    # far below the final ones), in steps of 5 points.
    recorded = [100 * a for r in runs for a in r["history"]["test_acc"]]
    if recorded:
        ax.set_ylim(max(0.0, 5 * (min(recorded) // 5) - 5), 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
