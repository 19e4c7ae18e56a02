"""Helpers shared by the theory experiments (`beale`, `unbiasedness`, `convergence`):
the command line, where results go, and how figures and numbers are written."""

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import matplotlib.pyplot as plt
import numpy as np
from jaxtyping import PRNGKeyArray

from .runner import environment, output_dir, write_json


def parse_args(name: str, description: str, argv: Sequence[str] | None):
    """`--quick`, `--out DIR` (default `results/<name>`) and `--seed S`."""
    parser = argparse.ArgumentParser(prog=f"python -m experiments.{name}")
    parser.description = description
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes, a few seconds (used by the tests)",
    )
    parser.add_argument(
        "--out",
        default=None,
        help=f"output directory (default results/{name})",
    )
    parser.add_argument("--seed", type=int, default=0, help="master PRNG seed")
    args = parser.parse_args(argv)
    args.out = output_dir(args.out if args.out is not None else Path("results") / name)
    return args


PRNG_IMPL = "rbg"
"""The experiments vectorise over thousands of keys with `jax.vmap`. With the default
threefry keys, XLA on CPU takes seconds to compile every vmapped draw (measured
4-8 s per program here, against 0.3-0.6 s with "rbg"); the statistics are checked
against theory in every experiment, which would expose correlated streams."""


def master_key(seed: int) -> PRNGKeyArray:
    """The one key an experiment starts from (`PRNG_IMPL` keys)."""
    return jax.random.key(seed, impl=PRNG_IMPL)


def save_figure(fig: plt.Figure, out: Path, filename: str) -> str:
    """Save `fig` as a compact PNG under `out`, close it, return the file name."""
    fig.savefig(out / filename, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return filename


def finish(
    out: Path,
    name: str,
    args: argparse.Namespace,
    started: float,
    figures: list[str],
    results: dict[str, Any],
) -> dict[str, Any]:
    """Write `out/<name>.json` (settings, environment, figures, numbers) and return
    the record."""
    record = {
        "experiment": name,
        "quick": bool(args.quick),
        "seed": int(args.seed),
        "seconds": round(time.perf_counter() - started, 2),
        "prng_impl": PRNG_IMPL,
        "figures": figures,
        "environment": environment(),
        **results,
    }
    write_json(out / f"{name}.json", record)
    print(f"wrote {out / (name + '.json')} and {len(figures)} figures")
    return record


def log_grid(low: int, high: int, num: int) -> list[int]:
    """About `num` distinct integers from `low` to `high`, evenly spaced in log."""
    grid = np.unique(np.round(np.geomspace(low, high, num)).astype(int))
    return [int(k) for k in grid]


def mean_ci(samples: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and the half-width of its normal 95% confidence interval."""
    samples = np.asarray(samples, dtype=np.float64)
    count = samples.shape[axis]
    mean = samples.mean(axis=axis)
    half_width = 1.96 * samples.std(axis=axis, ddof=1) / np.sqrt(count)
    return mean, half_width
