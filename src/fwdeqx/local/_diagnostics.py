"""Per-layer gradient alignment: how well an estimator's estimate points along the
exact gradients, layer by layer, so that a user sees which layer is starved of
signal."""

from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, Float, Int, PyTree

from .._checks import check_key, check_positive_int
from .._estimators import AbstractEstimator, Backprop
from ._layers import LocalNetwork, points
from ._objectives import AbstractLocalObjective, GlobalLoss


class LayerAlignment(NamedTuple):
    """The alignment of one perturbation site's parameter estimate.

    **Fields:**

    - `block`: the site's block.
    - `site`: its position among all sites, in forward order.
    - `objective`: the cosine similarity between the estimate and the exact
        gradient of the objective the estimator targets (1 for an exact estimator).
    - `end_to_end`: the cosine similarity between the estimate and the exact
        gradient of the end-to-end loss (`GlobalLoss` with the same per-example
        loss); below `objective` where a local objective trains the layer for its
        own head rather than the network's output.
    """

    block: int
    site: int
    objective: Float[Array, ""]
    end_to_end: Float[Array, ""]


def _site_vectors(grads: PyTree) -> list[Array]:
    """Each site's gradient, flattened into one vector."""
    return [
        jnp.concatenate(
            [
                jnp.ravel(leaf)
                for leaf in jtu.tree_leaves(eqx.filter(p.site, eqx.is_inexact_array))
            ]
        )
        for p in points(grads)
    ]


def _cosine(a: Array, b: Array) -> Array:
    norm = jnp.linalg.norm(a) * jnp.linalg.norm(b)
    return jnp.where(norm > 0, jnp.vdot(a, b) / jnp.where(norm > 0, norm, 1), 0.0)


@eqx.filter_jit
def _alignments(estimator, objective, model, x, y, keys):
    exact = _site_vectors(Backprop()(objective, model, x, y, key=keys[0])[1])
    end_to_end_loss = GlobalLoss(objective.per_example_loss)
    end_to_end = _site_vectors(Backprop()(end_to_end_loss, model, x, y, key=keys[0])[1])

    def one(key):
        estimate = _site_vectors(estimator(objective, model, x, y, key=key)[1])
        return (
            jnp.stack([_cosine(e, g) for e, g in zip(estimate, exact, strict=True)]),
            jnp.stack(
                [_cosine(e, g) for e, g in zip(estimate, end_to_end, strict=True)]
            ),
        )

    # vmap, not lax.map: XLA CPU convolutions run several times slower in a loop.
    to_objective, to_end = jax.vmap(one)(keys)
    return jnp.mean(to_objective, axis=0), jnp.mean(to_end, axis=0)


def alignment(
    estimator: AbstractEstimator,
    objective: Callable[..., Any],  # checked below, with a message that says why
    model: LocalNetwork,
    x: Array,
    y: Int[Array, " n"],
    *,
    key: Any,  # any object: `check_key` explains what is wrong with it
    num_keys: int = 4,
) -> list[LayerAlignment]:
    """The cosine similarity, per perturbation site, between `estimator`'s estimate
    of the site's parameters and the exact gradients, averaged over `num_keys`
    keys.

    **Arguments:**

    - `estimator`: any estimator, e.g. `fwdeqx.local.ActivityPerturbation()`.
    - `objective`: the local objective it estimates, e.g.
        `fwdeqx.local.LocalLoss()`.
    - `model`: a `fwdeqx.local.LocalNetwork`.
    - `x`, `y`: a batch of inputs and integer labels.
    - `key`: split into the `num_keys` keys the estimates are drawn with.
    - `num_keys`: how many estimates are averaged (the mean of the cosines).

    **Returns:**

    One [`fwdeqx.local.LayerAlignment`][] per site, in forward order.

    !!! Example

        ```python
        for layer in fl.alignment(fl.ActivityPerturbation(), fl.LocalLoss(),
                                  model, x, y, key=key):
            print(layer.block, float(layer.objective), float(layer.end_to_end))
        ```
    """
    name = "fwdeqx.local.alignment"
    check_key(key, name)
    check_positive_int(num_keys, "num_keys")
    if not isinstance(objective, AbstractLocalObjective):
        raise TypeError(
            f"{name} needs a local objective (fwdeqx.local.LocalLoss(), "
            f"GlobalLoss(), ...), got {objective!r}."
        )
    if not isinstance(model, LocalNetwork):
        raise TypeError(f"{name} needs a fwdeqx.local.LocalNetwork, got {model!r}.")
    found = points(model)
    if not found:
        raise ValueError(f"{name}: the model has no perturbation sites.")
    keys = jax.random.split(key, num_keys)
    to_objective, to_end = _alignments(estimator, objective, model, x, y, keys)
    return [
        LayerAlignment(point.block, index, to_objective[index], to_end[index])
        for index, point in enumerate(found)
    ]
