"""The models of the papers' MNIST experiments, as plain `eqx.Module`s, and their
loss. Each maps one image (flat `(784,)` for the MLP and logistic regression,
`(1, 28, 28)` for the CNN) to 10 logits; use `jax.vmap` over a batch."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, Int, PRNGKeyArray


__all__ = ["CNN", "MLP", "LogisticRegression", "accuracy", "cross_entropy"]


class MLP(eqx.Module):
    """The seed paper's MLP: 784-1024-1024-10 with ReLU (sizes configurable).

    **Arguments:**

    - `key`: PRNG key for the initialisation (equinox's default uniform init).
    - `in_size`, `width`, `depth`, `out_size`: `depth` hidden layers of `width`.
    """

    mlp: eqx.nn.MLP

    def __init__(
        self,
        *,
        key: PRNGKeyArray,
        in_size: int = 784,
        width: int = 1024,
        depth: int = 2,
        out_size: int = 10,
    ):
        self.mlp = eqx.nn.MLP(in_size, out_size, width, depth, jax.nn.relu, key=key)

    def __call__(self, x: Float[Array, " in_size"]) -> Float[Array, " out_size"]:
        return self.mlp(x)


class LogisticRegression(eqx.Module):
    """Multinomial logistic regression, 784 → 10 (Baydin et al. 2022, §5.2).

    **Arguments:**

    - `key`: PRNG key for the initialisation.
    - `in_size`, `out_size`: input and output sizes (784, 10).
    """

    linear: eqx.nn.Linear

    def __init__(self, *, key: PRNGKeyArray, in_size: int = 784, out_size: int = 10):
        self.linear = eqx.nn.Linear(in_size, out_size, key=key)

    def __call__(self, x: Float[Array, " in_size"]) -> Float[Array, " out_size"]:
        return self.linear(x)


class CNN(eqx.Module):
    """Baydin et al.'s CNN: four 3x3 convolutions of 64 channels with ReLU, 2x2 max
    pooling after the second and the fourth, then one dense layer to 10 classes.

    **Arguments:**

    - `key`: PRNG key for the initialisation.
    - `channels`: channels of every convolution (64).
    - `image_size`: side of the square input image (28).
    """

    convs: tuple[eqx.nn.Conv2d, ...]
    pool: eqx.nn.MaxPool2d
    head: eqx.nn.Linear

    def __init__(self, *, key: PRNGKeyArray, channels: int = 64, image_size: int = 28):
        keys = jax.random.split(key, 5)
        in_channels = (1, channels, channels, channels)
        self.convs = tuple(
            eqx.nn.Conv2d(c, channels, 3, padding=1, key=k)
            for c, k in zip(in_channels, keys[:4], strict=True)
        )
        self.pool = eqx.nn.MaxPool2d(2, 2)
        side = image_size // 4
        self.head = eqx.nn.Linear(channels * side * side, 10, key=keys[4])

    def __call__(self, x: Float[Array, "1 h w"]) -> Float[Array, " 10"]:
        for index, conv in enumerate(self.convs):
            x = jax.nn.relu(conv(x))
            if index in (1, 3):
                x = self.pool(x)
        return self.head(x.reshape(-1))


def cross_entropy(
    model: Callable[[Array], Array],
    x: Float[Array, "batch ..."],
    y: Int[Array, " batch"],
) -> Float[Array, ""]:
    """Mean softmax cross-entropy of `model` on a batch.

    **Arguments:**

    - `model`: maps one example to logits.
    - `x`: a batch of inputs.
    - `y`: integer labels, shape `(batch,)`.

    **Returns:**

    The mean loss, a scalar.
    """
    logits = jax.vmap(model)(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def accuracy(
    model: Callable[[Array], Array],
    x: Float[Array, "batch ..."],
    y: Int[Array, " batch"],
) -> Float[Array, ""]:
    """Fraction of the batch whose arg-max logit is the label.

    **Arguments:**

    - `model`: maps one example to logits.
    - `x`: a batch of inputs.
    - `y`: integer labels, shape `(batch,)`.

    **Returns:**

    The accuracy in [0, 1], a scalar.
    """
    logits = jax.vmap(model)(x)
    return jnp.mean((jnp.argmax(logits, axis=-1) == y).astype(jnp.float32))
