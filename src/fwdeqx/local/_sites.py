"""Perturbation sites: where activity tangents enter a network, and what the layers
after a site do to them.

A site owns how it applies its layer, its output's channel axis, which layers may
follow it before its block's head, and how its tangent pairs with the head's loss
copies. `Perturbed` is the one built in; a new grouping or location scheme is one
subclass of `AbstractSite`.
"""

import abc
import math
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
        `derivatives` (laid out as `head.copy_shape`), else `None` (sum every
        copy)."""

    def __call__(self, x: Array, *, key: PRNGKeyArray | None = None) -> Array:
        del key
        return self.apply(self.layer, x)


class _AbstractAffineSite(AbstractSite):
    """An affine Equinox layer's output as a site: `Perturbed`, `LocationPerturbed`."""

    layer: eqx.nn.Linear | eqx.nn.Conv
    tokenwise: bool = eqx.field(static=True, default=False, kw_only=True)

    def __check_init__(self):
        name = type(self).__name__
        if not isinstance(self.layer, eqx.nn.Linear | eqx.nn.Conv):
            raise TypeError(
                f"fwdeqx.local.{name} wraps an affine layer, eqx.nn.Linear or "
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

    def _channels(self, shape: tuple[int, ...], head: AbstractHead) -> int:
        """The output's channel axis (non-negative), checked against the head's."""
        axis = self.channel_axis % len(shape)
        if shape[axis] != head.in_features:
            raise ValueError(
                f"A grouped {type(self).__name__} layer has {shape[axis]} output "
                f"channels but its block's head has in_features={head.in_features} "
                f"(groups={head.copy_shape[-1]}); a grouped layer's channels must "
                "be the head's."
            )
        return axis


def _summed(derivatives: Float[Array, "n k copies"], ndim: int) -> Array:
    """Every unit paired with the sum of every copy."""
    n, k, _ = derivatives.shape
    return jnp.sum(derivatives, axis=-1).reshape(n, k, *([1] * ndim))


class Perturbed(_AbstractAffineSite):
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
        `fwdeqx.local.mlp`, `cnn` and `local_mixer` set it where it holds. With a
        `LocationHead`, group g is paired with the sum of its copies over
        locations (use `LocationPerturbed` to pair locations too).

    The output's channel axis is the last for a `Linear` and the first for a
    `Conv`.
    """

    grouped: bool = eqx.field(static=True, default=False, kw_only=True)

    def check_downstream(self, layers: Sequence[Callable]) -> None:
        """A grouped layer may be followed only by channel-preserving layers
        (`preserves_channels`): elementwise activations, pooling, residual
        additions of such branches."""
        if not self.grouped:
            return
        for layer in layers:
            if not preserves_channels(layer, self.channel_axis):
                raise ValueError(
                    _mixing_message(
                        "A Perturbed(..., grouped=True) layer",
                        layer,
                        "Use grouped=False here",
                    )
                )

    def pair(
        self,
        derivatives: Float[Array, "n k copies"],
        shape: tuple[int, ...],
        head: AbstractHead | None,
    ) -> Array:
        """Channel group g's units get copy g's derivative (summed over the head's
        locations) when grouped and the head has groups, every unit the sum of
        all copies otherwise."""
        ndim = len(shape)
        if head is None or head.copy_shape[-1] == 1 or not self.grouped:
            return _summed(derivatives, ndim)
        n, k, _ = derivatives.shape
        groups = head.copy_shape[-1]
        by_group = derivatives.reshape(n, k, -1, groups).sum(axis=2)
        axis = self._channels(shape, head)
        channels = shape[axis]
        broadcast = [n, k] + [1] * ndim
        broadcast[2 + axis] = channels
        return jnp.repeat(by_group, channels // groups, axis=-1).reshape(broadcast)


class LocationPerturbed(_AbstractAffineSite):
    """A perturbation site paired by location and channel group: with a
    `fwdeqx.local.LocationHead`, the unit of channel group g at location l of the
    output gets the derivative of the head's copy `(l, g)` alone (Ren et al.'s
    patch-wise and group-wise losses); with a `LinearHead` it pairs as
    `Perturbed(..., grouped=True)`.

    A location is a position along the output's axes other than the channel axis
    (spatial positions of a `Conv`, tokens of a `tokenwise` `Linear`). The pairing
    is right only when every unit reaches the head at its own channel and
    location, so `Block` accepts after it only channel-preserving layers that
    also act on each location separately (known elementwise activations,
    subclasses of `fwdeqx.local.AbstractChannelwise`, dropout, residual additions)
    and non-overlapping pooling of channel-first features (kernel size equal to
    the stride, no padding), whose strides multiply to `pool_stride`.

    Outside an estimator `LocationPerturbed(layer)(x)` is just `layer(x)`.

    **Arguments:**

    - `layer`: an `eqx.nn.Linear` or an `eqx.nn.Conv`.
    - `tokenwise`: apply a `Linear` to every row of a `(tokens, in_features)`
        input, as `Perturbed` does; the rows are the locations.
    - `pool_stride`: the total stride, on every location axis, of the pooling
        between this layer and its block's head (2 for one `MaxPool2d(2, 2)`):
        output location i reaches head location i // `pool_stride`, and units
        that the pooling drops reach none.
    """

    pool_stride: int = eqx.field(static=True, default=1, kw_only=True)

    def __check_init__(self):
        if not isinstance(self.pool_stride, int) or self.pool_stride < 1:
            raise ValueError(
                f"LocationPerturbed pool_stride={self.pool_stride!r} must be a "
                "positive int."
            )

    def check_downstream(self, layers: Sequence[Callable]) -> None:
        """Only location- and channel-preserving layers, with non-overlapping
        pools of total stride `pool_stride`."""
        name = type(self).__name__
        strides = []
        for layer in layers:
            if isinstance(layer, eqx.nn.Pool) and self.channel_axis == 0:
                padded = any(p != (0, 0) for p in layer.padding)
                stride = set(layer.stride)
                uneven = layer.kernel_size != layer.stride or len(stride) > 1
                if uneven or padded or layer.use_ceil:
                    raise ValueError(
                        f"A {name} layer is followed by {layer!r}, whose windows "
                        "overlap, are padded or differ between axes: a unit would "
                        "reach several locations of its block's head. Use a pool "
                        "with kernel_size equal to its stride, or Perturbed."
                    )
                strides.append(stride.pop())
            elif not preserves_channels(layer, self.channel_axis):
                raise ValueError(
                    _mixing_message(f"A {name} layer", layer, "Use Perturbed here")
                )
        total = math.prod(strides)
        if total != self.pool_stride:
            raise ValueError(
                f"A {name}(..., pool_stride={self.pool_stride}) layer is followed "
                f"by pooling of total stride {total} before its block's head; set "
                f"pool_stride={total}."
            )

    def pair(
        self,
        derivatives: Float[Array, "n k copies"],
        shape: tuple[int, ...],
        head: AbstractHead | None,
    ) -> Array:
        """The unit of channel group g at location i gets copy
        `(i // pool_stride, g)`'s derivative (0 where the pooling drops it), or
        group g's copy at every location for a head without location copies;
        every unit the sum of all copies when `head` is `None`."""
        ndim = len(shape)
        if head is None:
            return _summed(derivatives, ndim)
        axis = self._channels(shape, head)
        n, k, _ = derivatives.shape
        *locations, groups = head.copy_shape
        grid = derivatives.reshape(n, k, *locations, groups)
        grid = jnp.repeat(grid, shape[axis] // groups, axis=-1)  # [N, K, *locs, C]
        own = shape[:axis] + shape[axis + 1 :]
        if not locations:
            grid = grid.reshape(n, k, *([1] * len(own)), shape[axis])
        elif tuple(size // self.pool_stride for size in own) != tuple(locations):
            raise ValueError(
                f"A {type(self).__name__}(..., pool_stride={self.pool_stride}) "
                f"layer's output has locations {own}, which pool to "
                f"{tuple(size // self.pool_stride for size in own)}, but its "
                f"block's head has locations {tuple(locations)}."
            )
        else:
            for i, size in enumerate(own):
                grid = jnp.repeat(grid, self.pool_stride, axis=2 + i)
                pad = [(0, 0)] * grid.ndim
                pad[2 + i] = (0, size - grid.shape[2 + i])
                grid = jnp.pad(grid, pad)
        return jnp.moveaxis(grid, -1, 2 + axis)


def _mixing_message(site: str, layer: Any, remedy: str) -> str:
    return (
        f"{site} is followed by {layer!r} before its block's head. Grouping pairs "
        "channel group g with the head's loss copy g alone, which is unbiased only "
        "if every channel reaches the head through itself; this layer may mix "
        f"channels. {remedy}, or declare a custom channel-preserving module by "
        "subclassing fwdeqx.local.AbstractChannelwise."
    )
