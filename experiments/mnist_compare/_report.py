"""Summaries of the MNIST comparison: T_b / T_f, per-configuration statistics,
`summary.csv`, the stdout table and `report.md`.

The pieces live in `_summary` (the rows), `_tables` (the tables and
`summary.csv`) and `_verdicts` (the claims); this module renders `report.md`
and re-exports them."""

from typing import Any

from ._summary import (
    BACKPROP as BACKPROP,
    loss_at_common_iteration as loss_at_common_iteration,
    run_times as run_times,
    summarise as summarise,
    time_to_match as time_to_match,
)
from ._tables import (
    markdown_table as markdown_table,
    seed_count,
    summary_csv as summary_csv,
    table_rows as table_rows,
    text_table as text_table,
)
from ._verdicts import (
    LIKE as LIKE,
    MIN_LOSS_DROP as MIN_LOSS_DROP,
    MIN_SEEDS as MIN_SEEDS,
    MUCH_SLOWER as MUCH_SLOWER,
    claims as claims,
)


def _timing_text(timing: dict[str, Any] | None) -> str:
    if not timing:
        return (
            "Times are raw training wall time (compilation and evaluation "
            "excluded), so they depend on the machine's load while each run ran."
        )
    machine = timing["environment"]
    return (
        "**How time was measured.** T_b and T_f are on a time axis of iterations × "
        "the median time of one training step of that optimizer and estimator "
        f"('step (ms)'). The step times were measured {timing['measured_at']} on "
        f"{machine['cpu_model']}, {machine['cpu_count']} CPUs, jax "
        f"{machine['jax']} on {machine['jax_devices']}, with the estimators "
        f"interleaved: {timing['timed']['rounds']} rounds of "
        f"{timing['timed']['steps']} steps each, round-robin over the (optimizer, "
        "estimator) pairs, median over the rounds (`step_times.json`), so a burst "
        "of load on the machine slows every estimator alike instead of one run. "
        "A rerun reuses them (`--retime-steps` measures again). 'T_f/T_b wall' is "
        "the same ratio on the raw wall time recorded while each run trained "
        "(`time` in runs.jsonl; compilation and evaluation excluded), which "
        "depends on the load at the time."
    )


def report_markdown(
    *,
    title: str,
    config: dict[str, Any],
    rows: list[dict[str, Any]],
    figures: list[str],
    divergent_lrs: dict[str, float],
    lr_rationale: str,
    timing: dict[str, Any] | None = None,
) -> str:
    """report.md; `timing` is the record of step_times.json (`None`: the time
    axis is raw wall time)."""
    dataset = config["dataset"]
    fingerprint = dataset.get("fingerprint")
    lines = [
        f"# {title}",
        "",
        f"Dataset actually used: **{dataset['name']}** (requested "
        f"`{dataset['requested']}`; source: {dataset['source']}; validation: "
        f"{dataset['validation']}; {dataset['num_train']} training / "
        f"{dataset['num_val']} validation images"
        + (f"; content SHA-256 `{fingerprint[:16]}…`" if fingerprint else "")
        + ").",
        "",
        f"Model `{config['model']}`, {config['iterations']} iterations of minibatch "
        f"{config['batch_size']}, {seed_count(len(config['seeds']))}, validation every "
        f"{config['eval_every']} iterations. Command: `{config['command']}`.",
        "",
        "## Summary",
        "",
        "Final validation loss / accuracy: mean ± sample std over the seeds that "
        "did not diverge (with one seed, the value and '(1 seed)'). T_b: time at "
        "which backprop reaches its lowest validation loss; T_f: first time the "
        "forward-gradient run reaches that loss (same optimizer, lr and seed); "
        "T_f/T_b averaged over seeds, 'never' when no seed reaches it.",
        "",
        _timing_text(timing),
        "",
        markdown_table(rows),
        "",
        "## Claims of the paper",
        "",
        f"A verdict needs at least {MIN_SEEDS} seeds and backprop's validation loss "
        f"at least {MIN_LOSS_DROP} below its value at initialisation where the "
        "runs are compared; below that the claim is 'inconclusive', with the "
        "reason.",
        "",
    ]
    lines += [f"- {sentence}" for sentence in claims(rows, divergent_lrs)]
    lines += ["", "## Learning rates", "", lr_rationale, "", "## Figures", ""]
    lines += [f"![{name}]({name})" for name in figures]
    lines += [
        "",
        "## Beyond the papers",
        "",
        "Multi-tangent estimates (dense and rank-1 tangents, mean and projection), "
        "SPSA and `fwd_adam` against backprop + Adam on the same MLP: "
        "`python -m experiments.estimators`, which writes "
        "`results/estimators/report.md` (see also docs/beyond.md).",
    ]
    return "\n".join(lines) + "\n"
