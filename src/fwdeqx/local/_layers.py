"""Containers for local-loss networks: perturbation points, blocks, heads.

A `LocalNetwork` is a sequence of `Block`s; a block applies its layers (any
callables, e.g. `eqx.nn` layers and `jax.nn.relu`) in order, and may end in a
`LinearHead` that turns its output into logits for a local loss. `Perturbed` marks
the affine layers whose outputs the activity-perturbation estimators perturb.
"""

from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray


class Perturbed(eqx.Module):
    """An activity-perturbation point: the output z = layer(x) of an affine Equinox
    layer, where `fwdeqx.local.ActivityPerturbation` adds per-example noise.

    Outside an estimator `Perturbed(layer)(x)` is just `layer(x)`, for one example.

    **Arguments:**

    - `layer`: an `eqx.nn.Linear` or an `eqx.nn.Conv` (`Conv1d`, `Conv2d`, …).
    - `tokenwise`: apply a `Linear` to every row of a `(tokens, in_features)`
        input (the token- and channel-mixing layers of an MLP-mixer), giving
        `(tokens, out_features)`.
    - `grouped`: declare that this layer's output channels reach the block's
        `LinearHead` only through themselves (through elementwise activations,
        residual additions and pooling, but no layer that mixes channels). With a
        head of `groups=G`, channel group g of z is then paired with the head's
        loss copy g alone ("many local losses"); otherwise with the sum of all
        copies. A wrong declaration biases the estimate; `fwdeqx.local.mlp`,
        `cnn` and `local_mixer` set it where it holds.

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
        """`layer` (this point's layer or a replacement of the same structure)
        applied as this point applies it."""
        if self.tokenwise:
            return jax.vmap(layer)(x)
        return layer(x)

    def __call__(self, x: Array, *, key: PRNGKeyArray | None = None) -> Array:
        del key
        return self.apply(self.layer, x)


def _run(layers: Sequence[Callable], x: Array) -> Array:
    for layer in layers:
        x = layer(x)
    return x


class Residual(eqx.Module):
    """`x + layers(x)`: a residual branch inside a `Block`, whose `Perturbed`
    layers the estimators see.

    **Arguments:**

    - `layers`: callables applied in order; their output has the shape of `x`.
    """

    layers: tuple[Callable, ...]

    def __init__(self, layers: Sequence[Callable]):
        self.layers = tuple(layers)

    def __call__(self, x: Array, *, key: PRNGKeyArray | None = None) -> Array:
        del key
        return x + _run(self.layers, x)


class LinearHead(eqx.Module):
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

    def __call__(self, h: Array, *, key: PRNGKeyArray | None = None) -> Array:
        del key
        return self.linear(self.pool(h))


class Block(eqx.Module):
    """A local-loss block: layers applied in order, and an optional head.

    Under `fwdeqx.local.LocalLoss` every block's input is stop-gradiented, so the
    block's parameters are trained by its own head's loss alone.

    **Arguments:**

    - `layers`: callables applied in order to one example: Equinox layers,
        `Perturbed` layers, `Residual` branches, activations such as
        `jax.nn.relu`, pooling, reshapes. A `Perturbed` directly followed by
        `jax.nn.relu` has its inactive units masked by
        `ActivityPerturbation(mask_inactive=True)`.
    - `head`: a `LinearHead` (or `None` for a block without a local loss; then
        only `GlobalLoss` can train the network).
    """

    layers: tuple[Callable, ...]
    head: LinearHead | None

    def __init__(self, layers: Sequence[Callable], head: LinearHead | None = None):
        self.layers = tuple(layers)
        self.head = head

    def __call__(self, x: Array, *, key: PRNGKeyArray | None = None) -> Array:
        """The block's output (the head's input) for one example."""
        del key
        return _run(self.layers, x)


class LocalNetwork(eqx.Module):
    """A network of `Block`s; its output is the last block's head's logits.

    `model(x)` takes one example (`jax.vmap` it for a batch). Use it with
    `fwdeqx.local.GlobalLoss` (end to end) or `fwdeqx.local.LocalLoss` (a loss per
    block).

    **Arguments:**

    - `blocks`: the blocks in order; the last one needs a head.
    """

    blocks: tuple[Block, ...]

    def __init__(self, blocks: Sequence[Block]):
        blocks = tuple(blocks)
        if not blocks:
            raise ValueError("LocalNetwork needs at least one Block.")
        for block in blocks:
            if not isinstance(block, Block):
                raise TypeError(
                    "LocalNetwork takes fwdeqx.local.Block objects, got "
                    f"{type(block).__name__}."
                )
        if blocks[-1].head is None:
            raise ValueError(
                "The last Block of a LocalNetwork needs a head (its logits are the "
                "network's output): Block(layers, head=LinearHead(...))."
            )
        self.blocks = blocks

    def __call__(self, x: Array, *, key: PRNGKeyArray | None = None) -> Array:
        del key
        for block in self.blocks:
            x = block(x)
        head = self.blocks[-1].head
        assert head is not None
        return head(x)
