"""Names the experiments and benchmarks accept, mapped to library objects: one
table each for estimators, optimizers (and learning-rate schedules), models, local
networks and local-loss methods, one meaning per name.

One place to extend: a new estimator, optimizer, model or method is one new entry
here and then appears in every experiment that takes it, with no new code path.

Estimator specs are `name` or `name-kK` (K tangents, e.g. `fwd-gaussian-k4`):

| spec | object |
|---|---|
| `backprop` | `fwdeqx.Backprop()` |
| `fwd-gaussian` | `fwdeqx.ForwardGradient(fwdeqx.Gaussian())` |
| `fwd-gaussian-hash` | `fwdeqx.ForwardGradient(fwdeqx.Gaussian(generator="hash"))` |
| `fwd-rademacher` | `fwdeqx.ForwardGradient(fwdeqx.Rademacher())` |
| `fwd-lowrank` | `fwdeqx.ForwardGradient(fwdeqx.LowRank(rank=1))` |
| `fwd-lowrank4` | `fwdeqx.ForwardGradient(fwdeqx.LowRank(rank=4))` |
| `fwd-projection` | `fwd-gaussian` with `combine=fwdeqx.Projection()` |
| `fwd-projection-rescaled` | `fwd-gaussian` with `fwdeqx.Projection(rescale=True)` |
| `fwd-lowrank-projection` | `fwdeqx.Projection()` of rank-1 `fwdeqx.LowRank` tangents |
| `spsa` | `fwdeqx.SPSA(num_directions=K)` |

To add one: `ESTIMATORS["fwd-rademacher-projection"] = _forward(fwdeqx.Rademacher,
combine=fwdeqx.Projection())`. A factory takes `num_tangents` (K, default 1); one
that has no K should raise `ValueError` for K != 1 (see `_no_tangents`).

Optimizers map a name to a factory `lr -> optax.GradientTransformation` (`sgd`,
`sgd-m0.9` (momentum 0.9), `adam`, `adam-b0.99`, and `fwd-adam`, `fwd-adam-global`,
`fwd-adam-b0.99` from `fwdeqx.fwd_adam`); add one with `OPTIMIZERS["lion"] =
optax.lion`. `lr` is a number or, through `SCHEDULES`, an optax schedule.

`MODELS` are the `fwdeqx.models` classifiers (`mlp`, `logreg`, `cnn`);
`LOCAL_NETWORKS` the `fwdeqx.local` networks (`mlp`, `cnn`, `mixer`, and with
per-location losses `location-cnn`, `location-mixer`) built from keyword arguments
`arch`; `METHODS` the local-loss methods of Ren et al. (2023):

| method   | objective                       | estimator                        |
|----------|---------------------------------|----------------------------------|
| backprop | `fl.GlobalLoss` (end to end)    | `fwdeqx.Backprop()`              |
| fg-w     | `fl.GlobalLoss`                 | `fwdeqx.ForwardGradient()`       |
| fg-a     | `fl.GlobalLoss`                 | `fl.ActivityPerturbation()`      |
| lg-bp    | `fl.LocalLoss` (stop-gradients) | `fwdeqx.Backprop()` (reference)  |
| lg-fg-w  | `fl.LocalLoss` (stop-gradients) | `fl.LocalWeightPerturbation()`   |
| lg-fg-a  | `fl.LocalLoss`                  | `fl.ActivityPerturbation()`      |

The forward estimators draw their tangents from `TANGENTS` (`gaussian`, the
default, or `rademacher`).
"""

import math
import re
from collections.abc import Callable
from typing import Any

import equinox as eqx
import optax
from jaxtyping import PRNGKeyArray

import fwdeqx
import fwdeqx.local as fl
from fwdeqx import models


EstimatorFactory = Callable[[int], fwdeqx.AbstractEstimator]
OptimizerFactory = Callable[[Any], optax.GradientTransformation]
MethodFactory = Callable[
    [int, fwdeqx.AbstractTangentDistribution], tuple[Callable, fwdeqx.AbstractEstimator]
]


def _no_tangents(make: Callable[[], fwdeqx.AbstractEstimator]) -> EstimatorFactory:
    def factory(num_tangents: int) -> fwdeqx.AbstractEstimator:
        if num_tangents != 1:
            raise ValueError("this estimator has no number of tangents (-kK)")
        return make()

    return factory


def _forward(
    make_tangents: Callable[[], fwdeqx.AbstractTangentDistribution],
    **options: fwdeqx.AbstractCombiner,
) -> EstimatorFactory:
    """`fwdeqx.ForwardGradient` with K tangents; `options` (`combine=...`) as in
    its constructor."""
    return lambda num_tangents: fwdeqx.ForwardGradient(
        make_tangents(), num_tangents=num_tangents, **options
    )


ESTIMATORS: dict[str, EstimatorFactory] = {
    "backprop": _no_tangents(fwdeqx.Backprop),
    "fwd-gaussian": _forward(fwdeqx.Gaussian),
    "fwd-gaussian-hash": _forward(lambda: fwdeqx.Gaussian(generator="hash")),
    "fwd-rademacher": _forward(fwdeqx.Rademacher),
    "fwd-lowrank": _forward(lambda: fwdeqx.LowRank(rank=1)),
    "fwd-lowrank4": _forward(lambda: fwdeqx.LowRank(rank=4)),
    # Beyond the papers (docs/beyond.md): combiners of K tangents and SPSA.
    "fwd-projection": _forward(fwdeqx.Gaussian, combine=fwdeqx.Projection()),
    # Rank-1 tangents: the Gram matrix comes from the factors, the jvp costs a
    # fraction of a dense one, so K = 16..64 tangents are affordable.
    "fwd-lowrank-projection": _forward(
        lambda: fwdeqx.LowRank(rank=1), combine=fwdeqx.Projection()
    ),
    "fwd-projection-rescaled": _forward(
        fwdeqx.Gaussian, combine=fwdeqx.Projection(rescale=True)
    ),
    "spsa": lambda num_directions: fwdeqx.SPSA(num_directions=num_directions),
}

OPTIMIZERS: dict[str, OptimizerFactory] = {
    "sgd": optax.sgd,
    "sgd-m0.9": lambda lr: optax.sgd(lr, momentum=0.9),
    "adam": optax.adam,
    # Beyond the papers (docs/beyond.md): the forward-gradient-aware Adam.
    "fwd-adam": fwdeqx.fwd_adam,
    "fwd-adam-global": lambda lr: fwdeqx.fwd_adam(lr, second_moment="global"),
    "adam-b0.99": lambda lr: optax.adam(lr, b1=0.99),
    "fwd-adam-b0.99": lambda lr: fwdeqx.fwd_adam(lr, b1=0.99),
}

_SPEC = re.compile(r"^(?P<name>.+?)(?:-k(?P<k>\d+))?$")


def parse_estimator_spec(spec: str) -> tuple[str, int]:
    """Split `spec` into a registry name and K; raise `ValueError` naming the
    known estimators when it is not one of them."""
    match = _SPEC.match(spec)
    if match is None or match["name"] not in ESTIMATORS:
        known = ", ".join(sorted(ESTIMATORS))
        raise ValueError(
            f"unknown estimator {spec!r}; known: {known} (append -kK for K "
            "tangents, e.g. fwd-gaussian-k4)"
        )
    num_tangents = int(match["k"]) if match["k"] is not None else 1
    if num_tangents < 1:
        raise ValueError(f"estimator {spec!r}: K must be at least 1")
    return match["name"], num_tangents


def make_estimator(spec: str) -> fwdeqx.AbstractEstimator:
    """The estimator object named by `spec` (e.g. `fwd-gaussian-k4`)."""
    name, num_tangents = parse_estimator_spec(spec)
    try:
        return ESTIMATORS[name](num_tangents)
    except ValueError as error:
        raise ValueError(f"estimator {spec!r}: {error}") from None


def check_optimizer(name: str) -> None:
    if name not in OPTIMIZERS:
        known = ", ".join(sorted(OPTIMIZERS))
        raise ValueError(f"unknown optimizer {name!r}; known: {known}")


SCHEDULES: dict[str, Callable[[float, int], Any]] = {
    "constant": lambda lr, total_steps: lr,
    # From `lr` to 0 along a half cosine over the run.
    "cosine": lambda lr, total_steps: optax.cosine_decay_schedule(
        lr, max(total_steps, 1)
    ),
}


def make_optimizer(
    name: str, lr: Any, *, schedule: str = "constant", total_steps: int = 1
) -> optax.GradientTransformation:
    """The optax optimizer `name` with learning rate `lr` (a number, possibly
    traced) along `SCHEDULES[schedule]` over `total_steps` steps."""
    check_optimizer(name)
    if schedule not in SCHEDULES:
        known = ", ".join(SCHEDULES)
        raise ValueError(f"unknown schedule {schedule!r}; known: {known}")
    return OPTIMIZERS[name](SCHEDULES[schedule](lr, total_steps))


MODELS: dict[str, Callable[..., eqx.Module]] = {
    "mlp": models.MLP,
    "logreg": models.LogisticRegression,
    "cnn": models.CNN,
}
"""`fwdeqx.models` classifiers for MNIST-shaped inputs, `MODELS[name](key=key)`."""

Image = tuple[int, int, int]
"""An example's `(channels, height, width)`; the networks take square images."""

LOCAL_NETWORKS: dict[str, Callable[..., fl.LocalNetwork]] = {
    "mlp": lambda arch, *, image, key: fl.mlp(
        math.prod(image),
        arch["width"],
        arch["depth"],
        10,
        key=key,
        groups=arch["groups"],
    ),
    "cnn": lambda arch, *, image, key: fl.cnn(
        image[0],
        arch["channels"],
        10,
        key=key,
        groups=arch["groups"],
        image_size=image[-1],
        locations=arch.get("locations", False),
    ),
    "mixer": lambda arch, *, image, key: fl.local_mixer(
        image[-1],
        arch["patch"],
        image[0],
        arch["width"],
        arch["depth"],
        10,
        key=key,
        groups=arch["groups"],
    ),
    "location-cnn": lambda arch, *, image, key: fl.location_cnn(
        image[0],
        arch["channels"],
        10,
        key=key,
        groups=arch["groups"],
        image_size=image[-1],
    ),
    "location-mixer": lambda arch, *, image, key: fl.location_mixer(
        image[-1],
        image[0],
        arch["patches"],
        arch["width"],
        arch["depth"],
        10,
        key=key,
        groups=arch["groups"],
    ),
}
"""`fwdeqx.local` networks for 10 classes, `LOCAL_NETWORKS[name](arch, image=image,
key=key)` with `arch` the builder's keyword arguments and `image` an `Image`."""


def make_local_network(
    name: str, arch: dict[str, Any], *, image: Image = (1, 28, 28), key: PRNGKeyArray
) -> fl.LocalNetwork:
    if name not in LOCAL_NETWORKS:
        known = ", ".join(LOCAL_NETWORKS)
        raise ValueError(f"unknown model {name!r}; choose one of {known}")
    if image[1] != image[2]:
        raise ValueError(f"the {name} network takes square images, got {image}")
    return LOCAL_NETWORKS[name](arch, image=image, key=key)


TANGENTS: dict[str, Callable[[], fwdeqx.AbstractTangentDistribution]] = {
    "gaussian": fwdeqx.Gaussian,
    "rademacher": fwdeqx.Rademacher,
}
"""Tangent distributions of the forward local-loss methods, by name."""

METHODS: dict[str, MethodFactory] = {
    "backprop": lambda k, v: (fl.GlobalLoss(), fwdeqx.Backprop()),
    "fg-w": lambda k, v: (fl.GlobalLoss(), fwdeqx.ForwardGradient(v, num_tangents=k)),
    "fg-a": lambda k, v: (fl.GlobalLoss(), fl.ActivityPerturbation(v, num_tangents=k)),
    "lg-bp": lambda k, v: (fl.LocalLoss(), fwdeqx.Backprop()),
    "lg-fg-w": lambda k, v: (
        fl.LocalLoss(),
        fl.LocalWeightPerturbation(v, num_tangents=k),
    ),
    "lg-fg-a": lambda k, v: (
        fl.LocalLoss(),
        fl.ActivityPerturbation(v, num_tangents=k),
    ),
}
"""Local-loss methods, in the row order of Ren et al.'s Table 3: (K tangents, their
distribution) -> `(objective, estimator)`, `objective(model, x, y)` a batch-mean
scalar."""


def make_method(
    name: str, num_tangents: int, tangents: str = "gaussian"
) -> tuple[Callable, Any]:
    """`(objective, estimator)` of the local-loss method `name`, its forward
    estimators drawing `num_tangents` tangents from `TANGENTS[tangents]`."""
    if name not in METHODS:
        known = ", ".join(METHODS)
        raise ValueError(f"unknown method {name!r}; choose from {known}")
    if tangents not in TANGENTS:
        known = ", ".join(TANGENTS)
        raise ValueError(f"unknown tangents {tangents!r}; choose from {known}")
    return METHODS[name](num_tangents, TANGENTS[tangents]())


def method_parts(name: str) -> tuple[str, str]:
    """The class names of `name`'s objective and estimator (config and report)."""
    objective, estimator = make_method(name, 1)
    return type(objective).__name__, type(estimator).__name__
