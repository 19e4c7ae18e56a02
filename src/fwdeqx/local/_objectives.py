"""Objectives built from a per-example loss: `objective(model, x, y)` is a batch
mean, so any estimator (`fwdeqx.Backprop()`, `fwdeqx.ForwardGradient()`) takes it,
and the activity estimators read its per-example loss."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from ._layers import LocalNetwork


def softmax_cross_entropy(
    logits: Float[Array, " classes"], label: Int[Array, ""]
) -> Float[Array, ""]:
    """The cross-entropy of one example: logsumexp(logits) − logits[label].

    **Arguments:**

    - `logits`: the unnormalised log-probabilities of one example.
    - `label`: its integer class.

    **Returns:**

    A scalar.
    """
    return jax.nn.logsumexp(logits) - logits[label]


def unpack_batch(args: tuple[Any, ...]) -> tuple[Array, Array]:
    """`(x, y)` from `(x, y)` or from one `(x, y)` pair (as `make_step` passes
    `loss(model, batch)`), with matching leading sizes."""
    if len(args) == 1 and isinstance(args[0], tuple | list) and len(args[0]) == 2:
        args = tuple(args[0])
    if len(args) != 2:
        raise TypeError(
            "Local-loss objectives are called as objective(model, x, y) or "
            f"objective(model, (x, y)); got {len(args)} batch arguments."
        )
    x, y = args
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.ndim == 0 or y.ndim == 0 or x.shape[0] != y.shape[0]:
        raise ValueError(
            "x and y must be batches with the same leading size, got shapes "
            f"{x.shape} and {y.shape}."
        )
    return x, y


class AbstractLocalObjective(eqx.Module):
    """An objective known to be the batch mean of a per-example loss, which the
    activity-perturbation estimators need."""

    per_example_loss: eqx.AbstractVar[Callable[..., Array]]


class GlobalLoss(AbstractLocalObjective):
    """The end-to-end objective: the batch mean of `per_example_loss(model(x_n), y_n)`.

    `fwdeqx.Backprop()` of it is backprop; `fwdeqx.ForwardGradient()` of it is FG-W;
    `fwdeqx.local.ActivityPerturbation()` of it is FG-A.

    **Arguments:**

    - `per_example_loss`: `loss(logits, label) -> scalar` for one example
        (default `softmax_cross_entropy`).
    """

    per_example_loss: Callable[..., Array] = softmax_cross_entropy

    def __call__(self, model: Callable, *batch: Any) -> Float[Array, ""]:
        x, y = unpack_batch(batch)
        losses = jax.vmap(lambda xn, yn: self.per_example_loss(model(xn), yn))(x, y)
        return jnp.mean(losses)


def check_local_network(model: object, who: str) -> LocalNetwork:
    if not isinstance(model, LocalNetwork):
        raise TypeError(
            f"{who} needs a fwdeqx.local.LocalNetwork as the model (blocks with "
            f"heads), got {type(model).__name__}."
        )
    return model


class LocalLoss(AbstractLocalObjective):
    """The local greedy objective: the batch mean over examples n of
    Σ_b `per_example_loss(head_b(block_b(stop_gradient(h_{b−1,n}))), y_n)`.

    Every block's input is stop-gradiented, so each block (and its head) is trained
    by its own loss. A head with `groups=G` contributes its loss once (the G
    copies used by the activity estimators share its value and sum to its
    gradient). `fwdeqx.Backprop()` of it is the exact local-loss gradient (LG-BP);
    `LocalWeightPerturbation()` of it is LG-FG-W and `ActivityPerturbation()` of it
    is LG-FG-A. Every block needs a head.

    **Arguments:**

    - `per_example_loss`: `loss(logits, label) -> scalar` for one example
        (default `softmax_cross_entropy`).
    """

    per_example_loss: Callable[..., Array] = softmax_cross_entropy

    def __call__(self, model: LocalNetwork, *batch: Any) -> Float[Array, ""]:
        check_heads(check_local_network(model, "fwdeqx.local.LocalLoss"))
        x, y = unpack_batch(batch)

        def one(xn, yn):
            losses = []
            h = xn
            for block in model.blocks:
                h = block(jax.lax.stop_gradient(h))
                assert block.head is not None
                losses.append(self.per_example_loss(block.head(h), yn))
            return sum(losses[1:], losses[0])

        return jnp.mean(jax.vmap(one)(x, y))


def check_heads(model: LocalNetwork) -> None:
    missing = [i for i, block in enumerate(model.blocks) if block.head is None]
    if missing:
        raise ValueError(
            f"LocalLoss needs a head on every block; blocks {missing} have none. "
            "Give them Block(..., head=LinearHead(...)) or use GlobalLoss."
        )
