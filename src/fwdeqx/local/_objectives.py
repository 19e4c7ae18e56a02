"""Objectives built from a per-example loss: `objective(model, x, y)` is a batch
mean, so any estimator (`fwdeqx.Backprop()`, `fwdeqx.ForwardGradient()`) takes it,
and the activity estimators read its per-example loss."""

import abc
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from ._layers import LocalNetwork, record


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
    """Base class of objectives over a `fwdeqx.local.LocalNetwork`: the batch mean
    over examples of the sum of the losses of the heads that count, with the
    inputs of some blocks stop-gradiented.

    A subclass declares where the stop-gradients go (`detaches`) and which heads
    count (`counts`); `__call__` and the estimators both read those, so a new
    objective is one subclass.
    """

    per_example_loss: eqx.AbstractVar[Callable[..., Array]]

    @abc.abstractmethod
    def detaches(self, block: int) -> bool:
        """Whether the input of block `block` is stop-gradiented."""

    @abc.abstractmethod
    def counts(self, block: int, num_blocks: int) -> bool:
        """Whether the loss of block `block`'s head is part of the objective."""

    def heads(self, model: LocalNetwork) -> list[int]:
        """The blocks whose head's loss counts, in order (each must have a head)."""
        num_blocks = len(model.blocks)
        counted = [b for b in range(num_blocks) if self.counts(b, num_blocks)]
        missing = [b for b in counted if model.blocks[b].head is None]
        if missing:
            raise ValueError(
                f"{type(self).__name__} needs a head on blocks {missing}, which have "
                "none. Give them Block(..., head=LinearHead(...)) or use GlobalLoss."
            )
        return counted

    def reached(self, model: LocalNetwork, block: int) -> list[int]:
        """The positions in `heads(model)` of the losses that block `block`'s
        parameters reach: counted heads from `block` on, up to the next
        stop-gradient."""
        counted = self.heads(model)
        return [
            i
            for i, head in enumerate(counted)
            if head >= block
            and not any(self.detaches(b) for b in range(block + 1, head + 1))
        ]

    def __call__(self, model: LocalNetwork, *batch: Any) -> Float[Array, ""]:
        """The objective of `model` on the batch `(x, y)` (or `x, y`)."""
        model, x, y = self._checked(model, batch)

        def per_example(xn, yn):
            losses = self._example_losses(model, xn, yn)
            return sum(losses[1:], losses[0])

        return jnp.mean(jax.vmap(per_example)(x, y))

    def head_losses(self, model: LocalNetwork, *batch: Any) -> Float[Array, " heads"]:
        """The batch mean of each counted head's loss, in the order of
        `heads(model)`: the terms whose sum is the objective. Divided by their
        number, the objective is on the scale of one head's loss (the end-to-end
        loss for `GlobalLoss`, which counts the last head only).

        **Arguments:** as for calling the objective.

        **Returns:**

        A vector with one loss per counted head.
        """
        model, x, y = self._checked(model, batch)

        def per_example(xn, yn):
            return jnp.stack(self._example_losses(model, xn, yn))

        return jnp.mean(jax.vmap(per_example)(x, y), axis=0)

    def _checked(
        self, model: LocalNetwork, batch: tuple[Any, ...]
    ) -> tuple[LocalNetwork, Array, Array]:
        model = check_local_network(model, f"fwdeqx.local.{type(self).__name__}")
        self.heads(model)  # every counted block has a head
        return (model, *unpack_batch(batch))

    def _example_losses(self, model: LocalNetwork, xn: Array, yn: Array) -> list:
        """One example's loss of each counted head."""
        outputs = record(model, xn, detach=self.detaches).outputs
        losses = []
        for b in self.heads(model):
            head = model.blocks[b].head
            assert head is not None
            losses.append(self.per_example_loss(head(outputs[b]), yn))
        return losses


class GlobalLoss(AbstractLocalObjective):
    """The end-to-end objective: the batch mean of `per_example_loss(model(x_n), y_n)`
    (the last head's loss, no stop-gradients).

    `fwdeqx.Backprop()` of it is backprop; `fwdeqx.ForwardGradient()` of it is FG-W;
    `fwdeqx.local.ActivityPerturbation()` of it is FG-A.

    **Arguments:**

    - `per_example_loss`: `loss(logits, label) -> scalar` for one example
        (default `softmax_cross_entropy`).
    """

    per_example_loss: Callable[..., Array] = softmax_cross_entropy

    def detaches(self, block: int) -> bool:
        return False

    def counts(self, block: int, num_blocks: int) -> bool:
        return block == num_blocks - 1


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

    def detaches(self, block: int) -> bool:
        return True

    def counts(self, block: int, num_blocks: int) -> bool:
        return True


def check_local_network(model: object, who: str) -> LocalNetwork:
    if not isinstance(model, LocalNetwork):
        raise TypeError(
            f"{who} needs a fwdeqx.local.LocalNetwork as the model (blocks with "
            f"heads), got {type(model).__name__}."
        )
    return model
