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
× model × seed), `accuracy_vs_epoch.png`, `accuracy_vs_time.png`, `alignment.png`
(per-layer gradient alignment over training) and `report.md`.

The presets and flags are in `_settings`, a run in `_train` (on `experiments.runner`),
the summary and `report.md` in `_report`.
"""

from pathlib import Path
from typing import Any

from .. import registry, runner
from ..runner import write_atomic, write_json
from ._settings import (
    ARCH_DEFAULTS as ARCH_DEFAULTS,
    LEARNING_RATES as LEARNING_RATES,
    LR_RATIONALE as LR_RATIONALE,
    MODEL_LEARNING_RATES as MODEL_LEARNING_RATES,
    OPTIMIZERS as OPTIMIZERS,
    PRESETS as PRESETS,
    Settings as Settings,
    build_parser as build_parser,
    parse_methods as parse_methods,
    resolve as resolve,
)


def _is_exact(method: str) -> bool:
    return registry.method_parts(method)[1] == "Backprop"


def _num_tangents(method: str, settings: Settings) -> int:
    """K for the forward methods; 1 (unused) for the exact ones."""
    return 1 if _is_exact(method) else settings.num_tangents


def _tangents(method: str, settings: Settings) -> str:
    """The forward methods' tangent distribution; the default for the exact ones
    (unused), so that their runs do not depend on it."""
    return "gaussian" if _is_exact(method) else settings.tangents


def grid(settings: Settings, dataset: Any) -> list:
    from ._train import RunConfig

    identity = runner.data_identity(dataset)
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
            tangents=_tangents(method, settings),
            seed=seed,
            epochs=settings.epochs,
            batch_size=settings.batch_size,
        )
        for method in settings.methods
        for seed in range(settings.seeds)
    ]


def write_outputs(out: Path, config: dict[str, Any], runs: list[dict]) -> str:
    """summary.csv, figures (the alignment one when a run has an alignment
    record) and report.md from `runs`; returns the stdout table."""
    from . import _report

    write_atomic(out / "summary.csv", _report.summary_csv(runs))
    arch = ", ".join(f"{k} {v}" for k, v in config["arch"].items())
    title = (
        f"{config['model']} ({arch}) on {config['dataset']['name']}: "
        f"{config['epochs']} epochs, batch {config['batch_size']}, "
        f"seeds {len(config['seeds'])}"
    )
    figures = ["accuracy_vs_epoch.png", "accuracy_vs_time.png"]
    for name, x_key in zip(figures, ("epoch", "time"), strict=True):
        _report.plot_accuracy(runs, out / name, x_key=x_key, title=title)
    _report.plot_alignment(runs, out / _report.ALIGNMENT_FIGURE, title=title)
    report = _report.report_markdown(config=config, runs=runs, figures=figures)
    write_atomic(out / "report.md", report)
    return _report.text_table(runs)


def _status(record: dict[str, Any]) -> str:
    return (
        f"test acc {record['test_acc']:.4f}, train acc {record['train_acc']:.4f}, "
        f"{record['wall_s']:.0f} s" + (" (diverged)" if record["diverged"] else "")
    )


def main(argv: list[str] | None = None) -> None:
    """Run the experiment (`runner.run_main`: clean Ctrl-C, exit status 130)."""
    runner.run_main(run, argv)


def run(argv: list[str]) -> None:
    """The experiment; see the module docstring."""
    args = build_parser().parse_args(argv)
    runner.start_processes(args)  # before anything touches a device
    settings = resolve(args)
    runner.check_batch_split(settings.batch_size)

    from ._train import train_run

    dataset, out = runner.open_output(settings, "local_losses")
    checkpointing = runner.checkpointing(args, out)
    standardize = dataset.pixel_stats()
    parts = {method: registry.method_parts(method) for method in settings.methods}
    config = {
        "preset": settings.preset,
        "model": settings.model,
        "arch": settings.arch,
        "methods": {
            method: {
                "objective": parts[method][0],
                "estimator": parts[method][1],
                "optimizer": settings.optimizer,
                "lr": settings.lrs[method],
                "schedule": settings.schedule,
                "num_tangents": _num_tangents(method, settings),
                "tangents": _tangents(method, settings),
            }
            for method in settings.methods
        },
        "lr_rationale": LR_RATIONALE,
        "epochs": settings.epochs,
        "alignment_keys": settings.alignment_keys,
        "seeds": list(range(settings.seeds)),
        "batch_size": settings.batch_size,
        "input_standardization": list(standardize),
        "dataset": runner.dataset_info(dataset, "test"),
        "data_dir": settings.data_dir,
        "out": str(out),
        "command": runner.command("local_losses", argv),
        **runner.machine(),
    }
    if runner.is_writer():
        write_json(out / "config.json", config)

    cache = runner.Cache()

    runs = runner.train_grid(
        grid(settings, dataset),
        out / "runs.jsonl",
        lambda group: [
            train_run(
                group[0],
                dataset,
                progress=True,
                cache=cache,
                standardize=standardize,
                checkpointing=checkpointing,
                alignment_keys=settings.alignment_keys,
            )
        ],
        label=lambda config: f"{config.method} seed {config.seed}",
        status=_status,
    )

    if not runner.is_writer():
        return
    table = write_outputs(out, config, runs)
    print(f"\nDataset: {dataset.name} (requested {dataset.requested})")
    print(table)
    print(f"\nOutputs in {out}")
