"""Tables and figures of the local-losses experiment: `summary.csv`, a `report.md`
laid out like Ren et al.'s Table 3 (rows = methods, test error %, mean ± std over
seeds), accuracy against epoch and against training wall time, and each
perturbation site's gradient alignment over training (`ALIGNMENT_FIGURE`)."""

import csv
import io
import math
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from ..registry import METHODS, method_parts
from ..runner import save_figure
from ._settings import ALIGNMENT_KEYS
from ._train import ALIGNMENT_BATCH


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
    "tangents",
    "batch_size",
    "dataset",
    "diverged",
    "run_id",
)
ALIGNMENT_FIGURE = "alignment.png"
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
                # Runs from before the choice existed drew Gaussian tangents.
                "tangents": c.get("tangents", "gaussian"),
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
        *alignment_section(
            runs, dataset["num_train"], config.get("alignment_keys", ALIGNMENT_KEYS)
        ),
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


def alignment_groups(
    runs: list[dict[str, Any]],
) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """The runs with an alignment record (runs.jsonl from before it existed have
    none), by (model, method)."""
    return _group([run for run in runs if run.get("alignment")])


def _alignment_curves(group: list[dict[str, Any]], which: str) -> tuple[list, Any]:
    """The epochs all of `group`'s seeds reached and, per seed, each site's cosine
    (`which`: `"objective"` or `"end_to_end"`) there: shape (seeds, points,
    sites)."""
    length = min(len(run["alignment"]) for run in group)
    epochs = [point["epoch"] for point in group[0]["alignment"][:length]]
    values = np.array(
        [[point[which] for point in run["alignment"][:length]] for run in group],
        dtype=float,
    )
    return epochs, values


def _site_label(site: dict[str, int]) -> str:
    return f"block {site['block']}, site {site['site']}"


def alignment_section(
    runs: list[dict[str, Any]], num_train: int, num_keys: int = ALIGNMENT_KEYS
) -> list[str]:
    """report.md's alignment section (no lines when no run has an alignment
    record): per model, the last common point's cosines, method by site
    (`num_train`: the training images, of which `ALIGNMENT_BATCH` are used)."""
    groups = alignment_groups(runs)
    if not groups:
        return []
    lines = [
        "## Which layer gets signal: gradient alignment",
        "",
        "Cosine similarity between each method's estimate of a perturbation site's "
        "parameters and the exact gradient of the objective it estimates / the exact "
        "end-to-end gradient (1 / 1 = the backprop gradient), on a fixed batch of "
        f"{min(ALIGNMENT_BATCH, num_train)} training images, mean over "
        f"{num_keys} keys and over seeds, at the last epoch every seed reached.",
        "",
    ]
    models = sorted({model for model, _ in groups})
    for model in models:
        members = {m: g for (mo, m), g in groups.items() if mo == model}
        sites = next(iter(members.values()))[0]["alignment_sites"]
        if len(models) > 1:
            lines += [f"{model}:", ""]
        lines += [
            "| method | epoch | " + " | ".join(map(_site_label, sites)) + " |",
            "|---|---:|" + "---:|" * len(sites),
        ]
        for method, group in members.items():
            epochs, to_objective = _alignment_curves(group, "objective")
            _, to_end = _alignment_curves(group, "end_to_end")
            cells = [
                f"{a:.2f} / {b:.2f}"
                for a, b in zip(
                    to_objective[:, -1].mean(axis=0),
                    to_end[:, -1].mean(axis=0),
                    strict=True,
                )
            ]
            label = METHOD_LABELS.get(method, method)
            lines.append(f"| {label} | {epochs[-1]} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [f"![{ALIGNMENT_FIGURE}]({ALIGNMENT_FIGURE})", ""]
    return lines


def plot_alignment(runs: list[dict[str, Any]], path: Path, title: str) -> None:
    """Each perturbation site's alignment over training: one column per method
    (and model), the cosine to the objective's exact gradient on top and to the
    end-to-end gradient below, the mean over seeds with their range as a band.
    Runs without an alignment record are left out; with none, no figure."""
    groups = alignment_groups(runs)
    if not groups:
        return
    several_models = len({model for model, _ in groups}) > 1
    fig, axes = plt.subplots(
        2,
        len(groups),
        figsize=(0.5 + 3.0 * len(groups), 5.6),
        sharex=True,
        sharey=True,
        squeeze=False,
    )
    rows = (
        ("objective", "cosine to the objective's gradient"),
        ("end_to_end", "cosine to the end-to-end gradient"),
    )
    lowest = -0.1  # or below the lowest cosine
    for column, ((model, method), group) in enumerate(groups.items()):
        sites = group[0]["alignment_sites"]
        colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(sites)))
        for row, (which, ylabel) in enumerate(rows):
            ax = axes[row, column]
            epochs, values = _alignment_curves(group, which)
            lowest = min(lowest, float(np.min(values)) - 0.05)
            for index, site in enumerate(sites):
                color = colors[index]
                ax.plot(
                    epochs,
                    values[:, :, index].mean(axis=0),
                    color=color,
                    marker="o",
                    ms=3,
                    label=_site_label(site),
                )
                if len(group) > 1:
                    ax.fill_between(
                        epochs,
                        values[:, :, index].min(axis=0),
                        values[:, :, index].max(axis=0),
                        color=color,
                        alpha=0.15,
                        linewidth=0,
                    )
            ax.axhline(0.0, color="grey", linewidth=0.6)
            ax.grid(alpha=0.3)
            if column == 0:
                ax.set_ylabel(ylabel, fontsize=9)
            if row == 1:
                ax.set_xlabel("epoch")
        label = METHOD_LABELS.get(method, method)
        axes[0, column].set_title(
            f"{label} ({model})" if several_models else label, fontsize=10
        )
        if column == 0 or several_models:  # the same sites in every column
            axes[0, column].legend(fontsize=7)
    axes[0, 0].set_ylim(lowest, 1.05)  # shared by all
    fig.suptitle(_fit(title, fig), fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def _fit(title: str, fig: Any) -> str:
    """`title` wrapped to `fig`'s width (about 11 characters per inch at size 10)."""
    return textwrap.fill(title, width=int(11 * fig.get_figwidth()))


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
    ax.set_title(_fit(title, fig), fontsize=10)
    # Low enough for every epoch's accuracy (an early epoch of a slow method is
    # far below the final ones), in steps of 5 points.
    recorded = [100 * a for r in runs for a in r["history"]["test_acc"]]
    if recorded:
        ax.set_ylim(max(0.0, 5 * (min(recorded) // 5) - 5), 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
