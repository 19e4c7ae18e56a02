"""Ready-made local-loss networks: an MLP, a CNN and a LocalMixer-like patch model."""

from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray

from ._heads import LinearHead
from ._layers import Block, LocalNetwork, Residual
from ._sites import Perturbed


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
    dtype: Any = None,
) -> LocalNetwork:
    """A CNN: one block per entry of `channels`, each `Perturbed(Conv2d)` (same
    padding), ReLU and 2×2 max pooling, with a `LinearHead` (spatial average, then
    linear) on every block; the last head gives the logits.

    **Arguments:**

    - `in_channels`: channels of the input image, given as `(C, H, W)`, `(H, W)`
        or flat.
    - `channels`: output channels of each block (an int: one block).
    - `num_classes`: number of logits.
    - `key`: initialisation key.
    - `image_size`: height = width of the input.
    - `kernel_size`: convolution kernel size.
    - `groups`: channel groups of every head; divides every entry of `channels`.
    - `dtype`: parameter dtype.
    """
    widths = (channels,) if isinstance(channels, int) else tuple(channels)
    keys = jax.random.split(key, 2 * len(widths))
    blocks = []
    previous = in_channels
    for i, width in enumerate(widths):
        conv = eqx.nn.Conv2d(
            previous, width, kernel_size, padding="SAME", key=keys[2 * i], dtype=dtype
        )
        layers: list = [_Image(in_channels, image_size)] if i == 0 else []
        layers += [
            Perturbed(conv, grouped=True),
            jax.nn.relu,
            eqx.nn.MaxPool2d(2, 2),
        ]
        head = LinearHead(
            width, num_classes, groups=groups, key=keys[2 * i + 1], dtype=dtype
        )
        blocks.append(Block(layers, head))
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
