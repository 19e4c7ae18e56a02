"""Local heads: a block's output → logits, and the head's loss copies."""

import abc
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray, PyTree


class AbstractHead(eqx.Module):
    """Base class of local heads: pooled features → logits, and the head's loss
    copies, all with the loss's value, whose derivatives the sites pair with."""

    @property
    @abc.abstractmethod
    def in_features(self) -> int:
        """Channels of the block output."""

    @abc.abstractmethod
    def pool(self, h: Array) -> Array:
        """The features the logits are computed from, for one example."""

    @abc.abstractmethod
    def logits(self, pooled: Array) -> Array:
        """The logits of one example's pooled features."""

    @abc.abstractmethod
    def loss_copies(
        self, h: Array, y: Array, loss: Callable
    ) -> tuple[Float[Array, " copies"], Array]:
        """`(copies, pooled)` for one example: the head's loss once per copy (each
        carrying the tangent of the units paired with it), and the pooled
        features."""

    def __call__(self, h: Array, *, key: PRNGKeyArray | None = None) -> Array:
        del key
        return self.logits(self.pool(h))

    def grad(self, pooled: Array, y: Array, loss: Callable) -> PyTree:
        """The exact gradient of the batch-mean loss with respect to the head, at
        the batch's recorded pooled features."""

        def objective(head):
            return jnp.mean(jax.vmap(lambda p, yn: loss(head.logits(p), yn))(pooled, y))

        return eqx.filter_grad(objective)(self)


class LinearHead(AbstractHead):
    """A local head: the average over every axis but the channel axis, then a
    `Linear` to logits (Ren et al.'s spatial-average linear classifier).

    **Arguments:**

    - `in_features`: channels of the block output.
    - `num_classes`: number of logits.
    - `groups`: G > 1 gives "many local losses" (Ren et al. 2023): the channels
        split into G contiguous groups, and the activity estimators pair every
        `grouped` perturbation point's channel group g with its own copy of this
        head's loss, in which only group g's features carry a tangent. The copies
        all have the loss's value; the objective counts it once, so the exact
        gradient is unchanged and only the estimate's variance drops. Must divide
        `in_features`.
    - `channel_axis`: the channel axis of the block output (0 for `(C, H, W)`
        images, -1 for `(tokens, C)` mixer features).
    - `key`: initialisation key.
    """

    linear: eqx.nn.Linear
    groups: int = eqx.field(static=True)
    channel_axis: int = eqx.field(static=True)

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        groups: int = 1,
        channel_axis: int = 0,
        key: PRNGKeyArray,
        dtype: Any = None,
    ):
        if groups < 1 or in_features % groups != 0:
            raise ValueError(
                f"LinearHead groups={groups} must be a positive divisor of "
                f"in_features={in_features} (each group gets in_features/groups "
                "channels)."
            )
        self.linear = eqx.nn.Linear(in_features, num_classes, key=key, dtype=dtype)
        self.groups = groups
        self.channel_axis = channel_axis

    @property
    def in_features(self) -> int:
        return self.linear.in_features  # pyright: ignore

    def pool(self, h: Array) -> Float[Array, " c"]:
        """The channel vector: `h` averaged over every axis but the channel axis."""
        if h.ndim == 0:
            raise ValueError("LinearHead needs at least a channel axis.")
        h = jnp.moveaxis(h, self.channel_axis, 0)
        if h.shape[0] != self.in_features:
            raise ValueError(
                f"LinearHead expects {self.in_features} channels on axis "
                f"{self.channel_axis}, got features of shape {h.shape}."
            )
        return jnp.mean(h.reshape(h.shape[0], -1), axis=1)

    def logits(self, pooled: Array) -> Array:
        return self.linear(pooled)

    def loss_copies(
        self, h: Array, y: Array, loss: Callable
    ) -> tuple[Float[Array, " copies"], Array]:
        """One copy per channel group, copy g carrying only group g's tangent.

        Heads carry no tangent of their own, so copy g's logits tangent is
        `W[:, g] ṗ[g]` (the head's weight times the features' tangent, summed
        within channel group g), and its loss tangent that times the loss's
        gradient with respect to the logits: one head evaluation and one loss
        gradient, rather than G of each.
        """
        pooled = self.pool(h)
        logits = self.logits(pooled)
        if self.groups == 1:
            return loss(logits, y)[None], pooled
        weight = self.linear.weight
        tangent_only = pooled - jax.lax.stop_gradient(pooled)  # value 0, tangent ṗ
        by_group = (
            (weight * tangent_only[None]).reshape(len(weight), self.groups, -1).sum(-1)
        )
        value, dlogits = jax.value_and_grad(loss)(jax.lax.stop_gradient(logits), y)
        return value + dlogits @ by_group, pooled
