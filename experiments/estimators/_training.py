"""Part 2, training: the design sweep and the MNIST runs (the loop of
`experiments.mnist_compare`), each appended to a JSONL file as it finishes so that a
rerun resumes."""

import time
from pathlib import Path

from fwdeqx import data

from .._mnist_train import RunConfig, data_identity, train_run
from .._report import append_jsonl, read_runs
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
        return [
            RunConfig(
                dataset="mnist-5k",
                data=identity,
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
            data=identity,
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
    dataset: data.Dataset,
    out: Path,
    part: str = "training",
    train: bool = True,
) -> list[dict]:
    """Train the runs of `part` not yet in `out` (none when `train` is false) and
    return the records of all its finished runs, in the presets' order."""
    path = out / ("design_runs.jsonl" if part == "design" else "runs.jsonl")
    finished = read_runs(path)
    cache: dict = {}
    configs = _run_configs(preset, seeds, dataset, part, best_design_lrs(out))
    for index, config in enumerate(configs):
        if config.run_id in finished or not train:
            continue
        start = time.perf_counter()
        record = train_run(
            config, dataset, batches=data.batches, to_float=data.to_float, cache=cache
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
