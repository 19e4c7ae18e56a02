"""Activity perturbation and local losses (Ren, Kornblith, Liao and Hinton, ICLR 2023,
"Scaling Forward Gradient With Local Losses") for networks built from Equinox layers.

Build a `LocalNetwork` of `Block`s (standard `eqx.nn` layers, `Perturbed` around the
affine layers whose activities are perturbed, a `LinearHead` per block), pick an
objective (`GlobalLoss` end to end, `LocalLoss` one loss per block) and an
estimator (`ActivityPerturbation`, `LocalWeightPerturbation`, or the core
`fwdeqx.ForwardGradient` / `fwdeqx.Backprop`). For convolutional and mixer
blocks, `LocationHead` and `LocationPerturbed` give one loss copy per location
and channel group (Ren et al.'s patch-wise losses).

New pieces are one subclass each: a perturbation site (`AbstractSite`), a head
(`AbstractHead`), an objective (`AbstractLocalObjective`); `AbstractReLU` and
`AbstractChannelwise` declare custom activations, `AbstractLocationwise` and
`AbstractGroupwise` custom per-location layers. `alignment` measures, per
perturbed layer, how well an estimate points along the exact gradients.
"""

from ._diagnostics import LayerAlignment as LayerAlignment, alignment as alignment
from ._estimators import (
    ActivityPerturbation as ActivityPerturbation,
    LocalWeightPerturbation as LocalWeightPerturbation,
)
from ._heads import (
    AbstractHead as AbstractHead,
    LinearHead as LinearHead,
    LocationHead as LocationHead,
)
from ._layers import Block as Block, LocalNetwork as LocalNetwork, Residual as Residual
from ._models import (
    cnn as cnn,
    local_mixer as local_mixer,
    location_cnn as location_cnn,
    location_mixer as location_mixer,
    mlp as mlp,
)
from ._objectives import (
    AbstractLocalObjective as AbstractLocalObjective,
    GlobalLoss as GlobalLoss,
    LocalLoss as LocalLoss,
    softmax_cross_entropy as softmax_cross_entropy,
)
from ._sites import (
    AbstractChannelwise as AbstractChannelwise,
    AbstractGroupwise as AbstractGroupwise,
    AbstractLocationwise as AbstractLocationwise,
    AbstractReLU as AbstractReLU,
    AbstractSite as AbstractSite,
    LocationPerturbed as LocationPerturbed,
    NeighbourhoodPerturbed as NeighbourhoodPerturbed,
    Perturbed as Perturbed,
)


__all__ = [
    "AbstractChannelwise",
    "AbstractGroupwise",
    "AbstractHead",
    "AbstractLocalObjective",
    "AbstractLocationwise",
    "AbstractReLU",
    "AbstractSite",
    "ActivityPerturbation",
    "Block",
    "GlobalLoss",
    "LayerAlignment",
    "LinearHead",
    "LocalLoss",
    "LocalNetwork",
    "LocalWeightPerturbation",
    "LocationHead",
    "LocationPerturbed",
    "NeighbourhoodPerturbed",
    "Perturbed",
    "Residual",
    "alignment",
    "cnn",
    "local_mixer",
    "location_cnn",
    "location_mixer",
    "mlp",
    "softmax_cross_entropy",
]
