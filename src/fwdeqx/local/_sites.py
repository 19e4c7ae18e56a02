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


class AbstractLocationwise(eqx.Module):
    """Marker base of modules of channel-first features `(C, *locations)` that act
    on every location separately and may mix its channels (a layer normalisation
    over the channels, a 1×1 convolution written by hand): a
    `fwdeqx.local.NeighbourhoodPerturbed` site may be followed by them before its
    head. Subclass it to declare a custom module location-preserving."""


class AbstractGroupwise(AbstractLocationwise):
    """Marker base of location-preserving modules (see `AbstractLocationwise`) that
    mix channels only within `groups` contiguous channel groups of the same size,
    channel group g of the output depending on group g of the input alone (a layer
    normalisation within each group, a grouped 1×1 convolution written by hand): a
    `fwdeqx.local.NeighbourhoodPerturbed(..., groups=G)` site may be followed by
    them when `groups` is a multiple of G. Subclass it, with a `groups` field, to
    declare a custom module group-preserving."""

    groups: eqx.AbstractVar[int]


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
                strides.append(_pool_stride(layer, name))
            elif not preserves_channels(layer, self.channel_axis):
                raise ValueError(
                    _mixing_message(f"A {name} layer", layer, "Use Perturbed here")
                )
        _check_pool_stride(name, self.pool_stride, strides)

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
        else:
            _check_locations(type(self).__name__, self.pool_stride, own, locations)
            for i, size in enumerate(own):
                grid = jnp.repeat(grid, self.pool_stride, axis=2 + i)
                pad = [(0, 0)] * grid.ndim
                pad[2 + i] = (0, size - grid.shape[2 + i])
                grid = jnp.pad(grid, pad)
        return jnp.moveaxis(grid, -1, 2 + axis)


def _check_pool_stride(name: str, pool_stride: int, strides: list[int]) -> None:
    """A `ValueError` unless the pools after a site have total stride
    `pool_stride`."""
    total = math.prod(strides)
    if total != pool_stride:
        raise ValueError(
            f"A {name}(..., pool_stride={pool_stride}) layer is followed by pooling "
            f"of total stride {total} before its block's head; set "
            f"pool_stride={total}."
        )


def _check_locations(
    name: str, pool_stride: int, own: Sequence[int], locations: Sequence[int]
) -> None:
    """A `ValueError` unless a site's output locations `own` pool to the head's."""
    pooled = tuple(size // pool_stride for size in own)
    if pooled != tuple(locations):
        raise ValueError(
            f"A {name}(..., pool_stride={pool_stride}) layer's output has locations "
            f"{tuple(own)}, which pool to {pooled}, but its block's head has "
            f"locations {tuple(locations)}."
        )


def _pool_stride(layer: eqx.nn.Pool, name: str) -> int:
    """The stride of a non-overlapping, unpadded pool; a `ValueError` otherwise."""
    padded = any(p != (0, 0) for p in layer.padding)
    stride = set(layer.stride)
    if layer.kernel_size != layer.stride or len(stride) > 1 or padded or layer.use_ceil:
        raise ValueError(
            f"A {name} layer is followed by {layer!r}, whose windows overlap, are "
            "padded or differ between axes: a unit would reach several locations of "
            "its block's head. Use a pool with kernel_size equal to its stride, or "
            "Perturbed."
        )
    return stride.pop()


def _conv_reach(conv: eqx.nn.Conv, name: str) -> int:
    """How far (in positions, on any axis) a stride-1, size-preserving convolution
    moves a unit's influence; a `ValueError` for other convolutions."""
    reach = 0
    for axis, (k, d, s) in enumerate(
        zip(conv.kernel_size, conv.dilation, conv.stride, strict=True)
    ):
        span = (k - 1) * d
        if conv.padding == "SAME":  # XLA puts the odd position at the end
            low, high = span // 2, span - span // 2
        elif conv.padding == "SAME_LOWER":
            low, high = span - span // 2, span // 2
        elif isinstance(conv.padding, str):  # VALID
            low, high = 0, 0
        else:
            low, high = conv.padding[axis]
        if s != 1 or low + high != span:
            raise ValueError(
                f"A {name} layer is followed by {conv!r}, which does not keep the "
                "positions (stride 1 and padding='SAME' do): a unit's reach "
                "cannot be told. Use Perturbed here."
            )
        reach = max(reach, low, span - low)
    return reach


class NeighbourhoodPerturbed(_AbstractAffineSite):
    """A convolution's output as a site paired with the loss copies of its
    neighbourhood: with a `fwdeqx.local.LocationHead`, the unit at position i gets
    the sum, over every channel group, of the copies at the head locations whose
    pooling windows meet [i − `reach`, i + `reach`] (on every spatial axis). With
    `groups=G`, where the later layers keep G channel groups apart, a unit of the
    head's channel group g gets only group g's copies in its neighbourhood.

    This is the pairing for a layer whose output later layers mix across channels
    before the head: the first convolution of `fwdeqx.local.location_cnn`'s
    blocks, and the patch-embedding, token-mixing and channel-mixing layers of
    `fwdeqx.local.location_mixer` (`reach=0`). Every group's copies are kept, but
    a later convolution moves a unit's influence by at most its padding, and
    per-location layers not at all, so copies beyond `reach` cannot depend on the
    unit, and leaving them out removes their noise without a bias. `Perturbed`
    pairs such a layer with every copy instead.

    The site's output is channel-first, `(C, *locations)`. `Block` accepts after it
    elementwise and channel-preserving layers, per-location layers
    (`fwdeqx.local.AbstractLocationwise`), stride-1 size-preserving convolutions
    (`padding="SAME"`, 1×1 ones included, possibly themselves sites), whose
    reaches must add up to at most `reach`, and then non-overlapping pools whose
    strides multiply to `pool_stride`; it refuses anything else with an error
    saying what to change. With `groups=G` > 1 the layers that mix channels must
    also keep G groups apart: convolutions whose `groups` is a multiple of G (a
    grouped 1×1 convolution), and per-location layers that subclass
    `fwdeqx.local.AbstractGroupwise` with such `groups` (a layer normalisation
    within each group). `fwdeqx.local.location_mixer` pairs its patch-embedding
    and channel-mixing layers this way.

    **Arguments:**

    - `layer`: an `eqx.nn.Conv` (`Conv1d`, `Conv2d`, …), or an `eqx.nn.Linear`
        with `tokenwise=True` applied to the rows of channel-first `(C, tokens)`
        features (a token-mixing layer: its output's rows are channels, its
        columns locations).
    - `tokenwise`: as in `fwdeqx.local.Perturbed`; required for a `Linear`.
    - `reach`: how far the later convolutions move a unit's influence: the sum of
        their half-widths (1 for one 3×3 convolution with `padding="SAME"`).
    - `pool_stride`: the total stride of the pooling before the head, as in
        `fwdeqx.local.LocationPerturbed`.
    - `groups`: the number of contiguous channel groups of this layer's output
        that the later layers keep apart (1: none, every group's copies are
        summed). The block head's groups must divide it.
    """

    reach: int = eqx.field(static=True, default=1, kw_only=True)
    pool_stride: int = eqx.field(static=True, default=1, kw_only=True)
    groups: int = eqx.field(static=True, default=1, kw_only=True)

    def __check_init__(self):
        if not (isinstance(self.layer, eqx.nn.Conv) or self.tokenwise):
            raise TypeError(
                "fwdeqx.local.NeighbourhoodPerturbed wraps an eqx.nn.Conv, or an "
                "eqx.nn.Linear with tokenwise=True, got "
                f"{type(self.layer).__name__}."
            )
        for field in ("reach", "pool_stride", "groups"):
            value = getattr(self, field)
            positive = field != "reach"
            if type(value) is not int or value < positive:
                raise ValueError(
                    f"NeighbourhoodPerturbed {field}={value!r} must be a "
                    + ("positive" if positive else "non-negative")
                    + " int."
                )

    @property
    def channel_axis(self) -> int:
        """0: the output is channel-first (for a tokenwise `Linear`, its rows)."""
        return 0

    def check_downstream(self, layers: Sequence[Callable]) -> None:
        """Location-preserving layers: convolutions of total reach at most
        `reach`, then non-overlapping pools of total stride `pool_stride`; with
        `groups` > 1, only layers that keep those groups apart."""
        name = type(self).__name__
        reach, strides = 0, []
        for layer in layers:
            inner = layer.layer if isinstance(layer, AbstractSite) else layer
            self._check_groups_kept(inner)
            if isinstance(inner, eqx.nn.Conv):
                if strides:
                    raise ValueError(
                        f"A {name} layer is followed by pooling and then by "
                        f"{inner!r}; only pooling after the last convolution is "
                        "supported. Use Perturbed here."
                    )
                reach += _conv_reach(inner, name)
            elif isinstance(inner, eqx.nn.Pool):
                strides.append(_pool_stride(inner, name))
            elif not (
                isinstance(inner, AbstractLocationwise) or preserves_channels(inner, 0)
            ):
                raise ValueError(
                    f"A {name} layer is followed by {inner!r} before its block's "
                    "head, which may mix locations. Use Perturbed here, or declare "
                    "a custom location-preserving module by subclassing "
                    "fwdeqx.local.AbstractLocationwise."
                )
        if reach > self.reach:
            raise ValueError(
                f"A {name}(..., reach={self.reach}) layer is followed by "
                f"convolutions that move a unit's influence by {reach} positions; "
                f"set reach={reach}."
            )
        _check_pool_stride(name, self.pool_stride, strides)

    def _check_groups_kept(self, layer: Any) -> None:
        """A `ValueError` unless `layer` keeps this site's `groups` apart."""
        if self.groups == 1 or preserves_channels(layer, 0):
            return
        grouping = isinstance(layer, eqx.nn.Conv | AbstractGroupwise)
        kept = layer.groups if grouping else 1
        if kept % self.groups != 0:
            raise ValueError(
                f"A NeighbourhoodPerturbed(..., groups={self.groups}) layer is "
                f"followed by {layer!r} before its block's head, which mixes "
                f"channels across its {self.groups} groups (it keeps {kept} apart). "
                "Use groups=1 here, a convolution whose groups is a multiple of "
                f"{self.groups}, or a per-location module subclassing "
                "fwdeqx.local.AbstractGroupwise."
            )

    def _head_groups(self, shape: tuple[int, ...], head: AbstractHead) -> int:
        """The head's channel groups, checked against this site's `groups` and
        output channels (1 when `groups` is 1: every group's copies summed)."""
        if self.groups == 1:
            return 1
        head_groups = head.copy_shape[-1]
        if self.groups % head_groups != 0 or shape[0] % self.groups != 0:
            raise ValueError(
                f"A NeighbourhoodPerturbed(..., groups={self.groups}) layer has "
                f"{shape[0]} output channels and its block's head has "
                f"{head_groups} channel groups: the head's groups must divide "
                "groups, and groups the channels."
            )
        return head_groups

    def pair(
        self,
        derivatives: Float[Array, "n k copies"],
        shape: tuple[int, ...],
        head: AbstractHead | None,
    ) -> Array:
        """The unit at position i gets the sum of the copies at the head locations
        within its neighbourhood: of every group's, or of its own channel group's
        with `groups` > 1; every unit the sum of all copies when `head` is
        `None`, or has no locations and `groups` is 1."""
        if head is None or (len(head.copy_shape) == 1 and self.groups == 1):
            return _summed(derivatives, len(shape))
        *locations, groups = head.copy_shape
        spatial = shape[1:]
        kept = self._head_groups(shape, head)
        n, k, _ = derivatives.shape
        grid = derivatives.reshape(n, k, *locations, kept, groups // kept).sum(-1)
        grid = jnp.moveaxis(grid, -1, 2)  # [N, K, kept, *locations]
        if not locations:
            return jnp.repeat(grid, shape[0] // kept, axis=2).reshape(
                n, k, shape[0], *([1] * len(spatial))
            )
        _check_locations(type(self).__name__, self.pool_stride, spatial, locations)
        for axis, (size, count) in enumerate(zip(spatial, locations, strict=True)):
            position = jnp.arange(size)[:, None]
            start = jnp.arange(count)[None, :] * self.pool_stride
            window = (start <= position + self.reach) & (
                start + self.pool_stride - 1 >= position - self.reach
            )
            grid = jnp.moveaxis(
                jnp.tensordot(grid, window.astype(grid.dtype), axes=[[3 + axis], [1]]),
                -1,
                3 + axis,
            )
        return grid if kept == 1 else jnp.repeat(grid, shape[0] // kept, axis=2)


def _mixing_message(site: str, layer: Any, remedy: str) -> str:
    return (
        f"{site} is followed by {layer!r} before its block's head. Grouping pairs "
        "channel group g with the head's loss copy g alone, which is unbiased only "
        "if every channel reaches the head through itself; this layer may mix "
        f"channels. {remedy}, or declare a custom channel-preserving module by "
        "subclassing fwdeqx.local.AbstractChannelwise."
    )
