"""Step cost of fwdeqx.local's estimators against a backprop step of the same network.

Every variant is one jitted training step (estimate, SGD update, apply) of the same
`fwdeqx.local` network on the same batch; all variants of a model are timed in one
process, round-robin (`time_round_robin`), and reported as ratios to the end-to-end
backprop step. The targets: an LG-FG-A step (K = 1) costs at most 2x backprop
(1.5x for the per-location networks of issue 22).
"""

import dataclasses
import itertools
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import optax

import fwdeqx
import fwdeqx.local as fl

from ._timing import time_round_robin


BASELINE = "backprop"
METHODS: dict[str, Callable[[], tuple[Any, Any]]] = {
    "backprop": lambda: (fl.GlobalLoss(), fwdeqx.Backprop()),
    "lg-bp": lambda: (fl.LocalLoss(), fwdeqx.Backprop()),
    "fg-w": lambda: (fl.GlobalLoss(), fwdeqx.ForwardGradient()),
    "fg-a": lambda: (fl.GlobalLoss(), fl.ActivityPerturbation()),
    "lg-fg-w": lambda: (fl.LocalLoss(), fl.LocalWeightPerturbation()),
    "lg-fg-a": lambda: (fl.LocalLoss(), fl.ActivityPerturbation()),
    "lg-fg-a-k4": lambda: (fl.LocalLoss(), fl.ActivityPerturbation(num_tangents=4)),
    "lg-fg-a-rademacher": lambda: (
        fl.LocalLoss(),
        fl.ActivityPerturbation(fwdeqx.Rademacher()),
    ),
    "lg-fg-a-k4-rademacher": lambda: (
        fl.LocalLoss(),
        fl.ActivityPerturbation(fwdeqx.Rademacher(), num_tangents=4),
    ),
    "lg-fg-a-hash": lambda: (
        fl.LocalLoss(),
        fl.ActivityPerturbation(fwdeqx.Gaussian(generator="hash")),
    ),
}


@dataclasses.dataclass(frozen=True)
class Plan:
    name: str
    description: str
    build: Callable[[jax.Array], eqx.Module]
    input_shape: tuple[int, ...]
    batch_size: int
    variants: tuple[str, ...]
    steps: int
    warmup: int
    block: int = 1


def plans(quick: bool) -> list[Plan]:
    every = ("backprop", "lg-bp", "fg-w", "fg-a", "lg-fg-w", "lg-fg-a")
    if quick:  # a smoke run: every method once on a tiny MLP
        return [
            Plan(
                "mlp",
                "784-32x2-10 MLP, batch 8",
                lambda k: fl.mlp(784, 32, 2, 10, key=k),
                (784,),
                8,
                every,
                2,
                1,
            )
        ]
    return [
        Plan(
            "mlp-groups",
            "784-256x2-10 MLP, 64 groups per head (experiments.local_losses' quick "
            "preset), batch 64",
            lambda k: fl.mlp(784, 256, 2, 10, key=k, groups=64),
            (784,),
            64,
            ("backprop", "lg-bp", "lg-fg-a", "lg-fg-a-k4"),
            100,
            2,
            block=10,
        ),
        Plan(
            "mlp-paper",
            "784-1024x2-10 MLP, 256 groups per head (experiments.local_losses' paper "
            "preset), batch 64",
            lambda k: fl.mlp(784, 1024, 2, 10, key=k, groups=256),
            (784,),
            64,
            ("backprop", "lg-bp", "lg-fg-a", "lg-fg-a-k4"),
            40,
            2,
            block=5,
        ),
        Plan(
            "mlp",
            "784-1024x3-10 MLP, batch 128",
            lambda k: fl.mlp(784, 1024, 3, 10, key=k),
            (784,),
            128,
            every,
            60,
            2,
            block=5,
        ),
        Plan(
            "mlp-512",
            "784-512x3-10 MLP, batch 128",
            lambda k: fl.mlp(784, 512, 3, 10, key=k),
            (784,),
            128,
            ("backprop", "fg-a", "lg-fg-a"),
            60,
            2,
            block=5,
        ),
        Plan(
            "mixer",
            "LocalMixer 28x28, patch 4, width 128, 4 blocks, 4 groups, batch 128",
            lambda k: fl.local_mixer(28, 4, 1, 128, 4, 10, key=k, groups=4),
            (28, 28),
            128,
            ("backprop", "lg-bp", "fg-a", "lg-fg-a", "lg-fg-a-rademacher"),
            12,
            1,
            block=2,
        ),
        *_location_plans(),
        Plan(
            "cnn",
            "CNN 28x28, channels (32, 64, 64), batch 128",
            lambda k: fl.cnn(1, (32, 64, 64), 10, key=k),
            (28, 28),
            128,
            ("backprop", "lg-fg-a", "lg-fg-a-rademacher"),
            8,
            1,
        ),
    ]


def _location_plans() -> list[Plan]:
    """The networks with per-location losses, as `experiments.local_losses` trains
    them (its default architectures, batch 64)."""
    variants = (
        "backprop",
        "lg-bp",
        "lg-fg-a",
        "lg-fg-a-hash",
        "lg-fg-a-rademacher",
        "lg-fg-a-k4",
        "lg-fg-a-k4-rademacher",
    )
    return [
        Plan(
            "cnn-locations",
            "CNN 28x28, channels (32, 64, 64), per-location losses, 8 groups "
            "(--model cnn), batch 64",
            lambda k: fl.cnn(1, (32, 64, 64), 10, key=k, groups=8, locations=True),
            (28, 28),
            64,
            variants,
            12,
            1,
        ),
        Plan(
            "location-cnn",
            "fl.location_cnn 28x28, channels (16, 32), two convs per block, 4 groups "
            "(--model location-cnn), batch 64",
            lambda k: fl.location_cnn(1, (16, 32), 10, key=k, groups=4),
            (28, 28),
            64,
            variants,
            12,
            1,
        ),
        Plan(
            "location-mixer",
            "fl.location_mixer 28x28, 4x4 patches, width 64, 3 blocks, 8 groups "
            "(--model location-mixer), batch 64",
            lambda k: fl.location_mixer(28, 1, 4, 64, 3, 10, key=k, groups=8),
            (28, 28),
            64,
            variants,
            40,
            2,
            block=5,
        ),
    ]


class Runner:
    """One step of a variant on fixed inputs, with a fresh key every call."""

    def __init__(self, step, model, opt_state, x, y, keys):
        self.step, self.model, self.opt_state = step, model, opt_state
        self.x, self.y, self.keys = x, y, keys

    def __call__(self):
        batch = (self.x, self.y)
        return self.step(self.model, self.opt_state, batch, next(self.keys))


def run_plan(plan: Plan, key: jax.Array) -> dict[str, Any]:
    model_key, x_key, y_key, step_key = jax.random.split(key, 4)
    model = plan.build(model_key)
    x = jax.random.normal(x_key, (plan.batch_size, *plan.input_shape))
    y = jax.random.randint(y_key, (plan.batch_size,), 0, 10)
    optimizer = optax.sgd(1e-3)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    keys = list(jax.random.split(step_key, 64))
    runners = {}
    for name in plan.variants:
        objective, estimator = METHODS[name]()
        step = fwdeqx.make_step(objective, optimizer, estimator)
        runners[name] = Runner(step, model, opt_state, x, y, itertools.cycle(keys))
    timings = time_round_robin(
        runners, steps=plan.steps, warmup=plan.warmup, block=plan.block
    )
    base = timings[BASELINE]["median_ms"]
    for t in timings.values():
        t["ratio_to_backprop"] = t["median_ms"] / base
    params = sum(
        leaf.size for leaf in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))
    )
    return {
        "description": plan.description,
        "num_params": int(params),
        "rounds": max(plan.steps // plan.block, 1),
        "block": plan.block,
        "warmup_rounds": plan.warmup,
        "timings": timings,
    }


def run(quick: bool) -> dict[str, Any]:
    result = {}
    for plan in plans(quick):
        print(f"[local] {plan.name}: {plan.description}", flush=True)
        result[plan.name] = run_plan(plan, jax.random.key(0))
        for name, t in result[plan.name]["timings"].items():
            print(
                f"[local]   {name:10s} {t['median_ms']:9.3f} ms  "
                f"{t['ratio_to_backprop']:.2f}x backprop",
                flush=True,
            )
    return result
