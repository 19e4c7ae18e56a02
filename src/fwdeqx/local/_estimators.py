"""FG-A / LG-FG-A (`ActivityPerturbation`) and LG-FG-W (`LocalWeightPerturbation`)."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
from jaxtyping import PRNGKeyArray, PyTree

from .._estimators import AbstractEstimator
from .._tangents import AbstractTangentDistribution, Gaussian
from ._engine import estimate


def _check(tangents: object, num_tangents: object, who: str) -> None:
    if not isinstance(tangents, AbstractTangentDistribution):
        raise TypeError(
            f"{who}: `tangents` must be a tangent distribution such as "
            f"fwdeqx.Gaussian(), got {tangents!r}."
        )
    if not isinstance(num_tangents, int) or num_tangents < 1:
        raise ValueError(f"{who}: `num_tangents` must be an int >= 1.")


class ActivityPerturbation(AbstractEstimator):
    """Activity perturbation (Ren et al. 2023): FG-A with `fwdeqx.local.GlobalLoss`,
    LG-FG-A with `fwdeqx.local.LocalLoss`.

    Every `Perturbed` layer's output z gets a tangent uₙ of its own for every
    example n (and each of the K tangents). One forward-mode pass, vmapped over
    the batch and the K tangents, gives each example's directional derivative dₙ
    of its own loss: of its block's loss under `LocalLoss` (each block's input is
    stop-gradiented), of the final loss under `GlobalLoss`. A head with `groups=G`
    has G loss copies, and a `Perturbed(..., grouped=True)` layer's channel group g
    is paired with copy g only. The layer's estimate is then

        g_W = (1/N) Σₙ (1/K) Σ_k (dₙₖ uₙₖ) xₙᵀ   (and g_b = (1/N) Σₙ (1/K) Σ_k dₙₖ uₙₖ),

    computed as the vjp of that single layer at its recorded input xₙ. Its variance
    scales with the layer's width q rather than fan-in × width (Ren et al.'s
    Table 1: (q + 2)/N·V against (pq + 2)/N·V).

    The other parameters: each head's gradient is exact (the reverse step through
    its one `Linear` and the loss, as Ren et al. do); floating parameters outside
    `Perturbed` layers and heads (e.g. `eqx.nn.LayerNorm`'s) are weight-perturbed
    in the same pass, with tangents shared by the batch, and paired with their
    block's derivative. All estimates are unbiased for the objective's gradient.

    **Arguments:**

    - `tangents`: the distribution of the activity (and weight) tangents; one with
        independent entries (default `fwdeqx.Gaussian()`, or `fwdeqx.Rademacher()`).
    - `num_tangents`: K, averaged (one batched pass).
    - `mask_inactive`: zero the estimate at units of a `Perturbed` layer directly
        followed by `jax.nn.relu` whose pre-activation is ≤ 0 (their true gradient
        is zero there), as Ren et al. do. Keeps the estimate unbiased.

    !!! Example

        ```python
        import fwdeqx.local as fl

        model = fl.mlp(784, 512, 3, 10, key=key)
        value, grads = fl.ActivityPerturbation()(fl.LocalLoss(), model, x, y, key=key)
        ```
    """

    tangents: AbstractTangentDistribution = Gaussian()
    num_tangents: int = eqx.field(static=True, default=1)
    mask_inactive: bool = eqx.field(static=True, default=True)

    def __check_init__(self):
        _check(self.tangents, self.num_tangents, "fwdeqx.local.ActivityPerturbation")

    def __call__(
        self,
        fun: Callable,
        x: PyTree,
        /,
        *args: Any,
        key: PRNGKeyArray,
        has_aux: bool = False,
        **kwargs: Any,
    ) -> tuple[Any, PyTree]:
        """`(value, grads)` for `fun(x, *args)`, where `fun` is a
        `fwdeqx.local.LocalLoss` or `GlobalLoss`, `x` a `fwdeqx.local.LocalNetwork`
        and `args` the batch `(inputs, labels)` (or one `(inputs, labels)` pair)."""
        return estimate(
            fun,
            x,
            args,
            kwargs,
            key=key,
            has_aux=has_aux,
            tangents=self.tangents,
            num_tangents=self.num_tangents,
            activity=True,
            mask_inactive=self.mask_inactive,
            who="fwdeqx.local.ActivityPerturbation",
        )

    @property
    def num_forward_passes(self) -> int:
        return self.num_tangents


class LocalWeightPerturbation(AbstractEstimator):
    """Local weight perturbation (LG-FG-W, Ren et al. 2023), with
    `fwdeqx.local.LocalLoss`.

    Every floating parameter outside the heads gets a weight tangent v (shared by
    the batch) and one forward-mode pass, vmapped over the K tangents, gives every
    block's directional derivative d_b of its own loss; the block's parameters'
    estimate is (1/K) Σ_k d_{b,k} v_k, so no block sees another block's loss. Each
    head's gradient is exact (one reverse step through its `Linear` and the loss).
    With `GlobalLoss` every block uses the final loss's derivative (FG-W with exact
    heads).

    **Arguments:**

    - `tangents`: the weight-tangent distribution (default `fwdeqx.Gaussian()`).
    - `num_tangents`: K, averaged (one batched pass).
    """

    tangents: AbstractTangentDistribution = Gaussian()
    num_tangents: int = eqx.field(static=True, default=1)

    def __check_init__(self):
        _check(self.tangents, self.num_tangents, "fwdeqx.local.LocalWeightPerturbation")

    def __call__(
        self,
        fun: Callable,
        x: PyTree,
        /,
        *args: Any,
        key: PRNGKeyArray,
        has_aux: bool = False,
        **kwargs: Any,
    ) -> tuple[Any, PyTree]:
        """As `ActivityPerturbation.__call__`."""
        return estimate(
            fun,
            x,
            args,
            kwargs,
            key=key,
            has_aux=has_aux,
            tangents=self.tangents,
            num_tangents=self.num_tangents,
            activity=False,
            mask_inactive=False,
            who="fwdeqx.local.LocalWeightPerturbation",
        )

    @property
    def num_forward_passes(self) -> int:
        return self.num_tangents
