"""What every training experiment's command line shares: the parser and its common
flags (`--preset --dataset --data-dir --seeds --out`), their checks, loading the
data, the output folder, the config.json record of the command and machine, resume
from runs.jsonl, and Ctrl-C (one exit status)."""

import argparse
import math
import os
import shlex
import signal
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from ._checkpoints import Checkpointing, Every
from ._files import (
    append_jsonl,
    check_output_dir,
    environment,
    output_dir,
    read_runs,
)
from ._processes import add_process_flags, agree, is_writer


DATASETS = ("mnist", "fashion-mnist", "mnist-5k")
INTERRUPTED = (
    "interrupted; rerun the same command to resume (finished runs are kept in "
    "runs.jsonl; with --checkpoint-every, the run in progress continues from its "
    "last checkpoint)"
)
EXIT_INTERRUPTED = 128 + signal.SIGINT


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + message
        raise SystemExit(f"error: {message}")


class _HelpFormatter(
    argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter
):
    """`(default: ...)` for flags with a fixed default; preset-dependent flags
    (default None) say so in their own help. Description and epilog kept as
    written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, [], argparse.SUPPRESS) or "default" in text:
            return text
        return f"{text} (default: %(default)s)"


def experiment_parser(
    name: str,
    *,
    description: str,
    presets: Iterable[str],
    preset_help: str,
    seeds_help: str,
    dataset_help: str,
    datasets: Sequence[str] = DATASETS,
    epilog: str | None = None,
) -> argparse.ArgumentParser:
    """The parser of `python -m experiments.<name>` with the common flags; the
    experiment adds its own."""
    parser = _Parser(
        prog=f"python -m experiments.{name}",
        description=description,
        formatter_class=_HelpFormatter,
        epilog=epilog,
    )
    parser.add_argument(
        "--preset", choices=sorted(presets), default="quick", help=preset_help
    )
    parser.add_argument(
        "--dataset", choices=datasets, default="mnist", help=dataset_help
    )
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help="folder holding the dataset's files (itself or DIR/<dataset>); used or "
        "refused, never replaced by other data (default: $FWDEQX_DATA_DIR, the "
        "user cache, system installs, then download)",
    )
    parser.add_argument("--seeds", type=int, metavar="S", help=seeds_help)
    parser.add_argument(
        "--out",
        metavar="DIR",
        help=f"output folder (default: results/{name}/"
        "<preset>-<dataset actually used>-<model>)",
    )
    parser.add_argument(
        "--checkpoint-every",
        metavar="N|TIME",
        help="save each run's training state (model, optimizer state, step, key, "
        "data position) every N steps or every TIME (30s, 10m, 1h), at the next "
        "chunk boundary, in OUT/checkpoints/<run id>/: rerun the same command after "
        "a crash or kill and the run resumes from its last checkpoint, with "
        "bit-identical results; a finished run keeps its last one (the trained "
        "model) (default: no checkpoints)",
    )
    add_process_flags(parser)
    return parser


def checkpointing(args: argparse.Namespace, out: Path) -> Checkpointing | None:
    """The job's checkpoints (`--checkpoint-every`), in `out/checkpoints`."""
    if args.checkpoint_every is None:
        return None
    return Checkpointing(out / "checkpoints", Every.parse(args.checkpoint_every))


def check_flags(args: argparse.Namespace, positive: Iterable[str]) -> None:
    """Exit with a one-line error when a flag named in `positive` (`--seeds`
    always) is below 1, or `--data-dir` is not a directory."""
    for flag in ("--seeds", *positive):
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None and value < 1:
            raise SystemExit(f"error: {flag} must be a positive integer, got {value}")
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise SystemExit(f"error: --data-dir {args.data_dir} is not a directory")
    if args.checkpoint_every is not None:
        Every.parse(args.checkpoint_every)


def parse_lr(text: str, flag: str, value: str) -> float:
    """`text` (from `flag value`) as a learning rate; exits with a one-line error
    when it is not a positive finite number."""
    try:
        lr = float(text)
    except ValueError:
        raise SystemExit(f"error: {flag} {value!r}: {text!r} is not a number") from None
    if not (math.isfinite(lr) and lr > 0):
        raise SystemExit(f"error: {flag} {value!r}: the learning rate must be > 0")
    return lr


def load_data(dataset: str, data_dir: str | None) -> Any:
    """The dataset, its test split held out for evaluation (`mnist-5k`, which has
    none, holds out 100 images per class: 4,000 train / 1,000 held out).

    Exits with the whole message (what was tried and how to fix it) when the data
    cannot be found or read; with one line (what is missing where) when an
    explicit `data_dir` holds no usable copy. The offline fallback's warning is
    printed once, to stderr."""
    from fwdeqx import data

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", data.DatasetFallbackWarning)
            loaded = data.load_dataset(dataset, data_dir=data_dir, validation="test")
    except data.DatasetNotFoundError as error:
        text = str(error).strip()
        if data_dir is not None:  # what was missing where, on one line
            first, *reasons, _ = text.splitlines()
            text = (
                f"{first.rstrip(':').replace('data_dir', '--data-dir', 1)} "
                f"({'; '.join(r.strip() for r in reasons)}); "
                "a --data-dir is the only place looked"
            )
        raise SystemExit(f"error: {text}") from None
    except data.IdxFormatError as error:
        raise SystemExit(f"error: {str(error).strip()}") from None
    for warning in caught:
        if issubclass(warning.category, data.DatasetFallbackWarning):
            print(f"warning: {warning.message}", file=sys.stderr, flush=True)
        else:  # not ours to swallow
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    return loaded


def open_output(settings: Any, name: str) -> tuple[Any, Path]:
    """The data (`load_data(settings.dataset, settings.data_dir)`) and the output
    folder `settings.out` (default `results/<name>/<preset>-<dataset>-<model>`),
    checked before the data loads and created after, so that a failure leaves no
    empty folder behind."""
    if settings.out:
        check_output_dir(settings.out)
    dataset = load_data(settings.dataset, settings.data_dir)
    out = output_dir(
        settings.out
        or Path("results") / name / f"{settings.preset}-{dataset.name}-{settings.model}"
    )
    return dataset, out


def dataset_info(dataset: Any, split: str) -> dict[str, Any]:
    """The dataset's identity as recorded in config.json and the runs; its held-out
    split is called `split` (`"val"` or `"test"`)."""
    return {
        "name": dataset.name,
        "requested": dataset.requested,
        "source": str(dataset.source),
        ("validation" if split == "val" else "test_split"): str(dataset.validation),
        "num_train": len(dataset.train_labels),
        f"num_{split}": len(dataset.val_labels),
        "fingerprint": dataset.fingerprint,
    }


def command(name: str, argv: list[str]) -> str:
    return shlex.join(["python", "-m", f"experiments.{name}", *argv])


def machine() -> dict[str, Any]:
    """The `environment` and `environment_variables` of config.json."""
    return {
        "environment": environment(),
        "environment_variables": {
            k: v for k, v in os.environ.items() if k.startswith(("JAX_", "XLA_"))
        },
    }


def train_grid(
    configs: list,
    path: Path,
    train: Callable[[list], list[dict[str, Any]]],
    *,
    label: Callable[[Any], str],
    status: Callable[[dict[str, Any]], str],
    groups: Callable[[list], list[list]] = lambda pending: [[c] for c in pending],
) -> list[dict[str, Any]]:
    """The records of `configs` (each with a `run_id`), in order: those already in
    runs.jsonl `path` (resume; other runs there are not counted), the others
    trained group by group (`groups(pending)`, `train(group)` gives the group's
    records), each appended to `path` as it finishes and reported on stdout as
    `[i/n] label: status`. A run missing at the end was not trained (`groups`
    left it out)."""
    finished = read_runs(path)
    writer = is_writer()
    others = len(set(finished) - {c.run_id for c in configs})
    if others and writer:
        print(
            f"note: {path} also holds {others} run(s) of other settings or "
            "other data; they are not counted here.",
            flush=True,
        )
    records = {c.run_id: finished[c.run_id] for c in configs if c.run_id in finished}
    agree(len(records), f"the finished runs in {path}")
    reported = 0

    def report(config: Any, text: Callable[[], str]) -> None:
        nonlocal reported
        reported += 1
        if writer:  # the others' records hold no evaluations
            print(f"[{reported}/{len(configs)}] {label(config)}: {text()}", flush=True)

    for config in configs:
        if config.run_id in records:
            report(config, lambda: "already in runs.jsonl, skipped")
    for group in groups([c for c in configs if c.run_id not in records]):
        for config, record in zip(group, train(group), strict=True):
            if writer:
                append_jsonl(path, record)
            records[config.run_id] = record
            report(config, lambda: status(record))  # noqa: B023 (called at once)
    return [records[c.run_id] for c in configs if c.run_id in records]


def run_main(run: Callable[[list[str]], None], argv: list[str] | None) -> None:
    """`run(argv)` (default: the command line); on Ctrl-C say how to resume and
    exit with status 130 (finished runs are already in runs.jsonl)."""
    try:
        run(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt:
        print(f"\n{INTERRUPTED}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_INTERRUPTED) from None
