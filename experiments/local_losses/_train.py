"""One training run of the local-losses experiment: model, method, optimizer, seed.

A *method* is an objective and an estimator (`registry.METHODS`, Ren et al. 2023,
Table 3). Every method trains the same `fl.LocalNetwork` (the global objective
ignores the local heads except the last one, which is the network's output);
accuracy is always that of the network's final output `model(x)`.

The runner's loop (`runner.train_chunks`) runs the steps of an epoch in chunks of at
most `CHUNK_STEPS` steps (one compile per chunk length and configuration, shared by
the seeds); the whole test split is evaluated after every epoch. `wall_s` counts the
training chunks (data loading included), not compilation or evaluation.

Losses are on one scale for every method: the training curve
(`history["train_loss_per_head"]`) is the training objective divided by the number
of heads it counts, i.e. the end-to-end training loss for the end-to-end methods
and the mean block loss for the local ones; `test_loss` is the network output's;
each block's own head loss on the test split is a separate record,
`test_head_losses` (one list per epoch).

At the same points (before training and after every epoch) the run records each
perturbation site's gradient alignment (`fl.alignment`, `alignment` in the record):
the cosine of the method's estimate of the site's parameters to the exact gradient
of its objective and to the end-to-end gradient, on a fixed batch of
`ALIGNMENT_BATCH` training images (`alignment_batch`) with `ALIGNMENT_KEYS` fixed
keys per point. Its time is not part of `wall_s`.
"""

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import fwdeqx.local as fl

from .. import registry, runner
from ._settings import ALIGNMENT_KEYS


CHUNK_STEPS = 200
ALIGNMENT_BATCH = 256
# `fold_in(key(seed), ALIGNMENT_STREAM)`: the alignment's keys, the same at every
# evaluation point of a run and apart from its initialisation and tangents.
ALIGNMENT_STREAM = 0xA11C


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
    tangents: str = "gaussian"  # `registry.TANGENTS`; unused by the exact methods

    @property
    def run_id(self) -> str:
        return (
            f"{self.dataset}-{self.data}-{self.model}-{arch_tag(self.arch)}-"
            f"{self.method}-k{self.num_tangents}{self._tangents_tag}-"
            f"{self.optimizer}-lr{self.lr:g}-"
            f"{self.schedule}-"
            f"b{self.batch_size}-e{self.epochs}-seed{self.seed}"
        )

    @property
    def _tangents_tag(self) -> str:
        # Gaussian, the default, is unnamed, so run ids from before the choice
        # existed stay valid.
        return "" if self.tangents == "gaussian" else f"-{self.tangents}"

    def layout(self) -> str:
        return "flat" if self.model == "mlp" else "image"


def arch_tag(arch: tuple[tuple[str, Any], ...]) -> str:
    """A short readable tag of the architecture, e.g. `w1024-d3-g1`."""
    short = {
        "width": "w",
        "depth": "d",
        "channels": "c",
        "groups": "g",
        "patch": "p",
        "locations": "loc",
    }
    parts = []
    for name, value in arch:
        if isinstance(value, tuple):
            text = "x".join(map(str, value))
        else:
            text = str(int(value)) if isinstance(value, bool) else str(value)
        parts.append(f"{short.get(name, name)}{text}")
    return "-".join(parts)


def chunk_sizes(steps_per_epoch: int, chunk_steps: int = CHUNK_STEPS) -> list[int]:
    """An epoch cut into near-equal chunks of at most `chunk_steps` steps (at most
    two distinct lengths, so at most two compiles)."""
    count = math.ceil(steps_per_epoch / chunk_steps)
    base, extra = divmod(steps_per_epoch, count)
    return [base + 1] * extra + [base] * (count - extra)


@dataclasses.dataclass
class Progress:
    """A run's record so far: what a checkpoint keeps beside the arrays."""

    initial: tuple[float, float] | list[float]
    history: dict[str, list]
    compile_time: float = 0.0
    wall: float = 0.0
    diverged: bool = False
    epoch_losses: list[float] = dataclasses.field(default_factory=list)
    """The training objectives of the current epoch so far."""
    test_head_losses: list[list[float]] = dataclasses.field(default_factory=list)
    """Each block's head loss on the test split, after each epoch."""
    alignment: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """Per evaluation point (epoch 0, 1, ...), each site's alignment."""
    alignment_sites: list[dict[str, int]] = dataclasses.field(default_factory=list)
    """The perturbation sites, in forward order: `{"block": b, "site": i}`."""

    def add_alignment(self, epoch: int, layers: list[fl.LayerAlignment]) -> None:
        """Record `layers` (`fl.alignment`'s result; empty on processes other than
        0) as the point of `epoch`."""
        if not layers:
            return
        self.alignment_sites = [{"block": a.block, "site": a.site} for a in layers]
        self.alignment.append(
            {
                "epoch": epoch,
                "objective": [float(a.objective) for a in layers],
                "end_to_end": [float(a.end_to_end) for a in layers],
            }
        )


@runner.under_standard_promotion
def train_run(
    config: RunConfig,
    dataset: Any,
    *,
    progress: bool = False,
    cache: runner.Cache | None = None,
    standardize: tuple[float, float] | bool = False,
    checkpointing: runner.Checkpointing | None = None,
    alignment_keys: int = ALIGNMENT_KEYS,
) -> dict[str, Any]:
    """Train one run and return its record for `runs.jsonl`.

    **Arguments:**

    - `config`: the run.
    - `dataset`: a `fwdeqx.data.Dataset` (its validation split is the test set).
    - `progress`: whether to show a progress bar.
    - `cache`: shared by the runs of a grid (one compile per configuration).
    - `standardize`: the input scaling, as in `fwdeqx.data.batches`.
    - `checkpointing`: save the run's state as it goes, and resume from its last
        checkpoint (`None`: no checkpoints).
    - `alignment_keys`: keys per alignment point (0: no alignment is recorded).

    **Returns:**

    A JSON-ready dict: the per-epoch history (mean training objective, test loss
    and accuracy, cumulative training wall time), the final test loss and accuracy,
    the accuracy on the whole training set, compile and wall times, and whether the
    run diverged (a non-finite training objective).

    One key per seed, split once: the initialisation and the tangents come from
    `key(seed)`, the batch order from `seed` (fwdeqx.data.batches).
    """
    from fwdeqx import data

    cache = runner.Cache() if cache is None else cache
    layout = config.layout()
    model_key, train_key = jax.random.split(jax.random.key(config.seed))
    shape = dataset.train_images.shape[1:]
    image = (1, *shape) if len(shape) == 2 else tuple(shape)
    model = registry.make_local_network(
        config.model, dict(config.arch), image=image, key=model_key
    )
    objective, estimator = registry.make_method(
        config.method, config.num_tangents, config.tangents
    )
    steps_per_epoch = len(dataset.train_labels) // config.batch_size
    if steps_per_epoch < 1:
        raise ValueError(
            f"batch size {config.batch_size} exceeds the "
            f"{len(dataset.train_labels)} training images"
        )
    total_steps = steps_per_epoch * config.epochs
    optimizer = registry.make_optimizer(
        config.optimizer, config.lr, schedule=config.schedule, total_steps=total_steps
    )
    params, static = eqx.partition(model, eqx.is_array)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    shared = dataclasses.replace(config, seed=0)
    step = runner.make_train_step(objective, optimizer, estimator)
    program = cache.program(shared, lambda: runner.make_chunk_fn(step, static))

    def evaluator(split: str) -> runner.Evaluate:
        images, labels = getattr(dataset, f"{split}_images"), f"{split}_labels"
        return cache.evaluation(
            (shared, split),
            lambda: runner.make_evaluate(
                static,
                data.to_float(images, layout=layout, standardize=standardize),
                np.asarray(getattr(dataset, labels)),
            ),
        )

    evaluate_test = evaluator("val")
    test_head_losses = cache.evaluation(
        (shared, "head losses"),
        lambda: make_head_losses(
            static,
            data.to_float(dataset.val_images, layout=layout, standardize=standardize),
            np.asarray(dataset.val_labels),
        ),
    )
    alignment_rows = alignment_batch(len(dataset.train_labels))
    alignment = cache.evaluation(
        (shared, "alignment", alignment_keys),
        lambda: make_alignment(
            alignment_keys,
            estimator,
            objective,
            static,
            data.to_float(
                dataset.train_images[alignment_rows],
                layout=layout,
                standardize=standardize,
            ),
            np.asarray(dataset.train_labels[alignment_rows]),
        ),
    )
    alignment_key = jax.random.fold_in(jax.random.key(config.seed), ALIGNMENT_STREAM)
    num_heads = len(objective.heads(model))
    sizes = chunk_sizes(steps_per_epoch) * config.epochs
    batches = data.batches(
        dataset.train_images,
        dataset.train_labels,
        batch_size=config.batch_size,
        seed=config.seed,
        num_steps=total_steps,
        layout=layout,
        standardize=standardize,
        shard_options=runner.shard_options(),
    )
    training = runner.Training(program, (params, opt_state), train_key)
    chunks = runner.StackedChunks(batches, sizes)
    checkpoints = runner.run_checkpoints(checkpointing, config)
    sizes, saved = checkpoints.restore(training, chunks, sizes)
    if saved is None:
        state = Progress(
            evaluate_test(params),
            runner.new_curves(
                ("epoch", "train_loss_per_head", "test_loss", "test_acc", "time")
            ),
        )
        state.add_alignment(0, alignment(params, alignment_key))
    else:
        state = Progress(**saved)
    options = {
        "total": total_steps,
        "initial": training.done,
        "desc": f"{config.method} seed {config.seed}",
        "unit": "step",
    }
    with runner.progress_bar(progress and runner.is_writer(), **options) as bar:
        for chunk in runner.train_chunks(training, chunks, sizes):
            state.compile_time += chunk.compile_seconds
            state.wall += chunk.seconds
            state.epoch_losses += chunk.losses.tolist()
            bar.update(chunk.size)
            if runner.first_divergent_step(chunk.losses, math.inf) is not None:
                state.diverged = True
                break
            if training.done % steps_per_epoch == 0:
                epoch = training.done // steps_per_epoch
                evaluation = evaluate_test(training.carry[0])
                values = np.asarray(state.epoch_losses, np.float32) / num_heads
                runner.add_point(state.history, epoch, values, evaluation, state.wall)
                state.test_head_losses.append(test_head_losses(training.carry[0]))
                state.add_alignment(epoch, alignment(training.carry[0], alignment_key))
                state.epoch_losses = []
                bar.set_postfix(epoch=epoch, test_acc=f"{evaluation[1]:.4f}")
            if checkpoints.due(training.done):
                checkpoints.save(training, dataclasses.asdict(state))
    checkpoints.save(training, dataclasses.asdict(state), final=True)

    params = training.carry[0]
    test_loss, test_acc = evaluate_test(params)
    train_loss, train_acc = evaluator("train")(params)
    return {
        "run_id": config.run_id,
        "config": dataclasses.asdict(config),
        "dataset": runner.dataset_info(dataset, "test"),
        "method": config.method,
        "model": config.model,
        "seed": config.seed,
        "epochs": config.epochs,
        "steps": training.done,
        "initial_test_loss": runner.finite_or_none(state.initial[0]),
        "initial_test_acc": state.initial[1],
        "history": state.history,
        "test_head_losses": state.test_head_losses,
        "alignment": state.alignment,
        "alignment_sites": state.alignment_sites,
        "test_loss": runner.finite_or_none(test_loss),
        "test_acc": test_acc,
        "train_loss": runner.finite_or_none(train_loss),
        "train_acc": train_acc,
        "num_params": int(
            sum(
                x.size for x in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))
            )
        ),
        "wall_s": state.wall,
        "compile_s": state.compile_time,
        "diverged": state.diverged,
    }


def alignment_batch(num_train: int) -> np.ndarray:
    """The rows of the alignment's fixed batch: `ALIGNMENT_BATCH` training images
    drawn once with a fixed seed, the same for every method and seed (the first
    rows would do for shuffled files, but mnist-5k is sorted by label)."""
    rows = np.random.default_rng(0).permutation(num_train)[:ALIGNMENT_BATCH]
    return np.sort(rows)


def make_head_losses(
    static: Any, images: np.ndarray, labels: np.ndarray
) -> Callable[[Any], list[float]]:
    """`head_losses(params) -> [loss of block 0's head, ...]`: each block's head
    loss (`fl.LocalLoss().head_losses`) of the network `eqx.combine(params,
    static)` on a whole split, in batches of `runner.EVAL_BATCH`. With several
    processes, process 0 computes it; the others get `[]` (they write
    nothing)."""
    objective = fl.LocalLoss()
    size = min(runner.EVAL_BATCH, len(labels))

    @jax.jit
    def batch_sums(params, x, y):
        model = eqx.combine(params, static)
        return objective.head_losses(model, x, y) * y.shape[0]

    def head_losses(params: Any) -> list[float]:
        if not runner.is_writer():
            return []
        params = runner.local(params)
        sums = sum(
            np.asarray(batch_sums(params, images[i : i + size], labels[i : i + size]))
            for i in range(0, len(labels), size)
        )
        return [float(v) for v in np.asarray(sums) / len(labels)]

    return head_losses


def make_alignment(
    num_keys: int,
    estimator: Any,
    objective: Any,
    static: Any,
    images: np.ndarray,
    labels: np.ndarray,
) -> Callable[[Any, Any], list[fl.LayerAlignment]]:
    """`alignment(params, key) -> fl.alignment(...)`: each perturbation site's
    alignment (`num_keys` keys split from `key`) of `estimator` on `objective` for
    the network `eqx.combine(params, static)` on the batch `images`, `labels`.
    With several processes, process 0 computes it; the others get `[]` (they write
    nothing), and so does every process when `num_keys` is 0."""
    x, y = jnp.asarray(images), jnp.asarray(labels, jnp.int32)

    def alignment(params: Any, key: Any) -> list[fl.LayerAlignment]:
        if num_keys == 0 or not runner.is_writer():
            return []
        model = eqx.combine(runner.local(params), static)
        return fl.alignment(
            estimator, objective, model, x, y, key=key, num_keys=num_keys
        )

    return alignment
