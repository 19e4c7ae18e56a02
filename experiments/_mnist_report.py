"""Summaries of the MNIST comparison: T_b / T_f, per-configuration statistics,
`summary.csv`, the stdout table and `report.md`."""

import csv
import io
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
    if not values:
        return None, None
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), std


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (optimizer, lr, estimator): mean ± std over seeds of the final
    validation loss and accuracy (non-diverged runs), the number diverged, and
    T_b, T_f, T_f/T_b against backprop with the same optimizer, lr and seed."""
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
        t_bs, t_fs, ratios, compared = [], [], [], 0
        gaps, common = [], []
        for run in group:
            reference = backprop.get((optimizer, lr, run["config"]["seed"]))
            if reference is None:
                continue
            matched = loss_at_common_iteration(reference, run)
            if matched is not None and matched[1] > 0:
                common.append(matched[0])
                gaps.append(matched[2] / matched[1] - 1)
            if reference["diverged"]:
                continue
            t_b, t_f = time_to_match(
                reference["time"],
                reference["val_loss"],
                run["time"],
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
                "T_b": _mean_std(t_bs)[0],
                "T_f": _mean_std(t_fs)[0],
                "T_f/T_b": _mean_std(ratios)[0],
                "reached": f"{len(t_fs)}/{compared}",
                "diverged_at": _mean_std(
                    [run["diverged_at"] for run in group if run["diverged"]]
                )[0],
                "common_iteration": min(common) if common else None,
                "val_gap_at_common_iteration": _mean_std(gaps)[0],
            }
        )
    rows.sort(key=lambda r: (r["optimizer"], r["lr"], r["estimator"] != BACKPROP))
    return rows


def _fmt(value: Any, spec: str = ".4f") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def _ratio(row: dict[str, Any]) -> str:
    """T_f/T_b as printed: "never" when no seed reached backprop's best loss."""
    compared = int(row["reached"].split("/")[1])
    if compared == 0:
        return "-"
    if row["T_f/T_b"] is None:
        return "never"
    text = f"{row['T_f/T_b']:.2f}"
    return (
        text
        if row["reached"].split("/")[0] == str(compared)
        else (f"{text} ({row['reached']} seeds)")
    )


def table_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    header = [
        "optimizer",
        "lr",
        "estimator",
        "val loss",
        "val acc",
        "diverged",
        "T_b (s)",
        "T_f (s)",
        "T_f/T_b",
    ]
    lines = [header]
    for row in rows:
        loss = (
            "-"
            if row["val_loss_mean"] is None
            else f"{row['val_loss_mean']:.4f} ± {row['val_loss_std']:.4f}"
        )
        acc = (
            "-"
            if row["val_accuracy_mean"] is None
            else f"{row['val_accuracy_mean']:.4f} ± {row['val_accuracy_std']:.4f}"
        )
        is_backprop = row["estimator"] == BACKPROP
        lines.append(
            [
                row["optimizer"],
                f"{row['lr']:g}",
                row["estimator"],
                loss,
                acc,
                f"{row['diverged']}/{row['seeds']}"
                + (f" @{row['diverged_at']:.0f}" if row["diverged"] else ""),
                _fmt(row["T_b"], ".2f"),
                "-" if is_backprop else _fmt(row["T_f"], ".2f"),
                "-" if is_backprop else _ratio(row),
            ]
        )
    return lines


def text_table(rows: list[dict[str, Any]]) -> str:
    lines = table_rows(rows)
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = []
    for index, line in enumerate(lines):
        out.append(
            "  ".join(
                cell.ljust(w) for cell, w in zip(line, widths, strict=True)
            ).rstrip()
        )
        if index == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = table_rows(rows)
    out = ["| " + " | ".join(lines[0]) + " |", "|" + "---|" * len(lines[0])]
    out += ["| " + " | ".join(line) + " |" for line in lines[1:]]
    return "\n".join(out)


def summary_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    fields = list(rows[0]) if rows else ["optimizer"]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buffer.getvalue()


def _is_forward(estimator: str) -> bool:
    return estimator.startswith("fwd-")


def _divergent(rows: list[dict[str, Any]], preset: dict[str, float]) -> set[tuple]:
    """(optimizer, lr) pairs meant to diverge (the preset's) or where every
    forward-gradient run diverged."""
    pairs = {(opt, lr) for opt, lr in preset.items()}
    for row in rows:
        if _is_forward(row["estimator"]) and row["diverged"] == row["seeds"]:
            pairs.add((row["optimizer"], row["lr"]))
    return pairs


def _final_loss_pairs(
    rows: list[dict[str, Any]], optimizer: str, divergent: set[tuple]
) -> list[tuple[dict, dict]]:
    """(forward row, backprop row) at the same lr, outside the divergent lrs."""
    by_key = {(r["optimizer"], r["lr"], r["estimator"]): r for r in rows}
    pairs = []
    for row in rows:
        if row["optimizer"] != optimizer or not _is_forward(row["estimator"]):
            continue
        if (optimizer, row["lr"]) in divergent or row["val_loss_mean"] is None:
            continue
        reference = by_key.get((optimizer, row["lr"], BACKPROP))
        if reference and reference["val_loss_mean"] is not None:
            pairs.append((row, reference))
    return pairs


def _per_iteration_part(row: dict[str, Any]) -> str:
    gap = row["val_gap_at_common_iteration"]
    text = (
        f"{row['estimator']} at lr {row['lr']:g}: validation loss {100 * gap:+.1f}% "
        f"vs backprop at iteration {row['common_iteration']}"
    )
    if row["diverged"]:
        text += (
            f", then {row['diverged']}/{row['seeds']} runs diverged (mean iteration "
            f"{row['diverged_at']:.0f})"
        )
    return text


def claims(rows: list[dict[str, Any]], divergent_lrs: dict[str, float]) -> list[str]:
    """One sentence per claim of the paper, saying whether these runs support it.

    "Like backprop" means a final validation loss within 10% of backprop's at the
    same lr and iteration count; "much slower" more than 10% above it."""
    divergent = _divergent(rows, divergent_lrs)
    preset_divergent = set(divergent_lrs.items())
    sentences = []

    sgd = [
        row
        for row in rows
        if row["optimizer"] == "sgd"
        and _is_forward(row["estimator"])
        and ("sgd", row["lr"]) not in preset_divergent
        and row["val_gap_at_common_iteration"] is not None
    ]
    if sgd:
        close = all(abs(row["val_gap_at_common_iteration"]) <= 0.1 for row in sgd)
        parts = "; ".join(_per_iteration_part(row) for row in sgd)
        verdict = "supports" if close else "does not support"
        sentences.append(
            "**Forward gradient with SGD converges like backprop per iteration:** "
            f"this run {verdict} it ({parts}; 'like' = validation loss within 10% "
            "of backprop's at the same iteration, the last one both reached)."
        )
    else:
        sentences.append(
            "**Forward gradient with SGD converges like backprop per iteration:** "
            "not tested (no SGD learning rate with both estimators recorded)."
        )

    adam = _final_loss_pairs(rows, "adam", divergent)
    if adam:
        slower = all(
            row["val_loss_mean"] - ref["val_loss_mean"] > 0.1 * ref["val_loss_mean"]
            for row, ref in adam
        )
        parts = "; ".join(
            f"{row['estimator']} at lr {row['lr']:g}: {row['val_loss_mean']:.3f} "
            f"vs backprop {ref['val_loss_mean']:.3f}, T_f/T_b {_ratio(row)}"
            for row, ref in adam
        )
        verdict = "supports" if slower else "does not support"
        sentences.append(
            "**Forward gradient with Adam is much slower than backprop with Adam:** "
            f"this run {verdict} it ({parts}; 'much slower' = final validation "
            "loss more than 10% above backprop's)."
        )
    else:
        sentences.append(
            "**Forward gradient with Adam is much slower than backprop with Adam:** "
            "not tested (no Adam learning rate where both ran without diverging)."
        )

    tested = False
    for optimizer, lr in sorted(divergent):
        forward = [
            row
            for row in rows
            if row["optimizer"] == optimizer
            and row["lr"] == lr
            and _is_forward(row["estimator"])
        ]
        if not forward:
            continue
        tested = True
        diverged = all(row["diverged"] == row["seeds"] for row in forward)
        counts = ", ".join(
            f"{row['estimator']} {row['diverged']}/{row['seeds']} runs diverged"
            + (f" (mean iteration {row['diverged_at']:.0f})" if row["diverged"] else "")
            for row in forward
        )
        reference = next(
            (
                row
                for row in rows
                if (row["optimizer"], row["lr"], row["estimator"])
                == (optimizer, lr, BACKPROP)
            ),
            None,
        )
        backprop_note = (
            f"; backprop at the same lr: {reference['diverged']}/"
            f"{reference['seeds']} diverged"
            if reference
            else ""
        )
        verdict = "supports" if diverged else "does not support"
        sentences.append(
            f"**A larger learning rate makes forward gradient diverge "
            f"({optimizer}, lr {lr:g}):** this run {verdict} it ({counts}"
            f"{backprop_note})."
        )
    if not tested:
        sentences.append(
            "**A larger learning rate makes forward gradient diverge:** not tested "
            "(no learning rate in this grid made a forward-gradient run diverge)."
        )
    return sentences


def report_markdown(
    *,
    title: str,
    config: dict[str, Any],
    rows: list[dict[str, Any]],
    figures: list[str],
    divergent_lrs: dict[str, float],
    lr_rationale: str,
) -> str:
    dataset = config["dataset"]
    lines = [
        f"# {title}",
        "",
        f"Dataset actually used: **{dataset['name']}** (requested "
        f"`{dataset['requested']}`; source: {dataset['source']}; validation: "
        f"{dataset['validation']}; {dataset['num_train']} training / "
        f"{dataset['num_val']} validation images).",
        "",
        f"Model `{config['model']}`, {config['iterations']} iterations of minibatch "
        f"{config['batch_size']}, {len(config['seeds'])} seeds, validation every "
        f"{config['eval_every']} iterations. Command: `{config['command']}`.",
        "",
        "## Summary",
        "",
        "Final validation loss / accuracy: mean ± std over the seeds that did not "
        "diverge. T_b: training time at which backprop reaches its lowest "
        "validation loss; T_f: first time the forward-gradient run reaches that "
        "loss (same optimizer, lr and seed); T_f/T_b averaged over seeds, 'never' "
        "when no seed reaches it. Times exclude compilation and evaluation.",
        "",
        markdown_table(rows),
        "",
        "## Claims of the paper",
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
