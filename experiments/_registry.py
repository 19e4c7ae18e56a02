"""Names the experiments accept on the command line, mapped to library objects.

One place to extend: a new estimator or optimizer is one new entry here and then
appears in every experiment that takes `--estimators` / `--optimizers`, with no new
code path.

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
`adam`, `adam-b0.99`, and `fwd-adam`, `fwd-adam-global`, `fwd-adam-b0.99` from
`fwdeqx.fwd_adam`); add one with `OPTIMIZERS["lion"] = optax.lion`.
"""

import re
from collections.abc import Callable

import optax

import fwdeqx


EstimatorFactory = Callable[[int], fwdeqx.AbstractEstimator]
OptimizerFactory = Callable[[float], optax.GradientTransformation]


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


def make_optimizer(name: str, lr: float) -> optax.GradientTransformation:
    """The optax optimizer `name` with learning rate `lr`."""
    check_optimizer(name)
    return OPTIMIZERS[name](lr)
