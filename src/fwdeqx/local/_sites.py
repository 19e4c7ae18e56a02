"""Perturbation sites: where activity tangents enter a network, and what the layers
after a site do to them.

A site owns how it applies its layer, its output's channel axis, which layers may
follow it before its block's head, and how its tangent pairs with the head's loss
copies. `Perturbed` is the one built in; a new grouping or location scheme is one
subclass of `AbstractSite`.
"""

import abc
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._heads import AbstractHead


class AbstractChannelwise(eqx.Module):
    """Marker base of modules that act on every channel separately (elementwise
    activations, per-channel scalings): a grouped site may be followed by them
    before its head. Subclass it to declare a custom module channel-preserving."""


class AbstractReLU(AbstractChannelwise):
    """Marker base of modules computing `max(x, 0)` elementwise. A site directly
    followed by one (or by `jax.nn.relu`, or `eqx.nn.Lambda(jax.nn.relu)`) has its
    inactive units masked by `ActivityPerturbation(mask_inactive=True)`.

    Subclass it and implement `__call__` to declare a custom ReLU module.
    """

    @abc.abstractmethod
    def __call__(self, x: Array, *, key: PRNGKeyArray | None = None) -> Array:
        """`max(x, 0)`, elementwise."""


_ELEMENTWISE: tuple[Callable, ...] = (
    jax.nn.relu,
    jax.nn.relu6,
    jax.nn.gelu,
    jax.nn.silu,
    jax.nn.swish,
    jax.nn.sigmoid,
    jax.nn.softplus,
    jax.nn.elu,
    jax.nn.leaky_relu,
    jax.nn.tanh,
    jnp.tanh,
)


def _unwrap(layer: Any) -> Any:
    return _unwrap(layer.fn) if isinstance(layer, eqx.nn.Lambda) else layer


def is_relu(layer: Any) -> bool:
    """Whether `layer` is known to be a ReLU: `jax.nn.relu`, an `AbstractReLU`, or
    either inside `eqx.nn.Lambda`. Anything else is not (then nothing is masked)."""
    layer = _unwrap(layer)
    return layer is jax.nn.relu or isinstance(layer, AbstractReLU)


def preserves_channels(layer: Any, channel_axis: int) -> bool:
    """Whether `layer` maps every channel of its input to the same channel of its
    output alone: known elementwise activations, `AbstractChannelwise` modules,
    dropout and identity, and pooling of channel-first features (`channel_axis`
    0). Everything else, `Linear`, `Conv`, normalisation and unknown callables
    included, counts as mixing. (A `Residual` branch is checked layer by layer.)"""
    layer = _unwrap(layer)
    if isinstance(layer, eqx.nn.Pool):
        return channel_axis == 0
    if isinstance(layer, AbstractChannelwise | eqx.nn.Dropout | eqx.nn.Identity):
        return True
    return any(layer is fn for fn in _ELEMENTWISE)


class AbstractSite(eqx.Module):
    """Base class of perturbation sites: a layer whose output z receives a
    per-example tangent under `fwdeqx.local.ActivityPerturbation`.

    Outside an estimator a site is its layer. Subclasses declare the layer, how it
    is applied, the output's channel axis, which layers may follow it in its block
    (`check_downstream`) and how the derivatives of the head's loss copies pair
    with the site's units (`pair`).
    """

    layer: eqx.AbstractVar[eqx.Module]

    @abc.abstractmethod
    def apply(self, layer: Any, x: Array) -> Array:
        """`layer` (this site's layer or a replacement of the same structure,
        e.g. its gradient's cotangent) applied to one example as the site applies
        it."""

    @property
    @abc.abstractmethod
    def channel_axis(self) -> int:
        """The channel axis of the site's output."""

    @abc.abstractmethod
    def check_downstream(self, layers: Sequence[Callable]) -> None:
        """Raise a `ValueError` saying why, unless the pairing of `pair` is right
        when `layers` follow this site before its block's head."""

    @abc.abstractmethod
    def pair(
        self,
        derivatives: Float[Array, "n k copies"],
        shape: tuple[int, ...],
        head: AbstractHead | None,
    ) -> Array:
        """The derivative factor of every unit of the output (one example's
        `shape`): `[N, K, *shape]`-broadcastable, from the derivatives of the loss
        copies that the site's tangent reaches. `head` is the site's own block's
        head when its loss counts and its copies are the last axis of
        `derivatives`, else `None` (sum every copy)."""

    def __call__(self, x: Array, *, key: PRNGKeyArray | None = None) -> Array:
        del key
        return self.apply(self.layer, x)


class Perturbed(AbstractSite):
    """An activity-perturbation point: the output z = layer(x) of an affine Equinox
    layer, where `fwdeqx.local.ActivityPerturbation` adds per-example noise.

    Outside an estimator `Perturbed(layer)(x)` is just `layer(x)`, for one example.

    **Arguments:**

    - `layer`: an `eqx.nn.Linear` or an `eqx.nn.Conv` (`Conv1d`, `Conv2d`, …).
    - `tokenwise`: apply a `Linear` to every row of a `(tokens, in_features)`
        input (the token- and channel-mixing layers of an MLP-mixer), giving
        `(tokens, out_features)`.
    - `grouped`: pair this layer's output channel group g with the block head's
        loss copy g alone ("many local losses", for a head of `groups=G`), rather
        than with the sum of all copies. It is right only when the channels reach
        the head through themselves alone, so `Block` refuses a grouped layer
        followed by a layer that mixes channels (see `check_downstream`);
        `fwdeqx.local.mlp`, `cnn` and `local_mixer` set it where it holds.

    The output's channel axis is the last for a `Linear` and the first for a
    `Conv`.
    """

    layer: eqx.nn.Linear | eqx.nn.Conv
    tokenwise: bool = eqx.field(static=True, default=False, kw_only=True)
    grouped: bool = eqx.field(static=True, default=False, kw_only=True)

    def __check_init__(self):
        if not isinstance(self.layer, eqx.nn.Linear | eqx.nn.Conv):
            raise TypeError(
                "fwdeqx.local.Perturbed wraps an affine layer, eqx.nn.Linear or "
                f"eqx.nn.Conv2d (any eqx.nn.Conv), got {type(self.layer).__name__}."
            )
        if self.tokenwise and not isinstance(self.layer, eqx.nn.Linear):
            raise TypeError("`tokenwise=True` is for eqx.nn.Linear layers only.")

    @property
    def channel_axis(self) -> int:
        """The channel axis of the output: -1 for `Linear`, 0 for `Conv`."""
        return -1 if isinstance(self.layer, eqx.nn.Linear) else 0

    def apply(self, layer: Any, x: Array) -> Array:
        if self.tokenwise:
            return jax.vmap(layer)(x)
        return layer(x)

    def check_downstream(self, layers: Sequence[Callable]) -> None:
        """A grouped layer may be followed only by channel-preserving layers
        (`preserves_channels`): elementwise activations, pooling, residual
        additions of such branches."""
        if not self.grouped:
            return
        for layer in layers:
            if not preserves_channels(layer, self.channel_axis):
                raise ValueError(
                    f"A Perturbed(..., grouped=True) layer is followed by {layer!r} "
                    "before its block's head. Grouping pairs channel group g with "
                    "the head's loss copy g alone, which is unbiased only if every "
                    "channel reaches the head through itself; this layer may mix "
                    "channels. Use grouped=False here, or declare a custom "
                    "channel-preserving module by subclassing "
                    "fwdeqx.local.AbstractChannelwise."
                )

    def pair(
        self,
        derivatives: Float[Array, "n k copies"],
        shape: tuple[int, ...],
        head: AbstractHead | None,
    ) -> Array:
        """Channel group g's units get copy g's derivative when grouped (and the
        head has groups), every unit the sum of all copies otherwise."""
        n, k, groups = derivatives.shape
        ndim = len(shape)
        if head is None or groups == 1 or not self.grouped:
            return jnp.sum(derivatives, axis=-1).reshape(n, k, *([1] * ndim))
        axis = self.channel_axis % ndim
        channels = shape[axis]
        if channels != head.in_features:
            raise ValueError(
                f"A grouped Perturbed layer has {channels} output channels but its "
                f"block's head has in_features={head.in_features} (groups={groups}); "
                "a grouped layer's channels must be the head's."
            )
        broadcast = [n, k] + [1] * ndim
        broadcast[2 + axis] = channels
        return jnp.repeat(derivatives, channels // groups, axis=-1).reshape(broadcast)
