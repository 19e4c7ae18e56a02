"""Beyond the papers: multi-tangent combinations, SPSA and a forward-gradient Adam.

Two parts:

1. **Gradient quality** (`--part quality`): on the paper's MLP at several points of
   backprop-SGD training on mnist-5k, the cosine similarity and relative error to
   the true minibatch gradient of K-tangent estimates: `mean` (K independent
   forward gradients averaged), `projection` (B(BᵀB)⁻¹Bᵀ∇f, biased by K/n),
   `projection-rescaled` (times n/K), `projection-lowrank` (the projection on K
   rank-1 `fwdeqx.LowRank` tangents) and `spsa` (two-point zeroth order along K
   directions), vs K.
2. **Time to loss** (`--part training`): MNIST MLP training runs (the loop of
   `experiments.mnist_compare`) for forward gradient + Adam, + `fwd_adam`,
   + projection with K in {4, 16}, + projection on K = 16 and 64 rank-1 tangents,
   + the mean of K = 16 rank-1 forward gradients, + SPSA, against backprop + Adam
   and backprop + SGD; T/T_b where T_b is the time at which backprop + Adam reaches
   its best validation loss, and the validation loss every method reaches at
   backprop + Adam's final wall time.

    python -m experiments.estimators --quick            # ~1 min, small sizes
    python -m experiments.estimators                    # both parts, full sizes
    python -m experiments.estimators --part training --seeds 5

Outputs in `--out` (default `results/estimators/`, `results/estimators-quick/` with
`--quick`): `quality.json`, `quality.png`, `runs.jsonl` (one line per finished run;
rerunning resumes), `training.json`, `training.png`, and `report.md` with the tables
and figures of whichever parts have results.

The package, one layer per file: `_presets.py` (what runs), `_quality.py` (part 1),
`_training.py` (part 2's runs), `_summary.py` (time to loss from the runs),
`_plots.py`, `_markdown.py` (`report.md`).
"""

import argparse
import sys
from pathlib import Path
from typing import Any

from fwdeqx import data

from ..runner import environment, output_dir, write_json
from ._markdown import write_report
from ._plots import plot_quality, plot_training
from ._presets import (
    FULL,
    MNIST_5K_VALIDATION,
    QUALITY_METHODS as QUALITY_METHODS,
    QUICK,
    Preset,
)
from ._quality import gradient_quality as gradient_quality
from ._summary import run_label, summarise_training as summarise_training
from ._training import train_all


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m experiments.estimators`."""
    parser = argparse.ArgumentParser(
        prog="python -m experiments.estimators",
        description="Multi-tangent estimates, SPSA and fwd_adam on MNIST.",
    )
    parser.add_argument("--quick", action="store_true", help="small, fast settings")
    parser.add_argument("--out", help="output folder")
    parser.add_argument(
        "--part", choices=("quality", "training", "design", "all"), default="all"
    )
    parser.add_argument("--seeds", type=int, help="training seeds (0, 1, ...)")
    parser.add_argument(
        "--summarise-only",
        action="store_true",
        help="train nothing; summarise the finished runs in runs.jsonl",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run the parts asked for, write their JSON and figures, then `report.md`."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    preset = QUICK if args.quick else FULL
    if args.seeds is not None and args.seeds < 1:
        raise SystemExit(f"error: --seeds must be a positive integer, got {args.seeds}")
    default = "results/estimators-quick" if args.quick else "results/estimators"
    out = output_dir(args.out or default)
    dataset = data.load_dataset("mnist-5k", validation=MNIST_5K_VALIDATION)
    meta = {
        "command": " ".join(["python -m experiments.estimators", *argv]),
        "preset": "quick" if args.quick else "full",
        "dataset": dataset.name,
        "environment": environment(),
    }
    if args.part in ("quality", "all"):
        _quality_part(preset, dataset, out, meta)
    if args.part == "design" or (args.part == "all" and not args.quick):
        _design_part(preset, dataset, out, meta)
    if args.part in ("training", "all"):
        seeds = args.seeds or preset.seeds
        _training_part(preset, seeds, dataset, out, meta, not args.summarise_only)
    write_report(out)
    print(f"wrote {out / 'report.md'}")


def _quality_part(preset: Preset, dataset, out: Path, meta: dict[str, Any]) -> None:
    quality = gradient_quality(preset, dataset)
    write_json(out / "quality.json", {**meta, **quality})
    plot_quality(quality, out / "quality.png")
    print(f"wrote {out / 'quality.json'} and quality.png")


def _design_part(preset: Preset, dataset, out: Path, meta: dict[str, Any]) -> None:
    runs = train_all(preset, 1, dataset, out, part="design")
    design = {
        run_label(run["config"]): {
            "final_val_loss": run["final_val_loss"],
            "best_val_loss": min(
                (v for v in run["val_loss"] if v is not None), default=None
            ),
            "diverged": run["diverged"],
        }
        for run in runs
    }
    write_json(out / "design.json", {**meta, "runs": design})
    plot_training(runs, out / "design.png")
    for label, entry in design.items():
        print(f"{label:45s} {entry}")


def _training_part(
    preset: Preset, seeds: int, dataset, out: Path, meta: dict[str, Any], train: bool
) -> None:
    runs = train_all(preset, seeds, dataset, out, train=train)
    summary = summarise_training(runs)
    write_json(
        out / "training.json",
        {
            **meta,
            "iterations": preset.iterations,
            "eval_every": preset.eval_every,
            "seeds": seeds,
            "methods": summary,
        },
    )
    plot_training(runs, out / "training.png")
    for label, entry in summary.items():
        print(
            f"{label:45s} T/T_b {entry['ratios_mean']} "
            f"(reached {entry['reached']}/{entry['seeds']}), loss at backprop "
            f"end {entry['loss_at_backprop_end_mean']}, gap closed at T_f "
            f"{entry['gap_closed_at_T_f_mean']}"
        )
