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

The presets, flags and `--help` text are in `_mnist_cli`; the summaries and
`report.md` in `_mnist_report`.
"""

import dataclasses
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from ._mnist_cli import (
    DATASETS as DATASETS,
    LR_RATIONALE as LR_RATIONALE,
    MODELS as MODELS,
    PRESETS as PRESETS,
    QUICK_DURATION as QUICK_DURATION,
    Settings as Settings,
    build_parser as build_parser,
    resolve as resolve,
)
from ._report import (
    append_jsonl,
    check_output_dir,
    environment,
    output_dir,
    read_runs,
    write_atomic,
    write_json,
)


INTERRUPTED = "interrupted; rerun the same command to resume"


def load_data(settings: Settings) -> Any:
    """The dataset, validated on the test split (`mnist-5k`, which has none,
    holds out 100 images per class: 4,000 train / 1,000 validation).

    Exits with the whole message (what was tried and how to fix it) when the data
    cannot be found or read. The offline fallback's warning is printed once, to
    stderr."""
    import warnings

    from fwdeqx import data

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", data.DatasetFallbackWarning)
            dataset = data.load_dataset(
                settings.dataset, data_dir=settings.data_dir, validation="test"
            )
    except (data.DatasetNotFoundError, data.IdxFormatError) as error:
        raise SystemExit(f"error: {str(error).strip()}") from None
    for warning in caught:
        if issubclass(warning.category, data.DatasetFallbackWarning):
            print(f"warning: {warning.message}", file=sys.stderr, flush=True)
        else:  # not ours to swallow
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    return dataset


def dataset_info(dataset: Any) -> dict[str, Any]:
    return {
        "name": dataset.name,
        "requested": dataset.requested,
        "source": str(dataset.source),
        "validation": str(dataset.validation),
        "num_train": len(dataset.train_labels),
        "num_val": len(dataset.val_labels),
        "fingerprint": dataset.fingerprint,
    }


def grid(settings: Settings, dataset: Any) -> list:
    """Every run of the grid, keyed on the data (`RunConfig.data`)."""
    from ._mnist_train import RunConfig, data_identity

    identity = data_identity(dataset)
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
    from ._mnist_train import step_time_key

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
    from . import _mnist_plots, _mnist_report

    rows = _mnist_report.summarise(runs, step_times)
    write_atomic(out / "summary.csv", _mnist_report.summary_csv(rows))
    name = config["dataset"]["name"]
    title = f"{settings.model.upper()} on {name}"
    figures = ["loss_vs_iteration.png", "loss_vs_time.png"]
    _mnist_plots.plot_losses(
        runs, out / figures[0], x_key="iteration", title=f"{title}: loss per iteration"
    )
    timed = [
        {**run, "step_time_axis": _mnist_report.run_times(run, step_times)}
        for run in runs
    ]
    _mnist_plots.plot_losses(
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
        _mnist_plots.plot_losses(
            runs,
            out / figures[-1],
            x_key="iteration",
            title=f"{title}: learning rates where a run diverged",
            lrs=diverging,
        )
    else:
        (out / "divergence.png").unlink(missing_ok=True)
    report = _mnist_report.report_markdown(
        title=f"Forward gradient vs backprop: {title}",
        config=config,
        rows=rows,
        figures=figures,
        divergent_lrs=settings.divergent_lrs,
        lr_rationale=LR_RATIONALE,
    )
    write_atomic(out / "report.md", report)
    return _mnist_report.text_table(rows)


def _status(record: dict[str, Any]) -> str:
    if record["diverged"]:
        return f"diverged at iteration {record['diverged_at']}"
    return (
        f"val loss {record['final_val_loss']:.4f}, "
        f"acc {record['final_val_accuracy']:.4f}"
    )


TIMING_ROUNDS = 7


def train_cells_runs(cell: list, dataset: Any, cache: dict) -> list[dict[str, Any]]:
    """The records of one cell's runs: one run alone, or several batched."""
    from tqdm import tqdm

    from fwdeqx import data

    from ._mnist_batched import train_cell
    from ._mnist_train import train_run

    options = {
        "batches": data.batches,
        "to_float": data.to_float,
        "progress": lambda **kw: tqdm(leave=False, file=sys.stderr, **kw),
        "cache": cache,
    }
    if len(cell) == 1:
        return [train_run(cell[0], dataset, **options)]
    return train_cell(cell, dataset, **options)


def run(argv: list[str]) -> None:
    """The experiment; see the module docstring. `main` adds clean Ctrl-C."""
    settings = resolve(build_parser().parse_args(argv))
    if settings.out:
        check_output_dir(settings.out)

    from fwdeqx import data

    from ._mnist_batched import group_cells
    from ._mnist_train import measure_step_times

    dataset = load_data(settings)
    # Created only once the data loaded: a failure leaves no empty folder behind.
    out = output_dir(
        settings.out
        or Path("results")
        / "mnist_compare"
        / f"{settings.preset}-{dataset.name}-{settings.model}"
    )
    config = {
        **{
            k: v
            for k, v in dataclasses.asdict(settings).items()
            if k not in ("out", "data_dir")
        },
        "seeds": list(range(settings.seeds)),
        "batch_size": 64,
        "dataset": dataset_info(dataset),
        "data_dir": settings.data_dir,
        "out": str(out),
        "command": shlex.join(["python", "-m", "experiments.mnist_compare", *argv]),
        "timing": {"rounds": TIMING_ROUNDS, "steps": settings.eval_every},
        "environment": environment(),
        "environment_variables": {
            k: v for k, v in os.environ.items() if k.startswith(("JAX_", "XLA_"))
        },
    }
    write_json(out / "config.json", config)

    runs_path = out / "runs.jsonl"
    finished = read_runs(runs_path)
    configs = grid(settings, dataset)
    others = len(set(finished) - {c.run_id for c in configs})
    if others:
        print(
            f"note: {runs_path} also holds {others} run(s) of other settings or "
            "other data; they are not counted here.",
            flush=True,
        )
    cache: dict = {}
    records = {c.run_id: finished[c.run_id] for c in configs if c.run_id in finished}
    position = {c.run_id: index + 1 for index, c in enumerate(configs)}
    for run_config in configs:
        if run_config.run_id in records:
            print(
                f"[{position[run_config.run_id]}/{len(configs)}] "
                f"{run_config.run_id}: already in runs.jsonl, skipped",
                flush=True,
            )
    pending = [c for c in configs if c.run_id not in records]
    for cell in group_cells(pending, settings.batch_runs):
        for record in train_cells_runs(cell, dataset, cache):
            append_jsonl(runs_path, record)
            records[record["run_id"]] = record
            print(
                f"[{position[record['run_id']]}/{len(configs)}] {record['run_id']}: "
                f"{_status(record)}",
                flush=True,
            )
    runs = [records[c.run_id] for c in configs]

    print(
        f"timing the steps: {TIMING_ROUNDS} interleaved rounds of "
        f"{settings.eval_every} steps per (optimizer, estimator)",
        flush=True,
    )
    step_times = measure_step_times(
        timing_configs(configs),
        dataset,
        batches=data.batches,
        to_float=data.to_float,
        cache=cache,
        rounds=TIMING_ROUNDS,
    )
    write_json(out / "step_times.json", step_times)
    table = write_outputs(out, settings, config, runs, step_times)
    print(f"\nDataset: {dataset.name} (requested {dataset.requested})")
    print(table)
    print(f"\nOutputs in {out}")


def main(argv: list[str] | None = None) -> None:
    """Run the experiment; on Ctrl-C say how to resume and exit with status 130
    (finished runs are already in runs.jsonl)."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        run(argv)
    except KeyboardInterrupt:
        print(f"\n{INTERRUPTED}", file=sys.stderr, flush=True)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
