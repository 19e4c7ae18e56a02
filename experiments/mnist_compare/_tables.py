"""The summary rows as text: the stdout table, the Markdown table of `report.md` and
`summary.csv`."""

import csv
import io
from typing import Any

from ._summary import BACKPROP, per_seed_text


def seed_count(count: int) -> str:
    """The count in words: "1 seed", "2 seeds"."""
    return f"{count} seed" if count == 1 else f"{count} seeds"


def _fmt(value: Any, spec: str = ".4f") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def ratio_text(row: dict[str, Any]) -> str:
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


def _mean_pm(mean: float | None, std: float | None, finished: int) -> str:
    """`mean ± std`, or `mean (1 seed)` when there is no spread to show."""
    if mean is None:
        return "-"
    if std is None:
        return f"{mean:.4f} ({seed_count(finished)})"
    return f"{mean:.4f} ± {std:.4f}"


def table_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    header = [
        "optimizer",
        "lr",
        "estimator",
        "val loss",
        "val acc",
        "diverged",
        "step (ms)",
        "T_b (s)",
        "T_f (s)",
        "T_f/T_b",
        "T_f/T_b wall",
    ]
    lines = [header]
    for row in rows:
        finished = row["seeds"] - row["diverged"]
        is_backprop = row["estimator"] == BACKPROP
        wall = row["T_f/T_b wall"]
        lines.append(
            [
                row["optimizer"],
                f"{row['lr']:g}",
                row["estimator"],
                _mean_pm(row["val_loss_mean"], row["val_loss_std"], finished),
                _mean_pm(row["val_accuracy_mean"], row["val_accuracy_std"], finished),
                f"{row['diverged']}/{row['seeds']}"
                + (f" @{row['diverged_at']:.0f}" if row["diverged"] else ""),
                "-" if row["step_time"] is None else f"{1e3 * row['step_time']:.2f}",
                _fmt(row["T_b"], ".2f"),
                "-" if is_backprop else _fmt(row["T_f"], ".2f"),
                "-" if is_backprop else ratio_text(row),
                "-" if is_backprop or wall is None else f"{wall:.2f}",
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
    """The rows as CSV; `per_seed` as one line (`per_seed_text`)."""
    buffer = io.StringIO()
    fields = list(rows[0]) if rows else ["optimizer"]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {
                k: "" if v is None else per_seed_text(v) if k == "per_seed" else v
                for k, v in row.items()
            }
        )
    return buffer.getvalue()
