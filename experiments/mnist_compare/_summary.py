"""The MNIST comparison's summary rows: T_b / T_f and per-configuration statistics
over seeds, one row per (optimizer, lr, estimator)."""

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from typing import Any


BACKPROP = "backprop"


def time_to_match(
    backprop_times: Sequence[float],
    backprop_val_losses: Sequence[float | None],
    forward_times: Sequence[float],
    forward_val_losses: Sequence[float | None],
) -> tuple[float | None, float | None]:
    """`(T_b, T_f)`: T_b is the time at which backprop reaches its lowest validation
    loss; T_f the first time forward gradient reaches that loss (`None`, "never",
    when it does not). `T_b` is `None` when backprop has no finite loss."""
    finite = [
        (loss, time)
        for time, loss in zip(backprop_times, backprop_val_losses, strict=True)
        if loss is not None and math.isfinite(loss)
    ]
    if not finite:
        return None, None
    best_loss, t_b = min(finite, key=lambda pair: pair[0])  # first time at the min
    for time, loss in zip(forward_times, forward_val_losses, strict=True):
        if loss is not None and math.isfinite(loss) and loss <= best_loss:
            return t_b, time
    return t_b, None


def loss_at_common_iteration(
    backprop: dict[str, Any], forward: dict[str, Any]
) -> tuple[int, float, float] | None:
    """`(iteration, backprop val loss, forward val loss)` at the last record both
    runs reached with finite losses (a diverged run stops early), or `None`."""
    forward_losses = dict(zip(forward["iteration"], forward["val_loss"], strict=True))
    best = None
    for iteration, loss in zip(
        backprop["iteration"], backprop["val_loss"], strict=True
    ):
        other = forward_losses.get(iteration)
        if None not in (loss, other) and math.isfinite(loss + other):
            best = (iteration, loss, other)
    return best


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation; the std is `None` for one value (no
    spread to report), both `None` for none."""
    if not values:
        return None, None
    std = statistics.stdev(values) if len(values) > 1 else None
    return statistics.fmean(values), std


def run_times(
    run: dict[str, Any], step_times: dict[str, dict[str, Any]] | None
) -> list[float]:
    """A run's time axis: iteration × its configuration's median step time (measured
    interleaved, see `measure_step_times`) when known, else the raw wall time."""
    from ._train import step_time_key

    measured = (step_times or {}).get(step_time_key(run["config"]))
    if measured is None:
        return list(run["time"])
    return [iteration * measured["step_time"] for iteration in run["iteration"]]


def summarise(
    runs: list[dict[str, Any]],
    step_times: dict[str, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """One row per (optimizer, lr, estimator): mean ± std over seeds of the final
    validation loss and accuracy (non-diverged runs), the number diverged, and
    T_b, T_f, T_f/T_b against backprop with the same optimizer, lr and seed, on the
    step-time axis (`run_times`) and, beside it, on the raw wall-time axis."""
    from ._train import step_time_key

    by_config: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        c = run["config"]
        by_config[(c["optimizer"], c["lr"], c["estimator"])].append(run)
    backprop = {
        (c["optimizer"], c["lr"], c["seed"]): run
        for run in runs
        if (c := run["config"])["estimator"] == BACKPROP
    }
    rows = []
    for (optimizer, lr, estimator), group in by_config.items():
        group = sorted(group, key=lambda run: run["config"]["seed"])
        finished = [run for run in group if not run["diverged"]]
        loss_mean, loss_std = _mean_std([run["final_val_loss"] for run in finished])
        acc_mean, acc_std = _mean_std([run["final_val_accuracy"] for run in finished])
        initial = [
            run["initial_val_loss"]
            for run in group
            if run.get("initial_val_loss") is not None
        ]
        t_bs, t_fs, ratios, wall_ratios, compared = [], [], [], [], 0
        gaps, common, drops = [], [], []
        for run in group:
            reference = backprop.get((optimizer, lr, run["config"]["seed"]))
            if reference is None:
                continue
            matched = loss_at_common_iteration(reference, run)
            if matched is not None and matched[1] > 0:
                common.append(matched[0])
                gaps.append(matched[2] / matched[1] - 1)
                if reference.get("initial_val_loss") is not None:
                    drops.append(reference["initial_val_loss"] - matched[1])
            if reference["diverged"]:
                continue
            t_b, t_f = time_to_match(
                run_times(reference, step_times),
                reference["val_loss"],
                run_times(run, step_times),
                run["val_loss"],
            )
            if t_b is None:
                continue
            t_bs.append(t_b)
            if estimator == BACKPROP:
                continue
            compared += 1
            if t_f is not None:
                t_fs.append(t_f)
                ratios.append(t_f / t_b if t_b > 0 else math.inf)
            wall_b, wall_f = time_to_match(
                reference["time"], reference["val_loss"], run["time"], run["val_loss"]
            )
            if wall_b and wall_f is not None:
                wall_ratios.append(wall_f / wall_b)
        measured = (step_times or {}).get(
            step_time_key({"optimizer": optimizer, "estimator": estimator})
        )
        rows.append(
            {
                "optimizer": optimizer,
                "lr": lr,
                "estimator": estimator,
                "seeds": len(group),
                "diverged": len(group) - len(finished),
                "val_loss_mean": loss_mean,
                "val_loss_std": loss_std,
                "val_accuracy_mean": acc_mean,
                "val_accuracy_std": acc_std,
                "initial_val_loss": _mean_std(initial)[0],
                "step_time": None if measured is None else measured["step_time"],
                "T_b": _mean_std(t_bs)[0],
                "T_f": _mean_std(t_fs)[0],
                "T_f/T_b": _mean_std(ratios)[0],
                "reached": f"{len(t_fs)}/{compared}",
                "T_f/T_b wall": _mean_std(wall_ratios)[0],
                "diverged_at": _mean_std(
                    [run["diverged_at"] for run in group if run["diverged"]]
                )[0],
                "common_iteration": min(common) if common else None,
                "val_gap_at_common_iteration": _mean_std(gaps)[0],
                "gap_seeds": len(gaps),
                "backprop_drop_at_common_iteration": _mean_std(drops)[0],
            }
        )
    rows.sort(key=lambda r: (r["optimizer"], r["lr"], r["estimator"] != BACKPROP))
    return rows
