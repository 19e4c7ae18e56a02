"""Containers for local-loss networks, and their one recording forward pass.

A `LocalNetwork` is a sequence of `Block`s; a block applies its layers (any
callables, e.g. `eqx.nn` layers and `jax.nn.relu`) in order, and may end in a
head that turns its output into logits for a local loss. Perturbation sites
(`Perturbed`) mark the layers whose outputs the activity estimators perturb.

`record` is the forward pass: the model's `__call__`, the objectives and the
estimators all run it.
"""

from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import equinox as eqx
import jax
from jaxtyping import Array, PRNGKeyArray

from ._heads import AbstractHead
from ._sites import AbstractSite, is_relu


class Residual(eqx.Module):
    """`x + layers(x)`: a residual branch inside a `Block`, whose perturbation
    sites the estimators see.

    **Arguments:**

    - `layers`: callables applied in order; their output has the shape of `x`.
    """

    layers: tuple[Callable, ...]

    def __init__(self, layers: Sequence[Callable]):
        self.layers = tuple(layers)

    def __call__(self, x: Array, *, key: PRNGKeyArray | None = None) -> Array:
        del key
        return x + run(self.layers, x, _plain)


class Point(NamedTuple):
    """A perturbation site as the forward pass meets it: its block, the layer right
    after it (`None` at the end of a list) and every layer after it up to the
    block's head (residual branches opened)."""

    block: int
    site: AbstractSite
    following: Any
    downstream: tuple[Any, ...]

    @property
    def relu_next(self) -> bool:
        return is_relu(self.following)


def _opened(layers: Sequence[Any]) -> Iterator[Any]:
    for layer in layers:
        if isinstance(layer, Residual):
            yield from _opened(layer.layers)
        else:
            yield layer


def _walk(layers: Sequence[Any], block: int, after: tuple) -> Iterator[Point]:
    for i, layer in enumerate(layers):
        rest = (*_opened(layers[i + 1 :]), *after)
        if isinstance(layer, AbstractSite):
            following = layers[i + 1] if i + 1 < len(layers) else None
            yield Point(block, layer, following, rest)
        elif isinstance(layer, Residual):
            yield from _walk(layer.layers, block, rest)


def run(
    layers: Sequence[Callable],
    h: Array,
    at_site: Callable[[AbstractSite, Array], Array],
) -> Array:
    """`layers` applied in order to one example, each site through `at_site`."""
    for layer in layers:
        if isinstance(layer, AbstractSite):
            h = at_site(layer, h)
        elif isinstance(layer, Residual):
            h = h + run(layer.layers, h, at_site)
        else:
            h = layer(h)
    return h


def _plain(site: AbstractSite, h: Array) -> Array:
    return site(h)


class Block(eqx.Module):
    """A local-loss block: layers applied in order, and an optional head.

    Under `fwdeqx.local.LocalLoss` every block's input is stop-gradiented, so the
    block's parameters are trained by its own head's loss alone.

    **Arguments:**

    - `layers`: callables applied in order to one example: Equinox layers,
        `Perturbed` layers, `Residual` branches, activations such as
        `jax.nn.relu`, pooling, reshapes. A site directly followed by a ReLU
        (`jax.nn.relu`, `eqx.nn.Lambda(jax.nn.relu)` or a subclass of
        `fwdeqx.local.AbstractReLU`) has its inactive units masked by
        `ActivityPerturbation(mask_inactive=True)`; after any other activation
        nothing is masked. Each site checks the layers after it
        (`Perturbed(..., grouped=True)` refuses layers that mix channels).
    - `head`: a `LinearHead` (or `None` for a block without a local loss; then
        only `GlobalLoss` can train the network).
    """

    layers: tuple[Callable, ...]
    head: AbstractHead | None

    def __init__(self, layers: Sequence[Callable], head: AbstractHead | None = None):
        self.layers = tuple(layers)
        self.head = head
        for point in _walk(self.layers, 0, ()):
            point.site.check_downstream(point.downstream)

    def __call__(self, x: Array, *, key: PRNGKeyArray | None = None) -> Array:
        """The block's output (the head's input) for one example."""
        del key
        return run(self.layers, x, _plain)


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
        head = self.blocks[-1].head
        assert head is not None
        return head(record(self, x).outputs[-1])


def points(net: LocalNetwork) -> list[Point]:
    """Every site of `net`, in the order the forward pass meets them."""
    return [
        point
        for index, block in enumerate(net.blocks)
        for point in _walk(block.layers, index, ())
    ]


class Recording(NamedTuple):
    """One example's forward pass: each block's output (its head's input) and each
    site's `(input, output)`, in the order of `points`."""

    outputs: list[Array]
    sites: list[tuple[Array, Array]]


def record(
    net: LocalNetwork,
    x: Array,
    deltas: list[Array] | None = None,
    *,
    detach: Callable[[int], bool] = lambda index: False,
) -> Recording:
    """The forward pass of one example, recording every site's input and output;
    site i's output is shifted by `deltas[i]` (the activity perturbation) and
    block b's input is stop-gradiented where `detach(b)`."""
    sites: list[tuple[Array, Array]] = []

    def at_site(site: AbstractSite, h: Array) -> Array:
        z = site(h)
        sites.append((h, z))
        return z if deltas is None else z + deltas[len(sites) - 1]

    outputs = []
    h = x
    for index, block in enumerate(net.blocks):
        if detach(index):
            h = jax.lax.stop_gradient(h)
        h = run(block.layers, h, at_site)
        outputs.append(h)
    return Recording(outputs, sites)
