"""The command line of `python -m experiments.local_losses`: presets, flags, help
text, and resolving them into `Settings`."""

import argparse
import dataclasses
import textwrap
from typing import Any

from .. import registry, runner


METHODS = tuple(registry.METHODS)
MODELS = tuple(registry.LOCAL_NETWORKS)
OPTIMIZERS = ("adam", "sgd-m0.9")
ALIGNMENT_KEYS = 4
"""Estimates averaged per alignment point (`--alignment-keys`)."""
ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "mlp": {"width": 256, "depth": 2, "groups": 64},
    # One convolution per block; per-location losses, 8 groups (4 or 8 channels per
    # loss copy): without them LG-FG-A's estimate barely aligns with its target.
    "cnn": {"channels": (32, 64, 64), "groups": 8, "locations": True},
    "mixer": {"patch": 4, "width": 128, "depth": 4, "groups": 4},
    # Per-location losses. Two convolutions per block, 16 and 32 channels, 4 groups.
    "location-cnn": {"channels": (16, 32), "groups": 4},
    # Ren et al.'s LocalMixer, small, for 28x28 images: 4x4 patches of 7x7 pixels,
    # width 64, 3 blocks, 8 groups. Their CIFAR-10 M/8/16 is --patches 8 --width
    # 512 --depth 4 --groups 16.
    "location-mixer": {"patches": 4, "width": 64, "depth": 3, "groups": 8},
}
"""Architecture of each model (flags `--width`, `--depth`, `--groups`,
`--channels`, `--patches` override)."""
LEARNING_RATES: dict[str, float] = {
    "backprop": 1e-3,
    "fg-w": 1e-3,
    "fg-a": 1e-3,
    "lg-bp": 1e-3,
    "lg-fg-w": 1e-2,
    "lg-fg-a": 3e-3,
}
"""Adam learning rate of each method on the MLP, and on any model
`MODEL_LEARNING_RATES` does not name (`--lr METHOD=LR` overrides)."""
MODEL_LEARNING_RATES: dict[str, dict[str, float]] = {
    "cnn": {"backprop": 3e-3, "lg-bp": 3e-3, "lg-fg-a": 1e-2},
    # fg-w, fg-a and lg-fg-w: the mixer's sweep, not swept on the CNN.
    "location-cnn": dict.fromkeys(METHODS, 1e-2),
    "location-mixer": dict.fromkeys(METHODS, 1e-2),
}
"""Per-model overrides of `LEARNING_RATES`, from the sweeps of docs/local-losses.md
(one epoch of Fashion-MNIST, seed 0)."""


def default_lrs(model: str) -> dict[str, float]:
    """Every method's default learning rate on `model`."""
    return {**LEARNING_RATES, **MODEL_LEARNING_RATES.get(model, {})}


LR_RATIONALE = (
    "Adam for every method, with the learning rate decaying to 0 along a half cosine "
    "over the run (the same schedule for all). Backprop and LG-BP use Adam's usual "
    "1e-3. LG-FG-A's 3e-3 comes from a sweep on mnist-5k (MLP 784-256-256-10, 64 "
    "groups per head, 10 epochs, seed 0): constant lr 1e-4 / 3e-4 / 1e-3 gave 89.2 / "
    "92.1 / 90.4% test accuracy, cosine decay from 3e-4 / 1e-3 / 3e-3 gave 90.1 / "
    "93.2 / 94.1% (backprop, cosine from 1e-3: 94.8%). Without groups (one loss copy "
    "per head) it needed a far smaller lr and still trailed (MLP 1024x3, constant "
    "1e-4 / 3e-4 / 1e-3: 73.6 / 63.5 / 39.4%). The other rates come from one epoch of "
    "Fashion-MNIST (seed 0, Rademacher tangents, lr 1e-4 / 1e-3 / 1e-2): on the MLP "
    "fg-w 13.0 / 44.8 / 42.5%, fg-a 74.0 / 79.5 / 77.5%, lg-fg-w 62.2 / 73.6 / "
    "78.9%; on the location mixer fg-w 10.0 / 15.3 / 21.9%, fg-a 24.0 / 43.1 / "
    "53.6%, lg-fg-w 23.5 / 42.9 / 56.8%, backprop 80.0 / 84.9% (1e-3 / 1e-2), "
    "lg-fg-a 74.4% (1e-2; 72.8% at 3e-3, 73.3% at 3e-2). The location CNN: backprop "
    "75.1 / 83.9% (3e-3 / 1e-2), lg-bp 81.6 / 84.7%, lg-fg-a 81.1 / 77.2% (1e-2 / "
    "3e-2); its fg-w, fg-a and lg-fg-w take the mixer's 1e-2 (not swept). The cnn: "
    "backprop 80.7 / 85.4 / 84.7% (1e-3 / 3e-3 / 1e-2), lg-fg-a 82.9 / 85.5% (3e-3 / "
    "1e-2), lg-bp 85.2% (3e-3); its other methods take the MLP's rates (not swept)."
)
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "model": "mlp",
        "methods": ["backprop", "lg-fg-a"],
        "epochs": 5,
        "seeds": 1,
    },
    "paper": {
        "model": "mlp",
        "arch": {"width": 1024, "depth": 2, "groups": 256},
        "num_tangents": 4,
        "methods": [m for m in METHODS if m != "lg-bp"],
        "epochs": 30,
        "seeds": 3,
    },
}
"""`arch` (optional) overrides `ARCH_DEFAULTS` when the preset's own model is used."""
PRESET_HELP = (
    "presets: 'quick' = MLP 784-256-256-10 (2 local-loss blocks, 64 groups per "
    "head), methods backprop,lg-fg-a, {q[epochs]} epochs, {q[seeds]} seed; "
    "'paper' = MLP 784-1024-1024-10 (256 "
    "groups per head), K=4 tangents, all five methods, {p[epochs]} epochs, "
    "{p[seeds]} seeds (the Table-3 comparison; hours on a CPU, meant for an "
    "accelerator). Flags override the preset."
).format(q=PRESETS["quick"], p=PRESETS["paper"])
RUN_TIME = (
    "Run time: the quick preset took 12 s on mnist-5k on an idle 2-core CPU (backprop "
    "step 1.35 ms; training steps under 1 s of it, the rest startup, data loading, "
    "compilation, evaluation and the per-epoch alignment). The training time scales "
    "with the step time and the number of training images: the 60,000-image datasets "
    "take 15x the steps, and the convolutional and mixer models 6 to 55x the MLP's "
    "step (docs/local-losses.md)."
)


def _per_model(key: str) -> str:
    """The models' defaults of `key` for a flag's help: "mlp 256, mixer 128"."""
    return ", ".join(f"{m} {a[key]}" for m, a in ARCH_DEFAULTS.items() if key in a)


def build_parser() -> argparse.ArgumentParser:
    parser = runner.experiment_parser(
        "local_losses",
        description=textwrap.fill(
            "Forward gradients with activity perturbation and local losses "
            "(Ren et al. 2023) against backprop, on one fwdeqx.local network. "
            + PRESET_HELP,
            width=78,
        ),
        epilog=textwrap.fill(RUN_TIME, width=78),
        presets=PRESETS,
        preset_help="see above",
        seeds_help="number of seeds 0, 1, ... (default: the preset's)",
        dataset_help="mnist-5k's test split is its 1,000 held-out images (100 per "
        "class); mnist falls back to mnist-5k, with a warning, when it cannot be "
        "found; cifar10 (3x32x32 colour images) needs the official python-format "
        "archive and has no fallback",
        datasets=(*runner.DATASETS, "cifar10"),
    )
    parser.add_argument(
        "--model", choices=MODELS, help="the network (default: the preset's)"
    )
    parser.add_argument(
        "--methods",
        help="comma-separated subset of " + ",".join(METHODS) + " (default: the "
        "preset's)",
    )
    parser.add_argument("--epochs", type=int, help="default: the preset's")
    parser.add_argument(
        "--lr",
        action="append",
        metavar="METHOD=LR",
        default=[],
        help="learning rate of one method (repeatable); defaults: "
        + ", ".join(f"{m}={lr:g}" for m, lr in LEARNING_RATES.items())
        + "; except "
        + "; ".join(
            f"{model} " + ", ".join(f"{m}={lr:g}" for m, lr in lrs.items())
            for model, lrs in MODEL_LEARNING_RATES.items()
        ),
    )
    parser.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default="adam",
        help="for every method (sgd-m0.9: SGD with momentum 0.9)",
    )
    parser.add_argument(
        "--schedule",
        choices=("cosine", "constant"),
        default="cosine",
        help="learning rate over the run: cosine decay to 0, or constant",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="images per step")
    parser.add_argument(
        "--num-tangents",
        type=int,
        help="K tangents per forward estimate (default: quick 1, paper 4)",
    )
    parser.add_argument(
        "--tangents",
        choices=tuple(registry.TANGENTS),
        default="rademacher",
        help="distribution of the forward methods' tangents (Rademacher: a smaller "
        "variance than Gaussian for small loss copies, and cheaper to draw)",
    )
    parser.add_argument(
        "--alignment-keys",
        type=int,
        default=ALIGNMENT_KEYS,
        metavar="K",
        help="per-layer gradient alignment (report.md, alignment.png) before training "
        "and after every epoch, averaged over K estimates; 0 turns it off",
    )
    parser.add_argument(
        "--width",
        type=int,
        help=f"MLP / mixer width (defaults: {_per_model('width')})",
    )
    parser.add_argument(
        "--depth",
        type=int,
        help=f"MLP / mixer blocks (defaults: {_per_model('depth')})",
    )
    parser.add_argument(
        "--channels",
        help="CNN channels per block, comma-separated (defaults: "
        + ", ".join(
            f"{m} " + ",".join(map(str, a["channels"]))
            for m, a in ARCH_DEFAULTS.items()
            if "channels" in a
        )
        + ")",
    )
    parser.add_argument(
        "--patches",
        type=int,
        help="location-mixer patches per image side (default "
        f"{ARCH_DEFAULTS['location-mixer']['patches']}; Ren et al.'s CIFAR-10 "
        "M/8/16 is --patches 8 --width 512 --depth 4 --groups 16)",
    )
    parser.add_argument(
        "--locations",
        action=argparse.BooleanOptionalAction,
        help="cnn: one loss copy per pooled position and channel group (default), "
        "or, with --no-locations, one per channel group, averaged over positions",
    )
    parser.add_argument(
        "--groups",
        type=int,
        help="local-loss channel groups of every head (defaults: "
        f"{_per_model('groups')})",
    )
    return parser


@dataclasses.dataclass(frozen=True)
class Settings:
    preset: str
    dataset: str
    data_dir: str | None
    model: str
    arch: dict[str, Any]
    methods: tuple[str, ...]
    lrs: dict[str, float]
    optimizer: str
    schedule: str
    batch_size: int
    num_tangents: int
    tangents: str
    alignment_keys: int
    epochs: int
    seeds: int
    out: str | None


def parse_methods(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in METHODS]
    if unknown:
        raise SystemExit(
            f"error: unknown method(s) {', '.join(map(repr, unknown))} in --methods; "
            f"choose a comma-separated subset of {','.join(METHODS)}"
        )
    if not names:
        raise SystemExit("error: --methods is empty")
    if len(set(names)) != len(names):
        raise SystemExit("error: --methods lists a method twice")
    return names


def _parse_lrs(values: list[str], model: str) -> dict[str, float]:
    lrs = default_lrs(model)
    for value in values:
        method, sep, number = value.partition("=")
        if not sep or method not in METHODS:
            raise SystemExit(
                f"error: --lr {value!r}: expected METHOD=LR with METHOD one of "
                f"{','.join(METHODS)}"
            )
        lrs[method] = runner.parse_lr(number, "--lr", value)
    return lrs


def resolve(args: argparse.Namespace) -> Settings:
    """Preset defaults overridden by the given flags; exits with a one-line error on
    any invalid value, before any work starts."""
    preset = PRESETS[args.preset]
    methods = parse_methods(args.methods) if args.methods else tuple(preset["methods"])
    flags = (
        "--batch-size",
        "--num-tangents",
        "--width",
        "--depth",
        "--groups",
        "--patches",
    )
    runner.check_flags(args, ("--epochs", *flags))
    model = args.model or preset["model"]
    arch = dict(ARCH_DEFAULTS[model])
    if model == preset["model"]:
        arch.update(preset.get("arch", {}))
    for name in ("width", "depth", "groups", "patches"):
        value = getattr(args, name)
        if value is not None:
            if name not in arch:
                raise SystemExit(f"error: --{name} does not apply to --model {model}")
            arch[name] = value
    if args.alignment_keys < 0:
        raise SystemExit(
            f"error: --alignment-keys {args.alignment_keys}: expected 0 (off) or a "
            "positive number of keys"
        )
    if args.locations is not None:
        if "locations" not in arch:
            raise SystemExit(
                f"error: --locations/--no-locations does not apply to --model {model}"
            )
        arch["locations"] = args.locations
    if args.channels is not None:
        if "channels" not in arch:
            raise SystemExit(f"error: --channels does not apply to --model {model}")
        try:
            channels = tuple(int(c) for c in args.channels.split(","))
        except ValueError:
            channels = ()
        if not channels or min(channels) < 1:
            raise SystemExit(
                f"error: --channels {args.channels!r}: expected positive integers "
                "separated by commas, e.g. 32,64"
            )
        arch["channels"] = channels
    sizes = arch["channels"] if "channels" in arch else (arch["width"],)
    if any(size % arch["groups"] for size in sizes):
        raise SystemExit(
            f"error: --groups {arch['groups']} must divide the {model}'s width "
            f"({', '.join(map(str, sizes))})"
        )
    return Settings(
        preset=args.preset,
        dataset=args.dataset,
        data_dir=args.data_dir,
        model=model,
        arch=arch,
        methods=methods,
        lrs={m: lr for m, lr in _parse_lrs(args.lr, model).items() if m in methods},
        optimizer=args.optimizer,
        schedule=args.schedule,
        batch_size=args.batch_size,
        num_tangents=args.num_tangents or preset.get("num_tangents", 1),
        tangents=args.tangents,
        alignment_keys=args.alignment_keys,
        epochs=args.epochs or preset["epochs"],
        seeds=args.seeds or preset["seeds"],
        out=args.out,
    )
