"""One training run of the MNIST comparison: model, estimator, optimizer, seed.

The runner's loop (`runner.train_chunks`) runs `eval_every` steps per chunk (one
compile per configuration); after each chunk the run evaluates on the whole
validation split. Wall time counts the training chunks (data loading included), not
compilation or evaluation.
"""

import dataclasses
import math
import time
from typing import Any

import equinox as eqx
import jax
import numpy as np
from jaxtyping import Array, Float

from fwdeqx import models

from .. import registry, runner


CURVES = ("iteration", "train_loss", "val_loss", "val_accuracy", "time")
"""A run record's curves, one point per `eval_every` steps (`runner.add_point`)."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything that determines one run's numbers."""

    dataset: str
    model: str
    optimizer: str
    lr: float
    estimator: str
    seed: int
    iterations: int
    eval_every: int
    batch_size: int = 64
    data: str = ""
    """The data's identity, `data_identity(dataset)`: sizes and content fingerprint.
    Part of `run_id` when set, so a resume never counts runs made on other data."""

    @property
    def run_id(self) -> str:
        data = f"-{self.data}" if self.data else ""
        return (
            f"{self.dataset}{data}-{self.model}-{self.optimizer}-lr{self.lr:g}-"
            f"{self.estimator}-n{self.iterations}-e{self.eval_every}-"
            f"b{self.batch_size}-seed{self.seed}"
        )

    @property
    def label(self) -> str:
        """A short name for progress lines: optimizer, lr, estimator, seed."""
        return f"{self.optimizer} {self.lr:g} {self.estimator} seed {self.seed}"

    @property
    def configuration(self) -> tuple[str, float, str]:
        """The (optimizer, lr, estimator) a run belongs to; seeds are its repeats."""
        return (self.optimizer, self.lr, self.estimator)

    def layout(self) -> str:
        return "image" if self.model == "cnn" else "flat"


def _loss(model: eqx.Module, batch: tuple[Array, Array]) -> Float[Array, ""]:
    return models.cross_entropy(model, *batch)


@dataclasses.dataclass
class Prepared:
    """One run's initial state and what its configuration shares with its seeds."""

    training: runner.Training
    static: Any
    evaluate: runner.Evaluate


def prepare(config: RunConfig, dataset: Any, cache: runner.Cache) -> Prepared:
    """Initial model and optimizer state of `config`, and its jitted chunk and
    evaluation (shared through `cache` by the seeds of one configuration).

    One key per seed, split once: the model's initialisation and the tangents come
    from `key(seed)`, the batch order from `seed` (fwdeqx.data.batches), so two
    seeds share nothing random."""
    from fwdeqx import data

    layout = config.layout()
    model_key, train_key = jax.random.split(jax.random.key(config.seed))
    model = registry.MODELS[config.model](key=model_key)
    step = runner.make_train_step(
        _loss,
        registry.make_optimizer(config.optimizer, config.lr),
        registry.make_estimator(config.estimator),
    )
    params, static = eqx.partition(model, eqx.is_array)
    # Different seeds differ only in array leaves, so `static` is shared.
    shared = dataclasses.replace(config, seed=0)
    program = cache.program(shared, lambda: runner.make_chunk_fn(step, static))
    evaluate = cache.evaluation(
        shared,
        lambda: runner.make_evaluate(
            static,
            data.to_float(dataset.val_images, layout=layout),
            np.asarray(dataset.val_labels),
        ),
    )
    training = runner.Training(program, (params, step.init(model)), train_key)
    return Prepared(training, static, evaluate)


@dataclasses.dataclass
class Progress:
    """A run's record so far: what a checkpoint keeps beside the arrays."""

    initial: tuple[float, float] | list[float]
    curves: dict[str, list]
    compile_time: float = 0.0
    train_time: float = 0.0
    threshold: float = math.inf
    diverged_at: int | None = None


@runner.under_standard_promotion
def train_run(
    config: RunConfig,
    dataset: Any,
    *,
    progress: bool = False,
    cache: runner.Cache | None = None,
    checkpointing: runner.Checkpointing | None = None,
) -> dict[str, Any]:
    """Train one run and return its record for `runs.jsonl`.

    **Arguments:**

    - `config`: the run.
    - `dataset`: a `fwdeqx.data.Dataset`.
    - `progress`: whether to show a progress bar.
    - `cache`: shared by the runs of a grid, so that the seeds of one
        configuration reuse its compiled chunk and evaluation (one compile per
        configuration; the later seeds record a compile time of 0).
    - `checkpointing`: save the run's state as it goes, and resume from its last
        checkpoint (`None`: no checkpoints).

    **Returns:**

    A JSON-ready dict: the curves (one point per `eval_every` steps: mean training
    loss over the window, validation loss and accuracy, cumulative training wall
    time), the validation loss and accuracy before training, compile time, final
    validation loss and accuracy, and the divergence flag with the iteration where
    the run stopped.
    """
    prepared = prepare(config, dataset, runner.Cache() if cache is None else cache)
    training = prepared.training
    sizes = chunk_sizes(config)
    chunks = run_chunks(config, dataset)
    checkpoints = runner.run_checkpoints(checkpointing, config)
    sizes, saved = checkpoints.restore(training, chunks, sizes)
    if saved is None:
        state = Progress(
            prepared.evaluate(training.carry[0]), runner.new_curves(CURVES)
        )
    else:
        state = Progress(**saved)
    with runner.progress_bar(
        progress and runner.is_writer(),
        total=config.iterations,
        initial=training.done,
        desc=config.label,
    ) as bar:
        for chunk in runner.train_chunks(training, chunks, sizes):
            state.compile_time += chunk.compile_seconds
            state.train_time += chunk.seconds
            losses = chunk.losses
            if training.done == chunk.size and math.isfinite(float(losses[0])):
                state.threshold = runner.DIVERGENCE_FACTOR * float(losses[0])
            bad = runner.first_divergent_step(losses, state.threshold)
            if bad is not None:
                state.diverged_at = training.done - chunk.size + bad + 1
                bar.update(bad + 1)
                bar.set_postfix_str("diverged")
                break
            evaluation = prepared.evaluate(training.carry[0])
            runner.add_point(
                state.curves, training.done, losses, evaluation, state.train_time
            )
            bar.update(chunk.size)
            bar.set_postfix(loss=f"{float(losses[-1]):.4f}", val=f"{evaluation[0]:.4f}")
            if checkpoints.due(training.done):
                checkpoints.save(training, dataclasses.asdict(state))
    checkpoints.save(training, dataclasses.asdict(state), final=True)
    return run_record(
        config,
        dataset,
        initial=(state.initial[0], state.initial[1]),
        curves=state.curves,
        compile_time=state.compile_time,
        train_time=state.train_time,
        diverged_at=state.diverged_at,
    )


def chunk_sizes(config: RunConfig) -> list[int]:
    """Steps per chunk: `eval_every` each, the remainder last."""
    sizes = [config.eval_every] * (config.iterations // config.eval_every)
    if config.iterations % config.eval_every:
        sizes.append(config.iterations % config.eval_every)
    return sizes


def run_chunks(
    config: RunConfig, dataset: Any, num_steps: int | None = None
) -> runner.StackedChunks:
    """The run's batches (its seed's order; this process's share of each with
    several processes), stacked one chunk at a time; the first `num_steps` only
    when given, as one chunk."""
    from fwdeqx import data

    batch_iter = data.batches(
        dataset.train_images,
        dataset.train_labels,
        batch_size=config.batch_size,
        seed=config.seed,
        num_steps=num_steps or config.iterations,
        layout=config.layout(),
        shard_options=runner.shard_options(),
    )
    sizes = [num_steps] if num_steps else chunk_sizes(config)
    return runner.StackedChunks(batch_iter, sizes)


def run_record(
    config: RunConfig,
    dataset: Any,
    *,
    initial: tuple[float, float],
    curves: dict[str, list],
    compile_time: float,
    train_time: float,
    diverged_at: int | None,
) -> dict[str, Any]:
    """A finished run as one JSON-ready line of `runs.jsonl`."""
    diverged = diverged_at is not None
    return {
        "run_id": config.run_id,
        "config": dataclasses.asdict(config),
        "dataset": dataset.name,
        "initial_val_loss": runner.finite_or_none(initial[0]),
        "initial_val_accuracy": initial[1],
        **curves,
        "compile_time": compile_time,
        "train_time": train_time,
        "final_val_loss": None if diverged else curves["val_loss"][-1],
        "final_val_accuracy": None if diverged else curves["val_accuracy"][-1],
        "diverged": diverged,
        "diverged_at": diverged_at,
    }


@runner.under_standard_promotion
def measure_step_times(
    configs: list[RunConfig],
    dataset: Any,
    *,
    cache: runner.Cache | None = None,
    rounds: int = 7,
) -> dict[str, dict[str, Any]]:
    """Per-step training time of each configuration, measured interleaved.

    Each configuration runs `rounds` chunks of `config.eval_every` steps (its own
    compiled chunk, from its initial state, on the first batches of seed 0); the
    rounds go round-robin over the configurations, starting one further each round,
    so a burst of machine load hits every configuration alike. The step time is the
    median over rounds of (chunk wall time / steps).

    **Returns:**

    `{step_time_key(config): {"step_time": seconds, "rounds": [seconds, ...],
    "steps": N}}`.
    """
    cache = runner.Cache() if cache is None else cache
    states = []
    for config in configs:
        prepared = prepare(config, dataset, cache)
        seed0 = dataclasses.replace(config, seed=0)
        xs, ys = next(run_chunks(seed0, dataset, config.eval_every))
        training = prepared.training
        arguments = training.arguments(xs, ys)
        compiled, _ = training.program.compile(*arguments)
        # One untimed chunk: the first call of a compiled function pays for
        # allocations the others do not.
        carry, _ = jax.block_until_ready(compiled(*arguments))
        states.append([config, compiled, carry, arguments[1:], []])
    for round_index in range(rounds):
        shift = round_index % len(states)
        for entry in states[shift:] + states[:shift]:
            config, compiled, carry, inputs, times = entry
            start = time.perf_counter()
            entry[2], _ = jax.block_until_ready(compiled(carry, *inputs))
            times.append((time.perf_counter() - start) / config.eval_every)
    return {
        step_time_key(config): {
            "step_time": float(np.median(times)),
            "rounds": times,
            "steps": config.eval_every,
        }
        for config, *_, times in states
    }


def step_time_key(config: RunConfig | dict[str, Any]) -> str:
    """`optimizer/estimator`: what a step's cost depends on (not the lr or seed)."""
    c = config if isinstance(config, dict) else dataclasses.asdict(config)
    return f"{c['optimizer']}/{c['estimator']}"
