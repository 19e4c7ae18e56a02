"""Models, batches and step variants shared by the `steps` and `memory` suites.

Every fwdeqx variant is built with `fwdeqx.make_step(loss, optax.sgd(lr), estimator)`,
so the benchmark measures what users run. The seed paper's recipe is kept here,
written as in the paper, as the reference baseline.
"""

import dataclasses
import itertools
import math
from collections.abc import Callable, Iterator
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import optax

import fwdeqx
from fwdeqx.models import CNN, MLP, cross_entropy


LEARNING_RATE = 1e-4  # small: the benchmark runs hundreds of steps on random data


def loss(model: eqx.Module, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
    x, y = batch
    return cross_entropy(model, x, y)


@dataclasses.dataclass(frozen=True)
class Setup:
    """A model and a batch to time steps on."""

    name: str
    description: str
    make_model: Callable[[jax.Array], eqx.Module]
    input_shape: tuple[int, ...]
    batch_size: int

    def model(self, key: jax.Array) -> eqx.Module:
        return self.make_model(key)

    def model_shape(self) -> eqx.Module:
        """The model as `jax.ShapeDtypeStruct`s: nothing allocated."""
        return eqx.filter_eval_shape(self.make_model, jax.random.key(0))

    def batch(self, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        x_key, y_key = jax.random.split(key)
        x = jax.random.uniform(x_key, (self.batch_size, *self.input_shape))
        y = jax.random.randint(y_key, (self.batch_size,), 0, 10)
        return x, y

    def batch_shape(self) -> tuple[jax.ShapeDtypeStruct, jax.ShapeDtypeStruct]:
        return jax.eval_shape(self.batch, jax.random.key(0))


def mlp_setup(name: str, width: int, depth: int, batch_size: int) -> Setup:
    return Setup(
        name=name,
        description=f"MLP 784-{'-'.join([str(width)] * depth)}-10, batch {batch_size}",
        make_model=lambda key: MLP(key=key, width=width, depth=depth),
        input_shape=(784,),
        batch_size=batch_size,
    )


def cnn_setup(name: str, channels: int, image_size: int, batch_size: int) -> Setup:
    return Setup(
        name=name,
        description=(
            f"CNN 4x conv3x3({channels}) + dense, {image_size}x{image_size} images, "
            f"batch {batch_size}"
        ),
        make_model=lambda key: CNN(key=key, channels=channels, image_size=image_size),
        input_shape=(1, image_size, image_size),
        batch_size=batch_size,
    )


def num_params(model: eqx.Module) -> int:
    """Number of floating-point parameters (of a model or of its shape)."""
    leaves = jtu.tree_leaves(model)
    return sum(
        math.prod(leaf.shape)
        for leaf in leaves
        if isinstance(leaf, jax.Array | jax.ShapeDtypeStruct)
        and jnp.issubdtype(leaf.dtype, jnp.inexact)
    )


# ---------------------------------------------------------------------------------
# The seed paper's recipe, as written there: one key per leaf, `jax.random.normal`,
# `tree_map`, `eqx.filter_jvp`, g = d v, plain SGD. Reference baseline only.


class SeedRecipeStep(eqx.Module):
    """`(model, opt_state, batch, key) -> (model, opt_state, loss)`, as a TrainStep."""

    learning_rate: float = eqx.field(static=True)

    def init(self, model: eqx.Module) -> None:
        del model
        return None

    @eqx.filter_jit
    def __call__(self, model, opt_state, batch, key):
        params, static = eqx.partition(model, eqx.is_inexact_array)
        leaves, treedef = jtu.tree_flatten(params)
        keys = jax.random.split(key, len(leaves))
        v = jtu.tree_unflatten(
            treedef,
            [
                jax.random.normal(k, leaf.shape, leaf.dtype)
                for k, leaf in zip(keys, leaves, strict=True)
            ],
        )

        def f(p):
            return loss(eqx.combine(p, static), batch)

        value, d = eqx.filter_jvp(f, (params,), (v,))
        grads = jtu.tree_map(lambda t: d * t, v)
        params = jtu.tree_map(lambda p, g: p - self.learning_rate * g, params, grads)
        return eqx.combine(params, static), opt_state, value


# ---------------------------------------------------------------------------------
# Variants.

DISTRIBUTIONS: dict[str, fwdeqx.AbstractTangentDistribution] = {
    "gaussian": fwdeqx.Gaussian(),
    "gaussian_hash": fwdeqx.Gaussian(generator="hash"),
    "rademacher": fwdeqx.Rademacher(),
    "lowrank": fwdeqx.LowRank(rank=1),
}


def train_step(name: str) -> Any:
    """The step of a named variant: `backprop-sgd`, `backprop-adam`, `seed-recipe`
    or `fwd-<distribution>-k<K>`."""
    if name == "backprop-sgd":
        return fwdeqx.make_step(loss, optax.sgd(LEARNING_RATE), fwdeqx.Backprop())
    if name == "backprop-adam":
        return fwdeqx.make_step(loss, optax.adam(LEARNING_RATE), fwdeqx.Backprop())
    if name == "seed-recipe":
        return SeedRecipeStep(LEARNING_RATE)
    prefix, distribution, k = name.split("-")
    assert prefix == "fwd" and k.startswith("k"), name
    estimator = fwdeqx.ForwardGradient(DISTRIBUTIONS[distribution], int(k[1:]))
    return fwdeqx.make_step(loss, optax.sgd(LEARNING_RATE), estimator)


def fwd_name(distribution: str, k: int) -> str:
    return f"fwd-{distribution}-k{k}"


class StepRunner:
    """Runs a training step repeatedly, carrying model and optimizer state."""

    def __init__(self, step: Any, model: eqx.Module, batch: Any, keys: Iterator):
        self.step = step
        self.model = model
        self.opt_state = step.init(model)
        self.batch = batch
        self.keys = keys

    def __call__(self) -> Any:
        self.model, self.opt_state, value = self.step(
            self.model, self.opt_state, self.batch, next(self.keys)
        )
        return value


class CallRunner:
    """Calls a jitted function on fixed arguments."""

    def __init__(self, fn: Callable, *args: Any):
        self.fn = fn
        self.args = args

    def __call__(self) -> Any:
        return self.fn(*self.args)


def key_cycle(key: jax.Array, n: int = 64) -> Iterator:
    return itertools.cycle(list(jax.random.split(key, n)))


# Diagnostics: the pieces a forward-gradient step is made of, timed on their own.


def sample_only(distribution: fwdeqx.AbstractTangentDistribution, num_tangents: int):
    @eqx.filter_jit
    def sample(key, like):
        estimator = fwdeqx.ForwardGradient(distribution, num_tangents)
        return estimator.sample(estimator.direction_keys(key), like)

    return sample


@eqx.filter_jit
def random_bits_only(key, like):
    """One random 32-bit word per parameter (threefry): what an exact float32
    Gaussian costs at least."""
    leaves = jtu.tree_leaves(like)
    keys = jax.random.split(key, len(leaves))
    return [
        jax.random.bits(k, leaf.shape, jnp.uint32)
        for k, leaf in zip(keys, leaves, strict=True)
    ]


@eqx.filter_jit
def forward_only(model, batch):
    return loss(model, batch)


@eqx.filter_jit
def jvp_only(model, batch, directions):
    """The jvp along directions given, stacked as `sample_only` returns them (no
    sampling, no update)."""
    return fwdeqx.ForwardGradient().derivatives(loss, model, directions, batch)


@eqx.filter_jit
def sgd_update_only(model, grads):
    """Plain SGD with a gradient given: reads and writes every parameter once."""
    return eqx.apply_updates(model, jtu.tree_map(lambda g: -LEARNING_RATE * g, grads))


def zeros_like_params(model: eqx.Module) -> Any:
    return jtu.tree_map(jnp.zeros_like, eqx.filter(model, eqx.is_inexact_array))
