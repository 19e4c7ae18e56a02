"""Ready-made local-loss networks: an MLP, a CNN and a LocalMixer-like patch model,
and two networks with per-location losses: a CNN (`location_cnn`) and Ren et al.'s
LocalMixer (`location_mixer`)."""

from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray

from ._heads import LinearHead, LocationHead
from ._layers import Block, LocalNetwork, Residual
from ._sites import (
    AbstractGroupwise,
    LocationPerturbed,
    NeighbourhoodPerturbed,
    Perturbed,
)


class _Image(eqx.Module):
    """Reshape one example to `(channels, size, size)` (accepts flat or `(H, W)`)."""

    channels: int = eqx.field(static=True)
    size: int = eqx.field(static=True)

    def __call__(self, x: Array) -> Array:
        return x.reshape(self.channels, self.size, self.size)


class _Patches(eqx.Module):
    """`(C, H, W)` image → `(P, patch·patch·C)` non-overlapping patches."""

    patch: int = eqx.field(static=True)

    def __call__(self, x: Array) -> Array:
        c, h, w = x.shape
        p = self.patch
        x = x.reshape(c, h // p, p, w // p, p).transpose(1, 3, 2, 4, 0)
        return x.reshape((h // p) * (w // p), p * p * c)


class _Normalize(AbstractGroupwise):
    """Parameter-free layer normalisation of channel-first features `(C, *locations)`:
    at every location, each of `groups` contiguous channel groups is normalised to
    zero mean and unit variance over its channels (Ren et al.'s LayerNorm, which
    has no scale or shift)."""

    groups: int = eqx.field(static=True, default=1)
    eps: float = eqx.field(static=True, default=1e-5)

    def __call__(self, x: Array, *, key: PRNGKeyArray | None = None) -> Array:
        del key
        grouped = x.reshape(self.groups, x.shape[0] // self.groups, *x.shape[1:])
        mean = jnp.mean(grouped, axis=1, keepdims=True)
        var = jnp.var(grouped, axis=1, keepdims=True)
        return ((grouped - mean) * jax.lax.rsqrt(var + self.eps)).reshape(x.shape)


def mlp(
    in_features: int,
    width: int,
    depth: int,
    num_classes: int,
    *,
    key: PRNGKeyArray,
    groups: int = 1,
    dtype: Any = None,
) -> LocalNetwork:
    """An MLP of `depth` hidden layers of `width` units, one block per hidden layer:
    `Perturbed(Linear)` then ReLU, with a `LinearHead` on every block (the last one
    is the output layer). Inputs are flattened.

    **Arguments:**

    - `in_features`, `width`, `depth`, `num_classes`: the shape.
    - `key`: initialisation key.
    - `groups`: channel groups of every head ("many local losses"); divides `width`.
    - `dtype`: parameter dtype (default float32, float64 under x64).
    """
    if depth < 1:
        raise ValueError("mlp needs depth >= 1.")
    keys = jax.random.split(key, 2 * depth)
    blocks = []
    for i in range(depth):
        layers: list = [jnp.ravel] if i == 0 else []
        fan_in = in_features if i == 0 else width
        linear = eqx.nn.Linear(fan_in, width, key=keys[2 * i], dtype=dtype)
        layers += [Perturbed(linear, grouped=True), jax.nn.relu]
        head = LinearHead(
            width, num_classes, groups=groups, key=keys[2 * i + 1], dtype=dtype
        )
        blocks.append(Block(layers, head))
    return LocalNetwork(blocks)


def cnn(
    in_channels: int,
    channels: int | Sequence[int],
    num_classes: int,
    *,
    key: PRNGKeyArray,
    image_size: int = 28,
    kernel_size: int = 3,
    groups: int = 1,
    locations: bool = False,
    dtype: Any = None,
) -> LocalNetwork:
    """A CNN: one block per entry of `channels`, each `Perturbed(Conv2d)` (same
    padding), ReLU and 2×2 max pooling, with a `LinearHead` (spatial average, then
    linear) on every block; the last head gives the logits.

    With `locations=True` the losses are per location (Ren et al.'s patch-wise
    losses): each block's convolution is a `LocationPerturbed(Conv2d,
    pool_stride=2)` and its head a `LocationHead`, one loss copy per pooled
    position and channel group, each reached by the tangents of its own units
    only. The head's logits and loss are unchanged. One perturbed layer per block
    is exact (LG-BP's gradient) when `groups` equals the channels; with fewer
    groups it is not (see `fwdeqx.local.location_cnn` for two per block).

    **Arguments:**

    - `in_channels`: channels of the input image, given as `(C, H, W)`, `(H, W)`
        or flat.
    - `channels`: output channels of each block (an int: one block).
    - `num_classes`: number of logits.
    - `key`: initialisation key.
    - `image_size`: height = width of the input.
    - `kernel_size`: convolution kernel size.
    - `groups`: channel groups of every head; divides every entry of `channels`.
    - `locations`: one loss copy per pooled position (and group) instead of one per
        group.
    - `dtype`: parameter dtype.
    """
    widths = (channels,) if isinstance(channels, int) else tuple(channels)
    keys = jax.random.split(key, 2 * len(widths))
    blocks = []
    previous, size = in_channels, image_size
    for i, width in enumerate(widths):
        conv = eqx.nn.Conv2d(
            previous, width, kernel_size, padding="SAME", key=keys[2 * i], dtype=dtype
        )
        layers: list = [_Image(in_channels, image_size)] if i == 0 else []
        site = (
            LocationPerturbed(conv, pool_stride=2)
            if locations
            else Perturbed(conv, grouped=True)
        )
        layers += [site, jax.nn.relu, eqx.nn.MaxPool2d(2, 2)]
        size //= 2
        head = LinearHead(
            width, num_classes, groups=groups, key=keys[2 * i + 1], dtype=dtype
        )
        blocks.append(
            Block(layers, LocationHead(head, (size, size)) if locations else head)
        )
        previous = width
    return LocalNetwork(blocks)


def local_mixer(
    image_size: int,
    patch_size: int,
    in_channels: int,
    width: int,
    depth: int,
    num_classes: int,
    *,
    key: PRNGKeyArray,
    groups: int = 1,
    dtype: Any = None,
) -> LocalNetwork:
    """A LocalMixer-like patch model (Ren et al. 2023): `depth` mixer blocks, each a
    local-loss block with a `LinearHead` averaging over patches.

    The image is cut into P = (image_size/patch_size)² patches, embedded by a
    token-wise `Perturbed(Linear)` and ReLU at the start of block 0. Every block
    then mixes tokens (a `Perturbed(Linear(P, P))` along the patch axis, ReLU) and
    channels (`Perturbed(Linear(width, width))`, ReLU,
    `Perturbed(Linear(width, width), grouped=True)`) inside a residual branch,
    followed by ReLU. Only the last layer maps channel groups to the head's
    channel groups, so it alone is `grouped`.

    **Arguments:**

    - `image_size`, `patch_size`, `in_channels`: the input, `(C, H, W)`, `(H, W)`
        or flat; `patch_size` divides `image_size`.
    - `width`: channels per token; `depth`: number of blocks (≥ 1).
    - `num_classes`: number of logits.
    - `key`: initialisation key.
    - `groups`: channel groups of every head; divides `width`.
    - `dtype`: parameter dtype.
    """
    if image_size % patch_size != 0:
        raise ValueError(
            f"patch_size={patch_size} must divide image_size={image_size}."
        )
    if depth < 1:
        raise ValueError("local_mixer needs depth >= 1.")
    tokens = (image_size // patch_size) ** 2
    embed_key, *keys = jax.random.split(key, 1 + 4 * depth)
    blocks = []
    for i in range(depth):
        k_token, k_hidden, k_out, k_head = keys[4 * i : 4 * i + 4]
        layers: list = []
        if i == 0:
            embed = eqx.nn.Linear(
                patch_size * patch_size * in_channels, width, key=embed_key, dtype=dtype
            )
            layers += [
                _Image(in_channels, image_size),
                _Patches(patch_size),
                Perturbed(embed, tokenwise=True),
                jax.nn.relu,
            ]
        mixing = Residual(
            [
                jnp.transpose,  # (P, C) -> (C, P)
                Perturbed(
                    eqx.nn.Linear(tokens, tokens, key=k_token, dtype=dtype),
                    tokenwise=True,
                ),
                jax.nn.relu,
                jnp.transpose,  # back to (P, C)
                Perturbed(
                    eqx.nn.Linear(width, width, key=k_hidden, dtype=dtype),
                    tokenwise=True,
                ),
                jax.nn.relu,
                Perturbed(
                    eqx.nn.Linear(width, width, key=k_out, dtype=dtype),
                    tokenwise=True,
                    grouped=True,
                ),
            ]
        )
        layers += [mixing, jax.nn.relu]
        head = LinearHead(
            width, num_classes, groups=groups, channel_axis=-1, key=k_head, dtype=dtype
        )
        blocks.append(Block(layers, head))
    return LocalNetwork(blocks)


def location_cnn(
    in_channels: int,
    channels: int | Sequence[int],
    num_classes: int,
    *,
    key: PRNGKeyArray,
    image_size: int = 28,
    kernel_size: int = 3,
    groups: int = 1,
    dtype: Any = None,
) -> LocalNetwork:
    """A CNN with per-location local losses: one block per entry of `channels`,
    each two convolutions (same padding) with ReLUs and a 2×2 max pooling,

        NeighbourhoodPerturbed(Conv2d) → ReLU → LocationPerturbed(Conv2d) → ReLU
        → MaxPool2d(2, 2),

    and a `LocationHead` (a `LinearHead` with `groups` channel groups, one loss
    copy per pooled position and group); the last head gives the logits.

    Both convolutions are perturbed, so every forward-mode derivative crosses a
    layer and a nonlinearity. The second convolution's units reach the head at
    their own channel and pooled position, so each is paired with its own copy
    (`fwdeqx.local.LocationPerturbed`); the first one's output is mixed by the
    second convolution, over its channels and by one position (a 3×3 kernel), so
    each unit is paired with every group's copies at the pooled positions within
    that neighbourhood (`fwdeqx.local.NeighbourhoodPerturbed`).

    **Arguments:**

    - `in_channels`: channels of the input image, given as `(C, H, W)`, `(H, W)`
        or flat.
    - `channels`: output channels of each block (an int: one block).
    - `num_classes`: number of logits.
    - `key`: initialisation key.
    - `image_size`: height = width of the input; divisible by 2 per block.
    - `kernel_size`: convolution kernel size.
    - `groups`: channel groups of every head; divides every entry of `channels`.
    - `dtype`: parameter dtype.
    """
    widths = (channels,) if isinstance(channels, int) else tuple(channels)
    if not widths:
        raise ValueError("location_cnn needs at least one block (channels).")
    if image_size % 2 ** len(widths) != 0:
        raise ValueError(
            f"location_cnn halves the image in each of its {len(widths)} blocks: "
            f"image_size={image_size} must be divisible by {2 ** len(widths)}."
        )
    keys = jax.random.split(key, 3 * len(widths))
    blocks = []
    previous, size = in_channels, image_size
    for i, width in enumerate(widths):
        k_first, k_second, k_head = keys[3 * i : 3 * i + 3]
        first, second = (
            eqx.nn.Conv2d(
                fan_in, width, kernel_size, padding="SAME", key=k, dtype=dtype
            )
            for fan_in, k in ((previous, k_first), (width, k_second))
        )
        size //= 2
        layers: list = [_Image(in_channels, image_size)] if i == 0 else []
        layers += [
            NeighbourhoodPerturbed(first, reach=kernel_size // 2, pool_stride=2),
            jax.nn.relu,
            LocationPerturbed(second, pool_stride=2),
            jax.nn.relu,
            eqx.nn.MaxPool2d(2, 2),
        ]
        head = LinearHead(width, num_classes, groups=groups, key=k_head, dtype=dtype)
        blocks.append(Block(layers, LocationHead(head, (size, size))))
        previous = width
    return LocalNetwork(blocks)


def location_mixer(
    image_size: int,
    in_channels: int,
    patches: int,
    width: int,
    depth: int,
    num_classes: int,
    *,
    key: PRNGKeyArray,
    groups: int = 1,
    dtype: Any = None,
) -> LocalNetwork:
    """Ren et al.'s LocalMixer (ICLR 2023, their code's `train_mixer_supervised.py`),
    with block-wise, patch-wise and channel-group-wise local losses.

    The image is cut into P = `patches`² non-overlapping patches (`patches` per
    side), kept channel-first as `(features, P)`. Every block ends in a
    `LocationHead` (average over patches, then a `Linear`; one loss copy per patch
    and channel group) and has two or three perturbed layers, each preceded by a
    parameter-free LayerNorm (`N`: per patch over the channels; `N_G`: per patch
    within each of the `groups` channel groups):

    - block 0, the patch embedding: N → perturbed linear (patch pixels →
      `width`) → ReLU → N_G → grouped linear → ReLU;
    - blocks 1 … `depth`−1, residual: x + [N → token mixing (perturbed
      `Linear(P, P)` along the patches) → ReLU → N → channel mixing (perturbed
      linear `width` → `width`) → ReLU → N_G → grouped linear], then ReLU.

    The grouped linear (a 1×1 `Conv1d` with `groups`, Ren's block-diagonal
    `group_linear`) is a `LocationPerturbed` site: its unit at patch l in group g
    reaches the head only at (l, g), so it is paired with that copy alone. The
    embedding and channel-mixing layers are `NeighbourhoodPerturbed(..., reach=0,
    groups=groups)` sites: only per-patch layers that keep the channel groups
    apart (ReLU, N_G, the grouped linear) follow them, so their unit at patch l in
    group g is paired with copy (l, g) too. The token-mixing layer is followed by
    N, which mixes every channel of a patch: its units are paired with their own
    patch's copies of every group (`reach=0`, `groups=1`).

    Differences from Ren et al.: their LayerNorm also follows each linear layer,
    with the perturbation added after it; here a site's output is its affine
    layer's, so ReLU follows it directly (its inactive units are masked) and the
    normalisation moves before the next linear layer. Their optional LayerNorm
    before each head is left out (it would mix the channels the copies split).

    Configurations (Ren et al.'s `S/P/G` names: model size / patches per side /
    channel groups; their code's `num_patches` is "number of patches on each
    side", e.g. ImageNet L/32/64 is `num_patches=32`, `num_groups=64`, 4 blocks of
    2048 channels):

    - M/8/16 on 32×32×3 CIFAR-10: `location_mixer(32, 3, patches=8, width=512,
      depth=4, num_classes=10, groups=16)`: 64 patches of 4×4 pixels, 16 groups
      (1,024 loss copies per block). The width and depth of "M" (512 channels,
      4 blocks) are our reading of the paper, not checked against their code.
    - small, for 28×28×1 data: `location_mixer(28, 1, patches=4, width=64,
      depth=3, num_classes=10, groups=8)`: 16 patches of 7×7 pixels. (Ren's
      MNIST M/1/16 has a single patch, so no token mixing.)

    **Arguments:**

    - `image_size`, `in_channels`: the input, `(C, H, W)`, `(H, W)` or flat;
        square.
    - `patches`: patches per side; divides `image_size`.
    - `width`: channels per patch; `depth`: number of blocks (≥ 1).
    - `num_classes`: number of logits.
    - `key`: initialisation key.
    - `groups`: channel groups of every head and grouped linear; divides `width`.
    - `dtype`: parameter dtype.
    """
    if patches < 1 or image_size % patches != 0:
        raise ValueError(f"patches={patches} must divide image_size={image_size}.")
    if depth < 1:
        raise ValueError("location_mixer needs depth >= 1.")
    if groups < 1 or width % groups != 0:
        raise ValueError(
            f"groups={groups} must be a positive divisor of width={width}."
        )
    size = image_size // patches
    tokens = patches * patches
    keys = iter(jax.random.split(key, 4 * depth))

    def pointwise(fan_in: int, site_groups: int = 1) -> eqx.nn.Conv1d:
        return eqx.nn.Conv1d(
            fan_in, width, 1, groups=site_groups, key=next(keys), dtype=dtype
        )

    def by_patch(
        layer: eqx.nn.Linear | eqx.nn.Conv1d, kept: int
    ) -> NeighbourhoodPerturbed:
        # Later layers act on each patch separately, keeping `kept` groups apart.
        tokenwise = isinstance(layer, eqx.nn.Linear)
        return NeighbourhoodPerturbed(layer, reach=0, tokenwise=tokenwise, groups=kept)

    def grouped() -> list:
        return [_Normalize(groups), LocationPerturbed(pointwise(width, groups))]

    blocks = []
    for i in range(depth):
        if i == 0:
            layers: list = [
                _Image(in_channels, image_size),
                _Patches(size),
                jnp.transpose,  # (P, pixels) -> (pixels, P)
                _Normalize(),
                by_patch(pointwise(size * size * in_channels), groups),
                jax.nn.relu,
                *grouped(),
                jax.nn.relu,
            ]
        else:
            token = eqx.nn.Linear(tokens, tokens, key=next(keys), dtype=dtype)
            branch = [
                _Normalize(),
                by_patch(token, 1),
                jax.nn.relu,
                _Normalize(),
                by_patch(pointwise(width), groups),
                jax.nn.relu,
                *grouped(),
            ]
            layers = [Residual(branch), jax.nn.relu]
        head = LinearHead(
            width, num_classes, groups=groups, key=next(keys), dtype=dtype
        )
        blocks.append(Block(layers, LocationHead(head, (tokens,))))
    return LocalNetwork(blocks)
