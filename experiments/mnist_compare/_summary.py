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


BLOWUP_FACTOR = 1.1
"""A run that diverged *blows up* at its first validation record that is non-finite
or more than this factor above the lowest validation loss recorded before it
(the loss at initialisation included); when no record does, at the iteration it
diverged. A run that did not diverge never blows up (a slow rise is overfitting,
not a blow-up)."""


def blowup_iteration(run: dict[str, Any]) -> int | None:
    """The iteration at which `run` blows up (see `BLOWUP_FACTOR`), or `None`."""
    if not run["diverged"]:
        return None
    lowest = run.get("initial_val_loss")
    lowest = math.inf if lowest is None else lowest
    for iteration, loss in zip(run["iteration"], run["val_loss"], strict=True):
        if loss is None or not math.isfinite(loss) or loss > BLOWUP_FACTOR * lowest:
            return iteration
        lowest = min(lowest, loss)
    return run["diverged_at"]


def loss_at_common_iteration(
    backprop: dict[str, Any], forward: dict[str, Any], before: int | None = None
) -> tuple[int, float, float] | None:
    """`(iteration, backprop val loss, forward val loss)` at the last record both
    runs reached with finite losses before either blows up (`blowup_iteration`)
    and before iteration `before` when given, or `None`."""
    limits = [
        limit
        for limit in (blowup_iteration(backprop), blowup_iteration(forward), before)
        if limit is not None
    ]
    end = min(limits, default=math.inf)
    forward_losses = dict(zip(forward["iteration"], forward["val_loss"], strict=True))
    best = None
    for iteration, loss in zip(
        backprop["iteration"], backprop["val_loss"], strict=True
    ):
        other = forward_losses.get(iteration)
        if iteration >= end:
            break
        if None not in (loss, other) and math.isfinite(loss + other):
            best = (iteration, loss, other)
    return best


def compare_seeds(
    backprop: dict[int, dict[str, Any]], group: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Per seed of `group` (the runs of one forward configuration) with a backprop
    run of the same seed: `seed`, the compared `iteration` (the last common record
    before a blow-up, `None` when there is none), the `forward` and `backprop`
    validation losses there, backprop's `drop` from its initial validation loss
    (`None` when that is unknown), the forward run's `blowup` and `diverged_at`
    iterations (`None` when it did not diverge) and both runs' final validation
    losses (`final_forward`, `final_backprop`; `None` for a diverged run)."""
    compared = []
    for run in group:
        seed = run["config"]["seed"]
        reference = backprop.get(seed)
        if reference is None:
            continue
        matched = loss_at_common_iteration(reference, run)
        iteration, bp, fwd = matched if matched else (None, None, None)
        initial = reference.get("initial_val_loss")
        compared.append(
            {
                "seed": seed,
                "iteration": iteration,
                "forward": fwd,
                "backprop": bp,
                "drop": None if None in (initial, bp) else initial - bp,
                "blowup": blowup_iteration(run),
                "diverged_at": run["diverged_at"] if run["diverged"] else None,
                "final_forward": run["final_val_loss"],
                "final_backprop": reference["final_val_loss"],
            }
        )
    return compared


def _at_iteration(
    backprop: dict[int, dict[str, Any]], group: list[dict[str, Any]], iteration: int
) -> tuple[list[float], list[float]]:
    """(forward / backprop - 1 per seed, backprop's drop per seed) at `iteration`,
    an iteration every seed reached before blowing up."""
    gaps, drops = [], []
    for run in group:
        reference = backprop.get(run["config"]["seed"])
        if reference is None:
            continue
        matched = loss_at_common_iteration(reference, run, before=iteration + 1)
        if matched is None or matched[0] != iteration or matched[1] <= 0:
            continue
        gaps.append(matched[2] / matched[1] - 1)
        if reference.get("initial_val_loss") is not None:
            drops.append(reference["initial_val_loss"] - matched[1])
    return gaps, drops


def per_seed_text(compared: list[dict[str, Any]]) -> str:
    """`compare_seeds`'s entries as one line (the `per_seed` column of
    summary.csv)."""
    parts = []
    for entry in compared:
        if entry["iteration"] is None:
            text = f"seed {entry['seed']}: no record before its blow-up"
        else:
            text = (
                f"seed {entry['seed']}: iteration {entry['iteration']}, forward "
                f"{entry['forward']:.4f}, backprop {entry['backprop']:.4f}"
            )
        if entry["blowup"] is not None:
            text += f", blew up at {entry['blowup']}"
        parts.append(text)
    return "; ".join(parts)


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


def group_runs(runs: list[dict[str, Any]]) -> dict[tuple, list[dict]]:
    """The runs by configuration (optimizer, lr, estimator), in the runs' order."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        c = run["config"]
        groups[(c["optimizer"], c["lr"], c["estimator"])].append(run)
    return groups


def summarise(
    runs: list[dict[str, Any]],
    step_times: dict[str, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """One row per (optimizer, lr, estimator): mean ± std over seeds of the final
    validation loss and accuracy (non-diverged runs), the number diverged, and
    T_b, T_f, T_f/T_b against backprop with the same optimizer, lr and seed, on the
    step-time axis (`run_times`) and, beside it, on the raw wall-time axis."""
    from ._train import step_time_key

    backprop = {
        (c["optimizer"], c["lr"], c["seed"]): run
        for run in runs
        if (c := run["config"])["estimator"] == BACKPROP
    }
    rows = []
    for (optimizer, lr, estimator), group in group_runs(runs).items():
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
        references = {
            seed: run
            for (opt, rate, seed), run in backprop.items()
            if (opt, rate) == (optimizer, lr)
        }
        per_seed = compare_seeds(references, group)
        reached = [e["iteration"] for e in per_seed if e["iteration"] is not None]
        common = min(reached) if len(reached) == len(per_seed) and reached else None
        gaps, drops = (
            ([], []) if common is None else _at_iteration(references, group, common)
        )
        for run in group:
            reference = references.get(run["config"]["seed"])
            if reference is None or reference["diverged"]:
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
                "common_iteration": common,
                "val_gap_at_common_iteration": _mean_std(gaps)[0],
                "gap_seeds": len(gaps),
                "backprop_drop_at_common_iteration": _mean_std(drops)[0],
                "diverged_seeds": ", ".join(
                    f"seed {run['config']['seed']} at {run['diverged_at']}"
                    for run in group
                    if run["diverged"]
                ),
                "per_seed": per_seed,
            }
        )
    rows.sort(key=lambda r: (r["optimizer"], r["lr"], r["estimator"] != BACKPROP))
    return rows
