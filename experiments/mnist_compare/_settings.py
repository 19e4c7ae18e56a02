"""The command line of `python -m experiments.mnist_compare`: the presets, the flags
and their help text (`build_parser`), and `resolve`, which turns the parsed flags into
validated `Settings` before any work starts."""

import argparse
import dataclasses
import textwrap
from collections.abc import Callable
from typing import Any

from .. import registry, runner


PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "model": "mlp",
        "estimators": ["backprop", "fwd-gaussian"],
        "optimizers": ["sgd", "adam"],
        "lrs": {"sgd": [3e-4, 1e-3, 3e-3], "adam": [1e-4]},
        "divergent_lrs": {"sgd": 3e-3},
        "iterations": 2000,
        "seeds": 2,
        "eval_every": 50,
    },
    "paper": {
        "model": "mlp",
        # The paper's dense Gaussian tangent, drawn by the counter-based hash
        # generator: the same N(0, I) distribution, 1.8x cheaper per forward step
        # than threefry on CPU (docs/mnist.md, "The paper grid").
        "estimators": ["backprop", "fwd-gaussian-hash"],
        "optimizers": ["sgd", "adam"],
        "lrs": {"sgd": [1e-4, 3e-4, 3e-3], "adam": [1e-4, 1e-3]},
        "divergent_lrs": {"sgd": 3e-3},
        "iterations": 20_000,
        "seeds": 5,
        "eval_every": 200,
    },
}
LR_RATIONALE = (
    "Forward gradient with Gaussian tangents has second moment about "
    "(n + 2)|∇f|² (n ≈ 1.86M parameters for the MLP), so SGD is stable for it only "
    "at learning rates far below backprop's. The defaults come from our own sweep "
    "on mnist-5k (docs/mnist.md, 'Learning rates'): quick preset SGD 3e-4 "
    "(stable), 1e-3 (tracks backprop, then diverges late) and 3e-3 (the divergent "
    "learning rate of the paper's appendix figure), Adam 1e-4; paper preset SGD "
    "1e-4 and 3e-4 plus 3e-3, Adam 1e-4 and 1e-3."
)
MODELS = tuple(registry.MODELS)


def _preset_value(key: str) -> str:
    def show(value: Any) -> str:
        if isinstance(value, dict):
            return " ".join(
                f"{k}={','.join(f'{v:g}' for v in vs)}" for k, vs in value.items()
            )
        if isinstance(value, list):
            return " ".join(map(str, value))
        return str(value)

    return ", ".join(f"{name}: {show(preset[key])}" for name, preset in PRESETS.items())


# Measured end to end (docs/mnist.md, "How long"; issue 24): the run time scales with
# the backprop step time, about 1 minute per millisecond of it.
QUICK_DURATION = (
    "8 min 53 s measured on an idle 2-core CPU at a backprop step of 8.34 ms "
    "(forward 27.15 ms), 12.5 min on a 2-core CPU shared with other jobs"
)
# measured: docs/mnist.md, "The paper grid"
PAPER_DURATION = (
    "131 minutes on fashion-mnist (backprop step 6.48 ms), 124 on mnist-5k (6.00 ms)"
)


def _epilog() -> str:
    def wrap(text: str, indent: str = "  ") -> str:
        return textwrap.fill(
            text, width=79, initial_indent=indent, subsequent_indent=indent + "  "
        )

    presets = [
        wrap(
            f"{name}: {p['iterations']} iterations, {p['seeds']} seeds, record "
            f"every {p['eval_every']}; model {p['model']}; estimators "
            f"{' '.join(p['estimators'])}; lrs "
            + " ".join(
                f"{opt}={','.join(f'{lr:g}' for lr in lrs)}"
                for opt, lrs in p["lrs"].items()
            )
            + "; "
            + ", ".join(f"{o} {lr:g}" for o, lr in p["divergent_lrs"].items())
            + " is the learning rate meant to make forward gradient diverge."
        )
        for name, p in PRESETS.items()
    ]
    return "\n".join(
        [
            "presets (every flag given overrides the preset's value):",
            *presets,
            wrap(
                f"Run time. quick: {QUICK_DURATION}; paper: {PAPER_DURATION}, both "
                "on a 2-core CPU. The time scales with the backprop step time "
                "(about 1 minute per ms for quick; your machine's is in "
                "step_times.json, sgd/backprop). "
                "fwd-gaussian-hash is the paper's Gaussian tangent drawn by a "
                "faster generator, same distribution."
            ),
            "",
            "estimators (append -kK for K tangents, e.g. fwd-gaussian-k4):",
            wrap(" ".join(sorted(registry.ESTIMATORS))),
            "optimizers:",
            wrap(" ".join(sorted(registry.OPTIMIZERS))),
            "",
            wrap(
                "--dataset mnist without a local copy or internet falls back to the "
                "5,000-image mnist-5k sample, with a warning; the outputs say "
                "mnist-5k. An explicit --data-dir is the only place looked: used, "
                "or refused with an error.",
                indent="",
            ),
            wrap(
                "Rerunning the same command resumes: runs already in runs.jsonl "
                "on the same data are skipped. Ctrl-C stops cleanly and keeps the "
                "finished runs.",
                indent="",
            ),
        ]
    )


def build_parser() -> argparse.ArgumentParser:
    parser = runner.experiment_parser(
        "mnist_compare",
        description="Forward gradient vs backprop on MNIST (SGD and Adam).",
        epilog=_epilog(),
        presets=PRESETS,
        preset_help="grid to run",
        seeds_help=f"number of seeds, run as 0..S-1 ({_preset_value('seeds')})",
        dataset_help="dataset (mnist falls back to mnist-5k offline)",
    )
    parser.add_argument(
        "--model", choices=MODELS, help=f"model ({_preset_value('model')})"
    )
    parser.add_argument(
        "--estimators",
        nargs="+",
        metavar="SPEC",
        help=f"estimators ({_preset_value('estimators')}); see the list below",
    )
    parser.add_argument(
        "--optimizers",
        nargs="+",
        metavar="NAME",
        help=f"optimizers ({_preset_value('optimizers')}); see the list below",
    )
    parser.add_argument(
        "--lrs",
        nargs="+",
        metavar="LR",
        help="learning rates for every optimizer, or per optimizer as sgd=1e-3 "
        f"({_preset_value('lrs')})",
    )
    parser.add_argument(
        "--iterations",
        type=int,
        metavar="N",
        help=f"training steps per run ({_preset_value('iterations')})",
    )
    parser.add_argument(
        "--eval-every",
        type=int,
        metavar="N",
        help=f"iterations per record ({_preset_value('eval_every')})",
    )
    parser.add_argument(
        "--batch-runs",
        default="auto",
        metavar="N",
        help="runs trained together as one vmapped computation: the seeds and "
        "learning rates of one (optimizer, estimator) cell, at most N at a time; 1 "
        "trains one run at a time; auto is 1 on CPU (where batching measured "
        "slower: docs/mnist.md) and a whole cell on GPU/TPU, but 1 with "
        "--checkpoint-every or several processes",
    )
    parser.add_argument(
        "--retime-steps",
        action="store_true",
        help="measure the step times again; by default step_times.json of --out "
        "is reused, so that a rerun leaves every output as it was",
    )
    return parser


@dataclasses.dataclass(frozen=True)
class Settings:
    preset: str
    model: str
    dataset: str
    data_dir: str | None
    estimators: tuple[str, ...]
    optimizers: tuple[str, ...]
    lrs: dict[str, tuple[float, ...]]
    divergent_lrs: dict[str, float]
    iterations: int
    seeds: int
    eval_every: int
    batch_runs: int | None
    """Runs per batched computation; `None`: a whole cell."""
    out: str | None
    retime_steps: bool = False
    """Measure the step times again instead of reusing step_times.json."""


def _parse_lrs(
    values: list[str], optimizers: tuple[str, ...]
) -> dict[str, tuple[float, ...]]:
    shared: list[float] = []
    specific: dict[str, list[float]] = {}
    for value in values:
        name, _, number = value.rpartition("=")
        lr = runner.parse_lr(number, "--lrs", value)
        if name:
            if name not in optimizers:
                raise SystemExit(
                    f"error: --lrs {value!r} names optimizer {name!r}, not one of "
                    f"--optimizers {' '.join(optimizers)}"
                )
            specific.setdefault(name, []).append(lr)
        else:
            shared.append(lr)
    lrs = {opt: tuple(specific.get(opt, shared)) for opt in optimizers}
    missing = [opt for opt, rates in lrs.items() if not rates]
    if missing:
        raise SystemExit(f"error: no learning rate given for {', '.join(missing)}")
    return lrs


def _check_each(names: tuple[str, ...], check: Callable[[str], object]) -> None:
    """`check` every name; the first `ValueError` exits as a one-line error."""
    for name in names:
        try:
            check(name)
        except ValueError as error:
            raise SystemExit(f"error: {error}") from None


def resolve(args: argparse.Namespace) -> Settings:
    """Preset defaults overridden by the given flags; exits with a one-line error
    on any invalid value, before any work starts."""
    preset = PRESETS[args.preset]
    estimators = tuple(args.estimators or preset["estimators"])
    _check_each(estimators, registry.make_estimator)
    if len(set(estimators)) != len(estimators):
        raise SystemExit("error: --estimators lists an estimator twice")
    optimizers = tuple(args.optimizers or preset["optimizers"])
    _check_each(optimizers, registry.check_optimizer)
    if args.lrs:
        lrs = _parse_lrs(args.lrs, optimizers)
    else:
        lrs = {}
        for opt in optimizers:
            if opt not in preset["lrs"]:
                raise SystemExit(
                    f"error: the {args.preset} preset has no learning rate for "
                    f"{opt!r}; give one with --lrs {opt}=LR"
                )
            lrs[opt] = tuple(preset["lrs"][opt])
    runner.check_flags(args, ("--iterations", "--eval-every"))
    batch_runs = _parse_batch_runs(args.batch_runs)
    one_at_a_time = [
        flag
        for flag, used in (
            ("--checkpoint-every", args.checkpoint_every is not None),
            ("several processes", runner.processes_requested(args)),
        )
        if used
    ]
    if one_at_a_time and batch_runs != 1:
        if args.batch_runs != "auto":
            raise SystemExit(
                f"error: --batch-runs {args.batch_runs}: {' and '.join(one_at_a_time)} "
                "train one run at a time; use --batch-runs 1 (or auto)"
            )
        batch_runs = 1
    iterations = args.iterations or preset["iterations"]
    eval_every = min(args.eval_every or preset["eval_every"], iterations)
    divergent = {
        opt: lr
        for opt, lr in preset["divergent_lrs"].items()
        if opt in lrs and lr in lrs[opt]
    }
    return Settings(
        preset=args.preset,
        model=args.model or preset["model"],
        dataset=args.dataset,
        data_dir=args.data_dir,
        estimators=estimators,
        optimizers=optimizers,
        lrs=lrs,
        divergent_lrs=divergent,
        iterations=iterations,
        seeds=args.seeds or preset["seeds"],
        eval_every=eval_every,
        batch_runs=batch_runs,
        out=args.out,
        retime_steps=args.retime_steps,
    )


def _parse_batch_runs(value: str) -> int | None:
    """`--batch-runs`: a positive integer, or `auto` (see `auto_max_members`)."""
    if value == "auto":
        from ._batched import auto_max_members

        return auto_max_members()
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise SystemExit(
            f"error: --batch-runs must be a positive integer or auto, got {value!r}"
        )
    return number
