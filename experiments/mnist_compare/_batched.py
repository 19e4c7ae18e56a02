"""Several runs of one grid cell trained as one batched computation.

A cell is the runs that share everything but the seed and the learning rate: same
model, optimizer, estimator, iterations and record interval. Their models,
optimizer states, keys, learning rates and batches are stacked on a leading
"member" axis, and one `eqx.filter_vmap`-ed step runs inside the same `lax.scan`
chunks as a single run (`runner.train_chunks`).

What a member sees is what its run sees alone: the initial model and tangent key
from `key(seed)`, its seed's batch order (`fwdeqx.data.batches`), step `i`'s key
`fold_in(key, i)`, its own learning rate. Batched arithmetic may round differently
from the unbatched one (XLA picks other kernels for batched matmuls), so a member
agrees with its single run to float rounding, not bit for bit.

Divergence is detected per member with the single run's rule. Inside a chunk a
member whose loss goes bad is frozen (its parameters and optimizer state stop
changing); nothing is reduced across members, so its NaNs cannot reach the others.
At the chunk's end it is marked (`diverged_at`) and dropped from the batch; the
others continue without it.
"""

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PyTree

import fwdeqx

from .. import registry, runner
from ._train import (
    CURVES,
    RunConfig,
    _loss,
    chunk_sizes,
    prepare,
    run_chunks,
    run_record,
)


def cell_key(config: RunConfig) -> RunConfig:
    """What the runs of one cell share: the config without seed and lr."""
    return dataclasses.replace(config, seed=0, lr=0.0)


def group_cells(
    configs: list[RunConfig], max_members: int | None = None
) -> list[list[RunConfig]]:
    """`configs` grouped into cells of at most `max_members` runs (`None`: no
    limit), in grid order (a cell stands where its first run stood)."""
    if max_members is None:
        max_members = len(configs) or 1
    if max_members < 1:
        raise ValueError(f"max_members must be at least 1, got {max_members}")
    groups: dict[RunConfig, list[RunConfig]] = {}
    for config in configs:
        groups.setdefault(cell_key(config), []).append(config)
    return [
        members[start : start + max_members]
        for members in groups.values()
        for start in range(0, len(members), max_members)
    ]


def make_batched_chunk_fn(config: RunConfig, static: PyTree) -> Callable:
    """`runner.make_batched_chunk_fn` for the cell of `config`: the optimizer is
    built around each member's (traced) learning rate, so members with different
    learning rates share one program."""
    estimator = registry.make_estimator(config.estimator)
    return runner.make_batched_chunk_fn(
        lambda lr: fwdeqx.make_step(
            _loss, registry.make_optimizer(config.optimizer, lr), estimator
        ),
        static,
    )


@dataclasses.dataclass
class _Member:
    config: RunConfig
    initial: tuple[float, float]
    curves: dict[str, list] = dataclasses.field(
        default_factory=lambda: runner.new_curves(CURVES)
    )
    train_time: float = 0.0
    compile_time: float = 0.0
    diverged_at: int | None = None


def _member_chunks(
    configs: list[RunConfig], dataset: Any
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Each member's chunk of batches, stacked on axis 1 (members that share a
    seed share its batches, which are made once)."""
    seeds = sorted({config.seed for config in configs})
    by_seed = {
        seed: run_chunks(dataclasses.replace(configs[0], seed=seed), dataset)
        for seed in seeds
    }
    for _ in chunk_sizes(configs[0]):
        chunk = {seed: next(stream) for seed, stream in by_seed.items()}
        yield (
            np.stack([chunk[c.seed][0] for c in configs], axis=1),
            np.stack([chunk[c.seed][1] for c in configs], axis=1),
        )


@runner.under_standard_promotion
def train_cell(
    configs: list[RunConfig],
    dataset: Any,
    *,
    progress: bool = False,
    cache: runner.Cache | None = None,
) -> list[dict[str, Any]]:
    """Train the runs of one cell together; return their records, in order.

    **Arguments:** as `_train.train_run`, with `configs` the runs of one cell
    (`group_cells`).

    **Returns:**

    One `runs.jsonl` record per config, as `train_run` writes it. A member's
    `time` and `train_time` are its share of the cell's wall time (each chunk's
    time divided by the members computed in it); the compile time is the first
    member's.
    """
    if not configs:
        raise ValueError("train_cell: no runs given")
    if len({cell_key(c) for c in configs}) != 1:
        raise ValueError("train_cell: the configs differ in more than seed and lr")
    cache = runner.Cache() if cache is None else cache
    prepared = [prepare(c, dataset, cache) for c in configs]
    first = prepared[0]
    members = [
        _Member(c, p.evaluate(p.training.carry[0]))
        for c, p in zip(configs, prepared, strict=True)
    ]
    program = cache.program(
        ("batched", cell_key(configs[0])),
        lambda: make_batched_chunk_fn(configs[0], first.static),
    )
    carry = (
        runner.stack([p.training.carry[0] for p in prepared]),
        runner.stack([p.training.carry[1] for p in prepared]),
        jnp.ones(len(configs), bool),
        jnp.full(len(configs), jnp.inf, jnp.float32),
    )
    consts = (
        jnp.asarray([c.lr for c in configs], jnp.float32),
        jnp.stack([p.training.consts for p in prepared]),
    )
    # `members` of the training: the runs still in the batch.
    training = runner.Training(program, carry, consts, members=np.arange(len(configs)))
    c = configs[0]
    description = f"{c.optimizer}-{c.estimator}, {len(configs)} runs batched"
    chunks = _member_chunks(configs, dataset)
    with runner.progress_bar(progress, total=c.iterations, desc=description) as bar:
        for chunk in runner.train_chunks(training, chunks, chunk_sizes(c)):
            active = training.members
            members[active[0]].compile_time += chunk.compile_seconds
            _record_chunk(chunk, training, [members[m] for m in active], first)
            survivors = np.flatnonzero([members[m].diverged_at is None for m in active])
            bar.update(chunk.size)
            bar.set_postfix(alive=f"{len(survivors)}/{len(configs)}")
            if len(survivors) == 0:
                break
            if len(survivors) < len(active):
                training.carry, training.consts = runner.take(
                    (training.carry, training.consts), survivors
                )
                training.members = active[survivors]
    return [
        run_record(
            member.config,
            dataset,
            initial=member.initial,
            curves=member.curves,
            compile_time=member.compile_time,
            train_time=member.train_time,
            diverged_at=member.diverged_at,
        )
        for member in members
    ]


def _record_chunk(
    chunk: runner.Chunk, training: runner.Training, active: list, first: Any
) -> None:
    """Each active member's share of the chunk's time, and its divergence or its
    record point."""
    share = chunk.seconds / len(active)
    thresholds = np.asarray(training.carry[3])
    for column, member in enumerate(active):
        member.train_time += share
        losses = chunk.losses[:, column]
        bad = runner.first_divergent_step(losses, thresholds[column])
        if bad is not None:
            member.diverged_at = training.done - chunk.size + bad + 1
            continue
        evaluation = first.evaluate(runner.take(training.carry[0], column))
        runner.add_point(
            member.curves, training.done, losses, evaluation, member.train_time
        )


def auto_max_members(backend: str | None = None) -> int | None:
    """Runs per batch for `--batch-runs auto`: 1 (one at a time) on CPU, where
    batching measured slower (benchmarks/batched.py, docs/mnist.md); on an
    accelerator `None`, a whole cell per batch."""
    return 1 if (backend or jax.default_backend()) == "cpu" else None
