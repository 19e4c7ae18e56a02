"""`report.md`: the time-to-loss and gradient-quality tables, from whichever of
`training.json` and `quality.json` exist."""

import json
from pathlib import Path
from typing import Any

from ._presets import QUALITY_METHODS


def _cell(entry: dict[str, Any], key: str, digits: int, scale: float = 1) -> str:
    """`key`'s mean ± std over seeds from `summarise_training`'s entry."""
    mean, std = entry[f"{key}_mean"], entry[f"{key}_std"]
    if mean is None:
        return "–"
    present = sum(v is not None for v in entry[key])
    if present < len(entry[key]):
        return f"{scale * mean:.{digits}f} ({present} of {len(entry[key])} seeds)"
    if present == 1:
        return f"{scale * mean:.{digits}f}"
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}"


def training_table(summary: dict[str, Any]) -> list[str]:
    """The time-to-loss table of `summarise_training`, as markdown lines."""
    lines = [
        "| method | seeds | reached T_b's loss | T/T_b | ms / step | val loss at T_b "
        "| val loss at T_f | gap closed at T_f | after the last step |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, entry in summary.items():
        cells = [
            label,
            str(entry["seeds"]),
            str(entry["reached"]),
            _cell(entry, "ratios", 2),
            _cell(entry, "seconds_per_iteration", 1, scale=1000),
            _cell(entry, "loss_at_T_b", 3),
            _cell(entry, "loss_at_T_f", 3),
            _cell(entry, "gap_closed_at_T_f", 2),
            _cell(entry, "final_val_loss", 3),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def quality_table(quality: dict[str, Any], checkpoint: int) -> list[str]:
    """Mean cosine to the true gradient per method and K, as markdown lines."""
    rows = [r for r in quality["results"] if r["checkpoint"] == checkpoint]
    methods = [m for m in QUALITY_METHODS if any(r["method"] == m for r in rows)]
    lines = [
        "| K | " + " | ".join(methods) + " | √(K/n) |",
        "|---:|" + "---:|" * (len(methods) + 1),
    ]
    for k in sorted({r["K"] for r in rows}):
        cosines = {r["method"]: r["cosine_mean"] for r in rows if r["K"] == k}
        cells = [f"{cosines[m]:.5f}" if m in cosines else "–" for m in methods]
        bound = quality["sqrt_K_over_n"][str(k)]
        lines.append(f"| {k} | " + " | ".join(cells) + f" | {bound:.5f} |")
    return lines


def write_report(out: Path) -> None:
    """`report.md` from whatever of `training.json` and `quality.json` exists."""
    lines = ["# Beyond the papers: measurements", ""]
    training_path, quality_path = out / "training.json", out / "quality.json"
    if training_path.exists():
        training = json.loads(training_path.read_text())
        lines += [
            "## Time to loss",
            "",
            f"Dataset {training['dataset']}, {training['iterations']} steps, "
            f"{training['seeds']} seeds; mean ± std over seeds. T_b: time at which "
            "backprop + Adam reaches its best validation loss (same seed); T: first "
            "time a method reaches that loss. T_f: the wall time of forward "
            "gradient + Adam's whole run; gap closed at T_f = (L_fwd+adam − L) / "
            "(L_fwd+adam − L_backprop+adam) with L the best validation loss reached "
            f"by T_f. Command: `{training['command']}`.",
            "",
            *training_table(training["methods"]),
            "",
            "![training](training.png)",
            "",
        ]
    if quality_path.exists():
        quality = json.loads(quality_path.read_text())
        checkpoint = min(r["checkpoint"] for r in quality["results"])
        lines += [
            "## Gradient quality",
            "",
            f"Mean cosine to the true gradient after {checkpoint} SGD steps, "
            f"n = {quality['num_parameters']:,}, minibatch {quality['batch_size']}, "
            f"{quality['repeats']} draws per cell.",
            "",
            *quality_table(quality, checkpoint),
            "",
            "![quality](quality.png)",
            "",
        ]
    (out / "report.md").write_text("\n".join(lines))
