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
only runs on the same data), `step_times.json` (measured once, reused by reruns;
`--retime-steps` measures again), `summary.csv`, `loss_vs_iteration.png`,
`loss_vs_time.png`, `divergence.png` (the learning rates where a run diverged;
"no run diverged" when none did) and `report.md`. A rerun that trains nothing
leaves every output byte-identical. How the learning rates were chosen: docs/mnist.md.

The presets, flags and `--help` text are in `_settings`, a run in `_train` (one at
a time) and `_batched` (seeds and learning rates of a cell together), both on
`experiments.runner`; the summaries and `report.md` in `_report`.
"""

import dataclasses
import json
import time
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
    timing: dict[str, Any] | None = None,
) -> str:
    """summary.csv, figures and report.md from `runs` and `timing` (the record of
    step_times.json, `step_times`); returns the stdout table."""
    from . import _plots, _report

    step_times = None if timing is None else timing["step_times"]
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
    # Only the lrs where a run diverged (every estimator there, for contrast);
    # always written, so that the set of files does not depend on the outcome.
    diverging: dict[str, list[float]] = {}
    for run in runs:
        c = run["config"]
        if run["diverged"] and c["lr"] not in diverging.get(c["optimizer"], []):
            diverging.setdefault(c["optimizer"], []).append(c["lr"])
    figures.append("divergence.png")
    _plots.plot_losses(
        runs,
        out / figures[-1],
        x_key="iteration",
        title=f"{title}: learning rates where a run diverged",
        lrs=diverging,
    )
    report = _report.report_markdown(
        title=f"Forward gradient vs backprop: {title}",
        config=config,
        rows=rows,
        figures=figures,
        divergent_lrs=settings.divergent_lrs,
        lr_rationale=LR_RATIONALE,
        timing=timing,
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


def load_or_measure_step_times(
    path: Path, configs: list, dataset: Any, *, cache: runner.Cache, retime: bool
) -> dict[str, Any]:
    """The record of step_times.json `path`: measured once and reused, so that a
    rerun leaves every output as it was. It is measured (and `path` written) when
    `retime` (`--retime-steps`), when `path` is missing, or when it lacks an
    (optimizer, estimator) of `configs` or was measured on another model, data or
    chunk length.

    **Returns:**

    `{"measured_at": UTC time, "environment": runner.environment(), "timed":
    {model, data, steps, rounds}, "step_times": measure_step_times(...)}`."""
    from ._train import measure_step_times, step_time_key

    timed = {
        "model": configs[0].model,
        "data": configs[0].data,
        "steps": configs[0].eval_every,
        "rounds": TIMING_ROUNDS,
    }
    stored = json.loads(path.read_text()) if path.exists() else {}
    needed = {step_time_key(config) for config in configs}
    reuse = (
        not retime
        and stored.get("timed") == timed
        and needed <= set(stored.get("step_times", {}))
    )
    runner.agree(int(reuse), f"whether to reuse {path}")
    if reuse:
        runner.say(f"step times: reusing {path} (--retime-steps measures again)")
        return stored
    runner.say(
        f"timing the steps: {TIMING_ROUNDS} interleaved rounds of "
        f"{timed['steps']} steps per (optimizer, estimator)"
    )
    record = {
        "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "environment": runner.environment(),
        "timed": timed,
        "step_times": measure_step_times(
            timing_configs(configs), dataset, cache=cache, rounds=TIMING_ROUNDS
        ),
    }
    if runner.is_writer():
        write_json(path, record)
    return record


def train_cells_runs(
    cell: list,
    dataset: Any,
    cache: runner.Cache,
    checkpointing: runner.Checkpointing | None = None,
) -> list[dict[str, Any]]:
    """The records of one cell's runs: one run alone (with `checkpointing`), or
    several batched."""
    from ._batched import train_cell

    if len(cell) == 1:
        return [
            train_run(
                cell[0],
                dataset,
                progress=True,
                cache=cache,
                checkpointing=checkpointing,
            )
        ]
    return train_cell(cell, dataset, progress=True, cache=cache)


def run(argv: list[str]) -> None:
    """The experiment; see the module docstring. `main` adds clean Ctrl-C."""
    args = build_parser().parse_args(argv)
    runner.start_processes(args)  # before anything touches a device
    settings = resolve(args)
    runner.check_batch_split(RunConfig.batch_size)

    from ._batched import group_cells

    dataset, out = runner.open_output(settings, "mnist_compare")
    checkpointing = runner.checkpointing(args, out)
    config = {
        **{
            k: v
            for k, v in dataclasses.asdict(settings).items()
            if k not in ("out", "data_dir", "retime_steps")
        },
        "seeds": list(range(settings.seeds)),
        "batch_size": 64,
        "dataset": runner.dataset_info(dataset, "val"),
        "data_dir": settings.data_dir,
        "out": str(out),
        # Without --retime-steps, so that re-timing leaves config.json as it was.
        "command": runner.command(
            "mnist_compare", [a for a in argv if a != "--retime-steps"]
        ),
        "timing": {"rounds": TIMING_ROUNDS, "steps": settings.eval_every},
        **runner.machine(),
    }
    if runner.is_writer():
        write_json(out / "config.json", config)

    configs = grid(settings, dataset)
    cache = runner.Cache()
    runs = runner.train_grid(
        configs,
        out / "runs.jsonl",
        lambda cell: train_cells_runs(cell, dataset, cache, checkpointing),
        label=lambda config: config.label,
        status=_status,
        groups=lambda pending: group_cells(pending, settings.batch_runs),
    )
    timing = load_or_measure_step_times(
        out / "step_times.json",
        configs,
        dataset,
        cache=cache,
        retime=settings.retime_steps,
    )
    if not runner.is_writer():
        return
    table = write_outputs(out, settings, config, runs, timing)
    print(f"\nDataset: {dataset.name} (requested {dataset.requested})")
    print(table)
    print(f"\nOutputs in {out}")


def main(argv: list[str] | None = None) -> None:
    """Run the experiment (`runner.run_main`: clean Ctrl-C, exit status 130)."""
    runner.run_main(run, argv)
