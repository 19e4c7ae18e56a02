"""Time to loss, from finished training runs: T/T_b against backprop + Adam, the
loss reached by given wall times, and the gap closed at equal wall time."""

from typing import Any

import numpy as np


def run_label(config: dict[str, Any]) -> str:
    """`estimator + optimizer (lr …)`: a method, whatever its seed."""
    return f"{config['estimator']} + {config['optimizer']} (lr {config['lr']:g})"


def _first_time_below(run: dict[str, Any], target: float) -> float | None:
    """The first wall time at which `run`'s validation loss is at most `target`."""
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


PER_SEED = (
    "ratios",
    "loss_at_T_b",
    "loss_at_backprop_end",
    "loss_at_T_f",
    "gap_closed_at_T_f",
    "final_val_loss",
    "final_val_accuracy",
    "seconds_per_iteration",
)
"""The per-seed lists of a method's entry; each also gets `<key>_mean`, `_std`."""


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
        entry = methods.setdefault(run_label(run["config"]), _empty_entry(run))
        _add_run(entry, run, reference[seed], forward_reference.get(seed))
    for entry in methods.values():
        for key in PER_SEED:
            values = [v for v in entry[key] if v is not None]
            entry[f"{key}_mean"] = float(np.mean(values)) if values else None
            entry[f"{key}_std"] = float(np.std(values)) if values else None
    return methods


def _empty_entry(run: dict[str, Any]) -> dict[str, Any]:
    config = {k: run["config"][k] for k in ("estimator", "optimizer", "lr")}
    return {
        "config": config,
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
    }


def _add_run(
    entry: dict[str, Any],
    run: dict[str, Any],
    backprop: dict[str, Any],
    forward: dict[str, Any] | None,
) -> None:
    """Add one seed's numbers against backprop + Adam (and forward + Adam, when
    that seed has it) of the same seed."""
    finite = [
        (loss, t)
        for t, loss in zip(backprop["time"], backprop["val_loss"], strict=True)
        if loss is not None
    ]
    best_loss, t_b = min(finite)
    entry["seeds"] += 1
    entry["diverged"] += int(run["diverged"])
    t = _first_time_below(run, best_loss)
    if t is not None:
        entry["reached"] += 1
        entry["ratios"].append(t / t_b)
    entry["loss_at_T_b"].append(_loss_at_time(run, t_b))
    entry["loss_at_backprop_end"].append(_loss_at_time(run, backprop["time"][-1]))
    if forward is not None:
        loss, closed = _gap_closed(run, backprop, forward)
        entry["loss_at_T_f"].append(loss)
        entry["gap_closed_at_T_f"].append(closed)
    entry["final_val_loss"].append(run["final_val_loss"])
    entry["final_val_accuracy"].append(run["final_val_accuracy"])
    if run["iteration"]:
        entry["seconds_per_iteration"].append(run["time"][-1] / run["iteration"][-1])
