"""Forward gradient vs backpropagation on MNIST, under SGD and Adam.

Reproduces section 4.2 (and the appendix) of the seed paper "Gradients with or
without Backpropagation": the 784-1024-1024-10 ReLU MLP, softmax cross-entropy,
minibatch 64, forward gradient (Gaussian tangents) against backprop under SGD and
Adam, several seeds; loss per iteration and per training time; T_b (time at which
backprop reaches its lowest validation loss) and T_f (first time forward gradient
reaches that loss); and a larger learning rate at which forward gradient diverges.
Baydin et al.'s logistic regression and CNN are available with `--model`.

    python -m experiments.mnist_compare                 # quick preset
    python -m experiments.mnist_compare --preset paper  # the full grid
    python -m experiments.mnist_compare --estimators backprop fwd-gaussian fwd-lowrank

`--help` lists every flag with its default, the presets, estimators and optimizers.
Outputs (in `--out`, default `results/mnist_compare/<preset>-<dataset>-<model>/`):
`config.json`, `runs.jsonl` (one line per finished run; rerunning resumes, counting
only runs on the same data), `step_times.json`, `summary.csv`,
`loss_vs_iteration.png`, `loss_vs_time.png`, `divergence.png` (when a run diverged)
and `report.md`. How the learning rates were chosen: docs/mnist.md.

The presets, flags and `--help` text are in `_settings`, a run in `_train` (one at
a time) and `_batched` (seeds and learning rates of a cell together), both on
`experiments.runner`; the summaries and `report.md` in `_report`.
"""

import dataclasses
from pathlib import Path
from typing import Any

from .. import runner
from ..runner import write_atomic, write_json
from ._settings import (
    LR_RATIONALE as LR_RATIONALE,
    MODELS as MODELS,
    PRESETS as PRESETS,
    QUICK_DURATION as QUICK_DURATION,
    Settings as Settings,
    build_parser as build_parser,
    resolve as resolve,
)
from ._train import RunConfig as RunConfig, train_run as train_run


def grid(settings: Settings, dataset: Any) -> list:
    """Every run of the grid, keyed on the data (`RunConfig.data`)."""
    identity = runner.data_identity(dataset)
    return [
        RunConfig(
            dataset=dataset.name,
            data=identity,
            model=settings.model,
            optimizer=optimizer,
            lr=lr,
            estimator=estimator,
            seed=seed,
            iterations=settings.iterations,
            eval_every=settings.eval_every,
        )
        for optimizer in settings.optimizers
        for lr in settings.lrs[optimizer]
        for estimator in settings.estimators
        for seed in range(settings.seeds)
    ]


def timing_configs(configs: list) -> list:
    """One configuration per (optimizer, estimator) to time: its smallest lr (the
    least likely to diverge; a step costs the same at any lr), seed 0."""
    from ._train import step_time_key

    chosen: dict[str, Any] = {}
    for config in configs:
        key = step_time_key(config)
        if key not in chosen or config.lr < chosen[key].lr:
            chosen[key] = dataclasses.replace(config, seed=0)
    return list(chosen.values())


def write_outputs(
    out: Path,
    settings: Settings,
    config: dict[str, Any],
    runs: list[dict],
    step_times: dict[str, dict[str, Any]] | None = None,
) -> str:
    """summary.csv, figures and report.md from `runs`; returns the stdout table."""
    from . import _plots, _report

    rows = _report.summarise(runs, step_times)
    write_atomic(out / "summary.csv", _report.summary_csv(rows))
    name = config["dataset"]["name"]
    title = f"{settings.model.upper()} on {name}"
    figures = ["loss_vs_iteration.png", "loss_vs_time.png"]
    _plots.plot_losses(
        runs, out / figures[0], x_key="iteration", title=f"{title}: loss per iteration"
    )
    timed = [
        {**run, "step_time_axis": _report.run_times(run, step_times)} for run in runs
    ]
    _plots.plot_losses(
        timed,
        out / figures[1],
        x_key="step_time_axis",
        title=f"{title}: loss per training time",
        x_label=(
            "training time (s): iterations × median step time"
            if step_times
            else "training time (s)"
        ),
    )
    # Every lr of each optimizer where a run diverged, for contrast.
    diverging = {
        opt: settings.lrs[opt]
        for opt in {run["config"]["optimizer"] for run in runs if run["diverged"]}
    }
    if diverging:
        figures.append("divergence.png")
        _plots.plot_losses(
            runs,
            out / figures[-1],
            x_key="iteration",
            title=f"{title}: learning rates where a run diverged",
            lrs=diverging,
        )
    else:
        (out / "divergence.png").unlink(missing_ok=True)
    report = _report.report_markdown(
        title=f"Forward gradient vs backprop: {title}",
        config=config,
        rows=rows,
        figures=figures,
        divergent_lrs=settings.divergent_lrs,
        lr_rationale=LR_RATIONALE,
    )
    write_atomic(out / "report.md", report)
    return _report.text_table(rows)


def _status(record: dict[str, Any]) -> str:
    if record["diverged"]:
        return f"diverged at iteration {record['diverged_at']}"
    return (
        f"val loss {record['final_val_loss']:.4f}, "
        f"acc {record['final_val_accuracy']:.4f}"
    )


TIMING_ROUNDS = 7


def train_cells_runs(
    cell: list, dataset: Any, cache: runner.Cache
) -> list[dict[str, Any]]:
    """The records of one cell's runs: one run alone, or several batched."""
    from ._batched import train_cell

    if len(cell) == 1:
        return [train_run(cell[0], dataset, progress=True, cache=cache)]
    return train_cell(cell, dataset, progress=True, cache=cache)


def run(argv: list[str]) -> None:
    """The experiment; see the module docstring. `main` adds clean Ctrl-C."""
    settings = resolve(build_parser().parse_args(argv))

    from ._batched import group_cells
    from ._train import measure_step_times

    dataset, out = runner.open_output(settings, "mnist_compare")
    config = {
        **{
            k: v
            for k, v in dataclasses.asdict(settings).items()
            if k not in ("out", "data_dir")
        },
        "seeds": list(range(settings.seeds)),
        "batch_size": 64,
        "dataset": runner.dataset_info(dataset, "val"),
        "data_dir": settings.data_dir,
        "out": str(out),
        "command": runner.command("mnist_compare", argv),
        "timing": {"rounds": TIMING_ROUNDS, "steps": settings.eval_every},
        **runner.machine(),
    }
    write_json(out / "config.json", config)

    configs = grid(settings, dataset)
    cache = runner.Cache()
    runs = runner.train_grid(
        configs,
        out / "runs.jsonl",
        lambda cell: train_cells_runs(cell, dataset, cache),
        label=lambda config: config.run_id,
        status=_status,
        groups=lambda pending: group_cells(pending, settings.batch_runs),
    )
    print(
        f"timing the steps: {TIMING_ROUNDS} interleaved rounds of "
        f"{settings.eval_every} steps per (optimizer, estimator)",
        flush=True,
    )
    step_times = measure_step_times(
        timing_configs(configs), dataset, cache=cache, rounds=TIMING_ROUNDS
    )
    write_json(out / "step_times.json", step_times)
    table = write_outputs(out, settings, config, runs, step_times)
    print(f"\nDataset: {dataset.name} (requested {dataset.requested})")
    print(table)
    print(f"\nOutputs in {out}")


def main(argv: list[str] | None = None) -> None:
    """Run the experiment (`runner.run_main`: clean Ctrl-C, exit status 130)."""
    runner.run_main(run, argv)
