"""fwdeqx: forward gradients for Equinox — gradient estimates from one forward-mode
pass, no backpropagation."""

import importlib.metadata

from . import distributed as distributed, local as local, testfns as testfns
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
