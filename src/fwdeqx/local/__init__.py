"""Activity perturbation and local losses (Ren, Kornblith, Liao and Hinton, ICLR 2023,
"Scaling Forward Gradient With Local Losses") for networks built from Equinox layers.

Build a `LocalNetwork` of `Block`s (standard `eqx.nn` layers, `Perturbed` around the
affine layers whose activities are perturbed, a `LinearHead` per block), pick an
objective (`GlobalLoss` end to end, `LocalLoss` one loss per block) and an
estimator (`ActivityPerturbation`, `LocalWeightPerturbation`, or the core
`fwdeqx.ForwardGradient` / `fwdeqx.Backprop`).
"""

from ._estimators import (
    ActivityPerturbation as ActivityPerturbation,
    LocalWeightPerturbation as LocalWeightPerturbation,
)
from ._layers import (
    Block as Block,
    LinearHead as LinearHead,
    LocalNetwork as LocalNetwork,
    Perturbed as Perturbed,
    Residual as Residual,
)
from ._models import cnn as cnn, local_mixer as local_mixer, mlp as mlp
from ._objectives import (
    GlobalLoss as GlobalLoss,
    LocalLoss as LocalLoss,
    softmax_cross_entropy as softmax_cross_entropy,
)
