"""One training run of the local-losses experiment: model, method, optimizer, seed.

A *method* is an objective and an estimator (Ren et al. 2023, Table 3):

| method   | objective                      | estimator                        |
|----------|--------------------------------|----------------------------------|
| backprop | `fl.GlobalLoss` (end to end)   | `fwdeqx.Backprop()`              |
| fg-w     | `fl.GlobalLoss`                | `fwdeqx.ForwardGradient()`       |
| fg-a     | `fl.GlobalLoss`                | `fl.ActivityPerturbation()`      |
| lg-bp    | `fl.LocalLoss` (stop-gradients)| `fwdeqx.Backprop()` (reference)  |
| lg-fg-w  | `fl.LocalLoss` (stop-gradients)| `fl.LocalWeightPerturbation()`   |
| lg-fg-a  | `fl.LocalLoss`                 | `fl.ActivityPerturbation()`      |

Every method trains the same `fl.LocalNetwork` (the global objective ignores the
local heads except the last one, which is the network's output); accuracy is always
that of the network's final output `model(x)`.

The loop runs the steps of an epoch in chunks of at most `CHUNK_STEPS` steps, each
one call of a jitted `jax.lax.scan` (one compile per chunk length and
configuration, shared by the seeds), loads the next chunk of batches on the host
while the device computes, and evaluates on the whole test split after every
epoch. `wall_s` counts the training chunks (data loading included) and excludes
compilation and evaluation.
"""

import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import PRNGKeyArray

import fwdeqx

from ._runs import (
    data_identity as data_identity,
    finite_or_none,
    make_chunk_fn,
    make_evaluate,
    stacked_chunks,
    under_standard_promotion,
)


METHODS = ("backprop", "fg-w", "fg-a", "lg-bp", "lg-fg-w", "lg-fg-a")
"""The methods, in the row order of Ren et al.'s Table 3."""
METHOD_PARTS = {
    "backprop": ("GlobalLoss", "Backprop"),
    "fg-w": ("GlobalLoss", "ForwardGradient"),
    "fg-a": ("GlobalLoss", "ActivityPerturbation"),
    "lg-bp": ("LocalLoss", "Backprop"),
    "lg-fg-w": ("LocalLoss", "LocalWeightPerturbation"),
    "lg-fg-a": ("LocalLoss", "ActivityPerturbation"),
}
"""method -> (objective, estimator) class names, for the config and the report."""
MODELS = ("mlp", "cnn", "mixer")
CHUNK_STEPS = 200


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything that determines one run's numbers."""

    dataset: str
    data: str  # the data's identity: sizes and content fingerprint (`data_identity`)
    model: str
    arch: tuple[tuple[str, Any], ...]  # the model builder's keyword arguments
    method: str
    optimizer: str
    lr: float
    schedule: str  # "cosine" (decay to 0 over the run) or "constant"
    num_tangents: int
    seed: int
    epochs: int
    batch_size: int

    @property
    def run_id(self) -> str:
        return (
            f"{self.dataset}-{self.data}-{self.model}-{arch_tag(self.arch)}-"
            f"{self.method}-k{self.num_tangents}-{self.optimizer}-lr{self.lr:g}-"
            f"{self.schedule}-"
            f"b{self.batch_size}-e{self.epochs}-seed{self.seed}"
        )

    def layout(self) -> str:
        return "flat" if self.model == "mlp" else "image"


def arch_tag(arch: tuple[tuple[str, Any], ...]) -> str:
    """A short readable tag of the architecture, e.g. `w1024-d3-g1`."""
    short = {"width": "w", "depth": "d", "channels": "c", "groups": "g", "patch": "p"}
    parts = []
    for name, value in arch:
        text = "x".join(map(str, value)) if isinstance(value, tuple) else str(value)
        parts.append(f"{short.get(name, name)}{text}")
    return "-".join(parts)


def dataset_info(dataset: Any) -> dict[str, Any]:
    """The dataset's identity as recorded in config.json and every run."""
    return {
        "name": dataset.name,
        "requested": dataset.requested,
        "source": str(dataset.source),
        "test_split": str(dataset.validation),
        "num_train": len(dataset.train_labels),
        "num_test": len(dataset.val_labels),
        "fingerprint": dataset.fingerprint,
    }


# --- the model and the method, from fwdeqx.local -----------------------------------


def build_model(model: str, arch: dict[str, Any], *, key: PRNGKeyArray) -> eqx.Module:
    """The `fl.LocalNetwork` named `model` with keyword arguments `arch`, for 28x28
    single-channel images and 10 classes."""
    import fwdeqx.local as fl

    if model == "mlp":
        return fl.mlp(
            28 * 28, arch["width"], arch["depth"], 10, key=key, groups=arch["groups"]
        )
    if model == "cnn":
        return fl.cnn(1, arch["channels"], 10, key=key, groups=arch["groups"])
    if model == "mixer":
        return fl.local_mixer(
            28,
            arch["patch"],
            1,
            arch["width"],
            arch["depth"],
            10,
            key=key,
            groups=arch["groups"],
        )
    raise ValueError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")


def build_method(method: str, num_tangents: int) -> tuple[Callable, Any]:
    """`(objective, estimator)` of `method`; `objective(model, x, y)` is a batch-mean
    scalar and `estimator(objective, model, x, y, key=key)` gives `(value, grads)`."""
    import fwdeqx
    import fwdeqx.local as fl

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    k = num_tangents
    if method == "backprop":
        return fl.GlobalLoss(), fwdeqx.Backprop()
    if method == "fg-w":
        return fl.GlobalLoss(), fwdeqx.ForwardGradient(num_tangents=k)
    if method == "fg-a":
        return fl.GlobalLoss(), fl.ActivityPerturbation(num_tangents=k)
    if method == "lg-bp":
        return fl.LocalLoss(), fwdeqx.Backprop()
    if method == "lg-fg-w":
        return fl.LocalLoss(), fl.LocalWeightPerturbation(num_tangents=k)
    return fl.LocalLoss(), fl.ActivityPerturbation(num_tangents=k)


def make_optimizer(
    name: str, lr: float, *, schedule: str = "constant", total_steps: int = 1
) -> optax.GradientTransformation:
    """Adam or SGD with momentum 0.9, at a constant learning rate or one decaying
    from `lr` to 0 along a half cosine over `total_steps`."""
    if schedule == "cosine":
        rate: Any = optax.cosine_decay_schedule(lr, max(total_steps, 1))
    elif schedule == "constant":
        rate = lr
    else:
        raise ValueError(f"unknown schedule {schedule!r}; choose cosine or constant")
    if name == "adam":
        return optax.adam(rate)
    if name == "sgd":
        return optax.sgd(rate, momentum=0.9)
    raise ValueError(f"unknown optimizer {name!r}; choose adam or sgd")


# --- the jitted pieces ---------------------------------------------------------------


def chunk_sizes(steps_per_epoch: int, chunk_steps: int = CHUNK_STEPS) -> list[int]:
    """An epoch cut into near-equal chunks of at most `chunk_steps` steps (at most
    two distinct lengths, so at most two compiles)."""
    count = math.ceil(steps_per_epoch / chunk_steps)
    base, extra = divmod(steps_per_epoch, count)
    return [base + 1] * extra + [base] * (count - extra)


@dataclasses.dataclass
class _Shared:
    """The jitted chunk and evaluations of one configuration (shared by its seeds:
    seeds differ only in array leaves)."""

    chunk_fn: Any
    compiled: dict[int, Any]
    evaluate_test: Callable
    evaluate_train: Callable


@under_standard_promotion
def train_run(
    config: RunConfig,
    dataset: Any,
    *,
    batches: Callable[..., Iterator],
    to_float: Callable[..., np.ndarray],
    progress: Callable[..., Any] | None = None,
    cache: dict | None = None,
    standardize: tuple[float, float] | bool = False,
) -> dict[str, Any]:
    """Train one run and return its record for `runs.jsonl`.

    **Arguments:**

    - `config`: the run.
    - `dataset`: a `fwdeqx.data.Dataset` (its validation split is the test set).
    - `batches`, `to_float`: `fwdeqx.data.batches` and `fwdeqx.data.to_float`.
    - `progress`: optional `tqdm`-like factory `progress(total=..., desc=...)`.
    - `cache`: a dict shared by the runs of a grid (one compile per configuration).
    - `standardize`: the input scaling, as in `fwdeqx.data.batches`.

    **Returns:**

    A JSON-ready dict: the per-epoch history (mean training objective, test loss
    and accuracy, cumulative training wall time), the final test loss and accuracy,
    the accuracy on the whole training set, compile and wall times, and whether the
    run diverged (a non-finite training objective).

    One key per seed, split once: the initialisation and the tangents come from
    `key(seed)`, the batch order from `seed` (fwdeqx.data.batches).
    """
    cache = {} if cache is None else cache
    layout = config.layout()
    model_key, train_key = jax.random.split(jax.random.key(config.seed))
    model = build_model(config.model, dict(config.arch), key=model_key)
    objective, estimator = build_method(config.method, config.num_tangents)
    steps_per_epoch = len(dataset.train_labels) // config.batch_size
    if steps_per_epoch < 1:
        raise ValueError(
            f"batch size {config.batch_size} exceeds the "
            f"{len(dataset.train_labels)} training images"
        )
    total_steps = steps_per_epoch * config.epochs
    optimizer = make_optimizer(
        config.optimizer, config.lr, schedule=config.schedule, total_steps=total_steps
    )
    params, static = eqx.partition(model, eqx.is_array)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    cache_key = dataclasses.replace(config, seed=0)
    if cache_key not in cache:
        cache[cache_key] = _Shared(
            make_chunk_fn(fwdeqx.make_step(objective, optimizer, estimator), static),
            {},
            make_evaluate(
                static,
                to_float(dataset.val_images, layout=layout, standardize=standardize),
                np.asarray(dataset.val_labels),
            ),
            make_evaluate(
                static,
                to_float(dataset.train_images, layout=layout, standardize=standardize),
                np.asarray(dataset.train_labels),
            ),
        )
    shared: _Shared = cache[cache_key]

    epoch_sizes = chunk_sizes(steps_per_epoch)
    batch_iter = iter(
        batches(
            dataset.train_images,
            dataset.train_labels,
            batch_size=config.batch_size,
            seed=config.seed,
            num_steps=total_steps,
            layout=layout,
            standardize=standardize,
        )
    )
    sizes = epoch_sizes * config.epochs
    chunks = stacked_chunks(batch_iter, sizes)

    history: dict[str, list] = {
        "epoch": [],
        "train_objective": [],
        "test_loss": [],
        "test_acc": [],
        "time": [],
    }
    initial_test_loss, initial_test_acc = shared.evaluate_test(params)
    compile_time = 0.0
    wall = 0.0
    done = 0
    diverged = False
    epoch_values: list[np.ndarray] = []
    bar = progress(total=total_steps, desc=config.method) if progress else None
    try:
        xs, ys = next(chunks)
        for index, size in enumerate(sizes):
            if size not in shared.compiled:
                start = time.perf_counter()
                shared.compiled[size] = shared.chunk_fn.lower(
                    params, opt_state, xs, ys, train_key, jnp.int32(0)
                ).compile()
                compile_time += time.perf_counter() - start
            start = time.perf_counter()
            params, opt_state, values = shared.compiled[size](
                params, opt_state, xs, ys, train_key, jnp.int32(done)
            )
            if index + 1 < len(sizes):
                xs, ys = next(chunks)  # overlaps with the device computing this chunk
            values = np.asarray(values)
            wall += time.perf_counter() - start
            done += size
            epoch_values.append(values)
            if bar is not None:
                bar.update(size)
            if not np.all(np.isfinite(values)):
                diverged = True
                break
            if done % steps_per_epoch == 0:
                test_loss, test_acc = shared.evaluate_test(params)
                history["epoch"].append(done // steps_per_epoch)
                history["train_objective"].append(
                    float(np.mean(np.concatenate(epoch_values)))
                )
                history["test_loss"].append(finite_or_none(test_loss))
                history["test_acc"].append(test_acc)
                history["time"].append(wall)
                epoch_values = []
                if bar is not None:
                    bar.set_postfix(
                        epoch=done // steps_per_epoch, test_acc=f"{test_acc:.4f}"
                    )
    finally:
        if bar is not None:
            bar.close()

    test_loss, test_acc = shared.evaluate_test(params)
    train_loss, train_acc = shared.evaluate_train(params)
    return {
        "run_id": config.run_id,
        "config": dataclasses.asdict(config),
        "dataset": dataset_info(dataset),
        "method": config.method,
        "model": config.model,
        "seed": config.seed,
        "epochs": config.epochs,
        "steps": done,
        "initial_test_loss": finite_or_none(initial_test_loss),
        "initial_test_acc": initial_test_acc,
        "history": history,
        "test_loss": finite_or_none(test_loss),
        "test_acc": test_acc,
        "train_loss": finite_or_none(train_loss),
        "train_acc": train_acc,
        "num_params": int(
            sum(
                x.size for x in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))
            )
        ),
        "wall_s": wall,
        "compile_s": compile_time,
        "diverged": diverged,
    }
