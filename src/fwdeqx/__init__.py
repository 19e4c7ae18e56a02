"""fwdeqx: forward gradients for Equinox — gradient estimates from one forward-mode
pass, no backpropagation."""

import importlib.metadata

from . import testfns as testfns
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
from ._step import TrainStep as TrainStep, make_step as make_step
from ._structured import AbstractStructuredTangent as AbstractStructuredTangent
from ._tangents import (
    AbstractTangentDistribution as AbstractTangentDistribution,
    Gaussian as Gaussian,
    Rademacher as Rademacher,
    Scaled as Scaled,
)


__version__ = importlib.metadata.version("fwdeqx")
