"""fwdeqx: forward gradients for Equinox — gradient estimates from one forward-mode
pass, no backpropagation.

**Main entry points:**

- Transformations: `filter_value_and_fwd_grad`, `filter_fwd_grad` (drop-in
  replacements for `eqx.filter_value_and_grad` / `eqx.filter_grad` that take a `key`).
- Tangent distributions: `Gaussian`, `Rademacher`, `LowRank`, `Scaled`.
- Estimators: `ForwardGradient` (sample, derivatives, combine with `Mean` or
  `Projection`), `SPSA`, `Backprop`.
- Training: `make_step` (one jitted step for any estimator and `optax` optimizer),
  `fwd_adam`.
- Submodules: `fwdeqx.data` (MNIST-format datasets and batches), `fwdeqx.models`
  (the papers' models), `fwdeqx.local` (activity perturbation and local losses),
  `fwdeqx.distributed` (multi-device steps), `fwdeqx.testfns` (test functions).

```python
import fwdeqx

loss_and_grad = fwdeqx.filter_value_and_fwd_grad(loss)
value, grads = loss_and_grad(model, x, y, key=key)
```

`help(fwdeqx.make_step)` and the documentation's API reference describe each name.
"""

import importlib.metadata

from . import (
    data as data,
    distributed as distributed,
    local as local,
    models as models,
    testfns as testfns,
)
from ._combine import (
    AbstractCombiner as AbstractCombiner,
    Mean as Mean,
    Projection as Projection,
)
from ._estimators import (
    AbstractEstimator as AbstractEstimator,
    Backprop as Backprop,
    ForwardGradient as ForwardGradient,
)
from ._fwd_grad import (
    filter_fwd_grad as filter_fwd_grad,
    filter_value_and_fwd_grad as filter_value_and_fwd_grad,
)
from ._lowrank import LowRank as LowRank, LowRankMatrix as LowRankMatrix
from ._optim import (
    ScaleByFwdAdamState as ScaleByFwdAdamState,
    fwd_adam as fwd_adam,
    scale_by_fwd_adam as scale_by_fwd_adam,
)
from ._spsa import SPSA as SPSA
from ._step import TrainStep as TrainStep, make_step as make_step
from ._structured import AbstractStructuredTangent as AbstractStructuredTangent
from ._tangents import (
    AbstractTangentDistribution as AbstractTangentDistribution,
    Gaussian as Gaussian,
    Rademacher as Rademacher,
    Scaled as Scaled,
)


__version__ = importlib.metadata.version("fwdeqx")

__all__ = [
    "SPSA",
    "AbstractCombiner",
    "AbstractEstimator",
    "AbstractStructuredTangent",
    "AbstractTangentDistribution",
    "Backprop",
    "ForwardGradient",
    "Gaussian",
    "LowRank",
    "LowRankMatrix",
    "Mean",
    "Projection",
    "Rademacher",
    "ScaleByFwdAdamState",
    "Scaled",
    "TrainStep",
    "data",
    "distributed",
    "filter_fwd_grad",
    "filter_value_and_fwd_grad",
    "fwd_adam",
    "local",
    "make_step",
    "models",
    "scale_by_fwd_adam",
    "testfns",
]
