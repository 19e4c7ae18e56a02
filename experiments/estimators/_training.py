"""Part 2, training: the design sweep and the MNIST runs (the loop of
`experiments.mnist_compare`), each appended to a JSONL file as it finishes so that a
rerun resumes."""

from pathlib import Path

from fwdeqx import data

from ..mnist_compare import RunConfig, train_run
from ..runner import Cache, data_identity, read_runs, train_grid
from ._presets import Preset


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
    dataset: data.Dataset,
    part: str = "training",
    best_lrs: dict[str, float] | None = None,
) -> list[RunConfig]:
    """The runs of `part`: the design sweep, or every training run and seed."""
    best_lrs = best_lrs or {}
    identity = data_identity(dataset)

    def lr_for(optimizer: str, lr: float | None) -> float:
        if lr is not None:
            return lr
        if optimizer not in best_lrs:
            raise SystemExit(
                f"error: no design run for {optimizer!r}; run `--part design` first"
            )
        return best_lrs[optimizer]

    if part == "design":
        runs = [("fwd-gaussian", optimizer, lr, 0) for optimizer, lr in preset.design]
    else:
        runs = [
            (estimator, optimizer, lr_for(optimizer, lr), seed)
            for seed in range(seeds)
            for estimator, optimizer, lr in preset.training_runs
        ]
    return [
        RunConfig(
            dataset="mnist-5k",
            data=identity,
            model=preset.training_model,
            optimizer=optimizer,
            lr=lr,
            estimator=estimator,
            seed=seed,
            iterations=preset.iterations,
            eval_every=preset.eval_every,
        )
        for estimator, optimizer, lr, seed in runs
    ]


def train_all(
    preset: Preset,
    seeds: int,
    dataset: data.Dataset,
    out: Path,
    part: str = "training",
    train: bool = True,
) -> list[dict]:
    """Train the runs of `part` not yet in `out` (none when `train` is false) and
    return the records of all its finished runs, in the presets' order."""
    cache = Cache()
    return train_grid(
        _run_configs(preset, seeds, dataset, part, best_design_lrs(out)),
        out / ("design_runs.jsonl" if part == "design" else "runs.jsonl"),
        lambda group: [train_run(group[0], dataset, cache=cache)],
        label=lambda config: config.run_id,
        status=lambda record: (
            f"final val loss {record['final_val_loss']}, train "
            f"{record['train_time']:.1f}s"
        ),
        groups=(lambda pending: [[c] for c in pending]) if train else lambda _: [],
    )
