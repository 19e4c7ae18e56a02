"""Forward-only training with activity perturbation and local losses (Ren et al. 2023).

Trains one `fwdeqx.local` network (an MLP, a CNN or a LocalMixer) on an MNIST-format
dataset with any of the five methods of the issue (plus the LG-BP reference), several
seeds each, and reports the test error per method laid out like Ren et al.'s Table 3:

- `backprop`: end-to-end backprop of the network's output loss (the baseline);
- `fg-w`: forward gradient, weight perturbation, global loss;
- `fg-a`: forward gradient, activity perturbation, global loss;
- `lg-bp`: local greedy losses, exact gradients by backprop (Ren et al.'s LG-BP
  row: the ceiling of the local-loss methods, not backprop-free);
- `lg-fg-w`: local greedy losses, weight perturbation;
- `lg-fg-a`: local greedy losses, activity perturbation.

    python -m experiments.local_losses                       # quick preset
    python -m experiments.local_losses --dataset fashion-mnist --seeds 3
    python -m experiments.local_losses --preset paper --dataset mnist --data-dir DIR

Outputs (in `--out`, default `results/local_losses/<preset>-<dataset>-<model>/`):
`config.json`, `runs.jsonl` (one line per finished run with its per-epoch history;
rerunning the same command skips finished runs), `summary.csv` (one row per method
× model × seed), `accuracy_vs_epoch.png`, `accuracy_vs_time.png` and `report.md`.
"""

import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

from ._local_cli import (
    ARCH_DEFAULTS as ARCH_DEFAULTS,
    DATASETS as DATASETS,
    LEARNING_RATES as LEARNING_RATES,
    LR_RATIONALE as LR_RATIONALE,
    OPTIMIZERS as OPTIMIZERS,
    PRESETS as PRESETS,
    Settings as Settings,
    build_parser as build_parser,
    parse_methods as parse_methods,
    resolve as resolve,
)
from ._local_train import METHOD_PARTS
from ._report import (
    append_jsonl,
    check_output_dir,
    environment,
    output_dir,
    read_runs,
    write_atomic,
    write_json,
)


def load_data(settings: Settings) -> Any:
    """The dataset, its test set as the evaluation split (`mnist-5k`, which has
    none, holds out 100 images per class: 4,000 train / 1,000 test)."""
    from fwdeqx import data

    try:
        return data.load_dataset(
            settings.dataset, data_dir=settings.data_dir, validation="test"
        )
    except (data.DatasetNotFoundError, data.IdxFormatError) as error:
        raise SystemExit(f"error: {str(error).strip()}") from None


def _num_tangents(method: str, settings: Settings) -> int:
    """K for the forward methods; 1 (unused) for the exact ones."""
    return 1 if METHOD_PARTS[method][1] == "Backprop" else settings.num_tangents


def grid(settings: Settings, dataset: Any) -> list:
    from ._local_train import RunConfig, data_identity

    identity = data_identity(dataset)
    return [
        RunConfig(
            dataset=dataset.name,
            data=identity,
            model=settings.model,
            arch=tuple(settings.arch.items()),
            method=method,
            optimizer=settings.optimizer,
            lr=settings.lrs[method],
            schedule=settings.schedule,
            num_tangents=_num_tangents(method, settings),
            seed=seed,
            epochs=settings.epochs,
            batch_size=settings.batch_size,
        )
        for method in settings.methods
        for seed in range(settings.seeds)
    ]


def write_outputs(out: Path, config: dict[str, Any], runs: list[dict]) -> str:
    """summary.csv, figures and report.md from `runs`; returns the stdout table."""
    from . import _local_report

    write_atomic(out / "summary.csv", _local_report.summary_csv(runs))
    arch = ", ".join(f"{k} {v}" for k, v in config["arch"].items())
    title = (
        f"{config['model']} ({arch}) on {config['dataset']['name']}: "
        f"{config['epochs']} epochs, batch {config['batch_size']}, "
        f"seeds {len(config['seeds'])}"
    )
    figures = ["accuracy_vs_epoch.png", "accuracy_vs_time.png"]
    for name, x_key in zip(figures, ("epoch", "time"), strict=True):
        _local_report.plot_accuracy(runs, out / name, x_key=x_key, title=title)
    report = _local_report.report_markdown(config=config, runs=runs, figures=figures)
    write_atomic(out / "report.md", report)
    return _local_report.text_table(runs)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    settings = resolve(build_parser().parse_args(argv))
    try:
        _run(settings, argv)
    except KeyboardInterrupt:
        print(
            "\ninterrupted; rerun the same command to resume (finished runs are "
            "kept in runs.jsonl)",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(128 + signal.SIGINT) from None


def _run(settings: Settings, argv: list[str]) -> None:
    if settings.out:
        check_output_dir(settings.out)  # fail early; create it once the data loads

    from tqdm import tqdm

    from fwdeqx import data

    from ._local_train import dataset_info, train_run

    dataset = load_data(settings)
    out = output_dir(
        settings.out
        or Path("results")
        / "local_losses"
        / f"{settings.preset}-{dataset.name}-{settings.model}"
    )
    standardize = dataset.pixel_stats()
    config = {
        "preset": settings.preset,
        "model": settings.model,
        "arch": settings.arch,
        "methods": {
            method: {
                "objective": METHOD_PARTS[method][0],
                "estimator": METHOD_PARTS[method][1],
                "optimizer": settings.optimizer,
                "lr": settings.lrs[method],
                "schedule": settings.schedule,
                "num_tangents": _num_tangents(method, settings),
            }
            for method in settings.methods
        },
        "lr_rationale": LR_RATIONALE,
        "epochs": settings.epochs,
        "seeds": list(range(settings.seeds)),
        "batch_size": settings.batch_size,
        "input_standardization": list(standardize),
        "dataset": dataset_info(dataset),
        "data_dir": settings.data_dir,
        "out": str(out),
        "command": shlex.join(["python", "-m", "experiments.local_losses", *argv]),
        "environment": environment(),
        "environment_variables": {
            k: v for k, v in os.environ.items() if k.startswith(("JAX_", "XLA_"))
        },
    }
    write_json(out / "config.json", config)

    runs_path = out / "runs.jsonl"
    finished = read_runs(runs_path)
    cache: dict = {}
    runs = []
    configs = grid(settings, dataset)
    for index, run_config in enumerate(configs):
        record = finished.get(run_config.run_id)
        label = (
            f"[{index + 1}/{len(configs)}] {run_config.method} seed {run_config.seed}"
        )
        if record is None:
            record = train_run(
                run_config,
                dataset,
                batches=data.batches,
                to_float=data.to_float,
                progress=lambda **kw: tqdm(
                    leave=False, file=sys.stderr, unit="step", **kw
                ),
                cache=cache,
                standardize=standardize,
            )
            append_jsonl(runs_path, record)
            status = (
                f"test acc {record['test_acc']:.4f}, train acc "
                f"{record['train_acc']:.4f}, {record['wall_s']:.0f} s"
                + (" (diverged)" if record["diverged"] else "")
            )
        else:
            status = "already in runs.jsonl, skipped"
        print(f"{label}: {status}", flush=True)
        runs.append(record)

    table = write_outputs(out, config, runs)
    print(f"\nDataset: {dataset.name} (requested {dataset.requested})")
    print(table)
    print(f"\nOutputs in {out}")


if __name__ == "__main__":
    main()
