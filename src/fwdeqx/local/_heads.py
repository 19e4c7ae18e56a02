"""Local heads: a block's output → logits, and the head's loss copies."""

import abc
from collections.abc import Callable, Sequence
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

    @property
    @abc.abstractmethod
    def copy_shape(self) -> tuple[int, ...]:
        """How `loss_copies` lays out its copies: `(*locations, groups)`, flattened
        in that (row-major) order. Copy `(l, g)` carries the tangent of channel
        group g at location l of the block output; `locations` is `()` when every
        copy spans all locations, else the shape of the block output's axes other
        than the channel axis."""

    @abc.abstractmethod
    def loss_copies(
        self, h: Array, y: Array, loss: Callable
    ) -> tuple[Float[Array, " copies"], Array]:
        """`(copies, pooled)` for one example: the head's loss once per copy (each
        carrying the tangent of the units paired with it, laid out as
        `copy_shape`), and the pooled features."""

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

    @property
    def copy_shape(self) -> tuple[int, ...]:
        """`(groups,)`: every copy spans all locations."""
        return (self.groups,)

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


class LocationHead(AbstractHead):
    """A `LinearHead` whose loss has one copy per location of the block output and
    per channel group: Ren et al.'s patch-wise and group-wise local losses.

    Its logits, its loss and the objective's exact gradient are the wrapped
    `LinearHead`'s; only the copies differ. Copy `(l, g)` carries the tangent of
    channel group g at location l alone (spatial position of a `(C, H, W)` image,
    token of a `(tokens, C)` mixer feature), so a
    `fwdeqx.local.LocationPerturbed` layer pairs each of its units with the one
    copy its tangent reaches, and the estimate's variance no longer grows with the
    number of locations. Any other site pairs with the sum of the copies over
    locations (`Perturbed(..., grouped=True)`) or over everything.

    Copy `(l, g)`'s tangent is `(1/L) Σ_{c ∈ g} (∂loss/∂logits · W)[c] ḣ[c, l]`
    (L locations): one head evaluation and one loss gradient, for any number of
    copies.

    **Arguments:**

    - `head`: the `LinearHead` (its `groups` and `channel_axis` are used).
    - `locations`: the shape of the block output's axes other than the channel
        axis, e.g. `(14, 14)` for `(C, 14, 14)` features or `(tokens,)` for
        `(tokens, C)`; checked on every call.
    """

    head: LinearHead
    locations: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, head: LinearHead, locations: Sequence[int]):
        if not isinstance(head, LinearHead):
            raise TypeError(
                "LocationHead wraps a fwdeqx.local.LinearHead, got "
                f"{type(head).__name__}."
            )
        locations = tuple(locations)
        if not all(isinstance(n, int) and n >= 1 for n in locations):
            raise ValueError(
                f"LocationHead locations={locations} must be positive ints: the "
                "shape of the block output without its channel axis."
            )
        self.head = head
        self.locations = locations

    @property
    def in_features(self) -> int:
        return self.head.in_features

    @property
    def copy_shape(self) -> tuple[int, ...]:
        """`(*locations, groups)`."""
        return (*self.locations, self.head.groups)

    def pool(self, h: Array) -> Float[Array, " c"]:
        """The wrapped head's pooling, after checking `h`'s locations."""
        pooled = self.head.pool(h)
        self._channels_by_location(h)
        return pooled

    def logits(self, pooled: Array) -> Array:
        return self.head.logits(pooled)

    def loss_copies(
        self, h: Array, y: Array, loss: Callable
    ) -> tuple[Float[Array, " copies"], Array]:
        """One copy per location and channel group, location-major."""
        pooled = self.pool(h)
        value, dlogits = jax.value_and_grad(loss)(
            jax.lax.stop_gradient(self.logits(pooled)), y
        )
        features = self._channels_by_location(h)  # [C, L]
        tangent_only = features - jax.lax.stop_gradient(features)  # value 0
        weighted = (dlogits @ self.head.linear.weight)[:, None] * tangent_only
        channels, size = features.shape
        groups = self.head.groups
        by_copy = weighted.reshape(groups, channels // groups, size).sum(1) / size
        return value + by_copy.T.reshape(-1), pooled

    def _channels_by_location(self, h: Array) -> Float[Array, "c locations"]:
        """`h` as `[channels, locations]` (locations flattened row-major)."""
        moved = jnp.moveaxis(h, self.head.channel_axis, 0)
        if moved.shape[1:] != self.locations:
            raise ValueError(
                f"LocationHead expects features with locations {self.locations} "
                f"besides channel axis {self.head.channel_axis}, got features of "
                f"shape {h.shape}."
            )
        return moved.reshape(moved.shape[0], -1)
