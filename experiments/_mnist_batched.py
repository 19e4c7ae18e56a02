"""Several runs of one grid cell trained as one batched computation.

A cell is the runs that share everything but the seed and the learning rate: same
model, optimizer, estimator, iterations and record interval. Their models,
optimizer states, keys, learning rates and batches are stacked on a leading
"member" axis, and one `eqx.filter_vmap`-ed step runs inside the same `lax.scan`
chunks as a single run (`_mnist_train`).

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
import time
from collections.abc import Callable, Iterator
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, PyTree

import fwdeqx

from . import _registry
from ._mnist_train import (
    DIVERGENCE_FACTOR,
    RunConfig,
    _loss,
    _prepare,
    add_point,
    chunk_sizes,
    first_divergent_step,
    new_curves,
    run_chunks,
    run_record,
)
from ._runs import under_standard_promotion


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
    """`chunk(params, opt_state, alive, threshold, lrs, xs, ys, keys, start)`: the
    batched counterpart of `_runs.make_chunk_fn`. Every array has a leading member
    axis (`xs`, `ys` after the step axis). A member whose loss is non-finite or
    above its `threshold` is frozen from that step on (`alive` turns false); the
    threshold is set at step 0 from the first loss, as for a single run.

    Returns `(params, opt_state, alive, threshold, losses)`, losses `(steps,
    members)`."""
    estimator = _registry.make_estimator(config.estimator)

    def member_step(params, opt_state, lr, x, y, key):
        # The optimizer is built around the member's (traced) learning rate, so
        # members with different learning rates share one program.
        step = fwdeqx.make_step(
            _loss, _registry.make_optimizer(config.optimizer, lr), estimator
        )
        model = eqx.combine(params, static)
        model, opt_state, loss = step(model, opt_state, (x, y), key)
        return eqx.filter(model, eqx.is_array), opt_state, loss

    def chunk(
        params: PyTree,
        opt_state: Any,
        alive: Bool[Array, " members"],
        threshold: Float[Array, " members"],
        lrs: Float[Array, " members"],
        xs: Float[Array, "steps members ..."],
        ys: Int[Array, "steps members batch"],
        keys: PRNGKeyArray,
        start: Int[Array, ""],
    ):
        def body(carry, inputs):
            params, opt_state, alive, threshold = carry
            x, y, index = inputs
            step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, index)
            new_params, new_state, losses = eqx.filter_vmap(member_step)(
                params, opt_state, lrs, x, y, step_keys
            )
            first = (index == 0) & jnp.isfinite(losses)
            threshold = jnp.where(first, DIVERGENCE_FACTOR * losses, threshold)
            alive = alive & jnp.isfinite(losses) & (losses <= threshold)

            def keep(new, old):
                mask = alive.reshape(alive.shape + (1,) * (new.ndim - 1))
                return jnp.where(mask, new, old)

            params = jax.tree.map(keep, new_params, params)
            opt_state = jax.tree.map(keep, new_state, opt_state)
            return (params, opt_state, alive, threshold), losses

        indices = start + jnp.arange(xs.shape[0], dtype=start.dtype)
        carry, losses = jax.lax.scan(
            body, (params, opt_state, alive, threshold), (xs, ys, indices)
        )
        return (*carry, losses)

    return jax.jit(chunk, donate_argnums=(0, 1))


def _stack(trees: list[PyTree]) -> PyTree:
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _take(tree: PyTree, indices: np.ndarray | int) -> PyTree:
    return jax.tree.map(lambda leaf: leaf[indices], tree)


@dataclasses.dataclass
class _Member:
    config: RunConfig
    initial: tuple[float, float]
    curves: dict[str, list] = dataclasses.field(default_factory=new_curves)
    train_time: float = 0.0
    compile_time: float = 0.0
    diverged_at: int | None = None


def _member_chunks(
    configs: list[RunConfig], dataset: Any, batches: Callable[..., Iterator], layout
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Each member's chunk of batches, stacked on axis 1 (members that share a
    seed share its batches, which are made once)."""
    seeds = sorted({config.seed for config in configs})
    by_seed = {
        seed: run_chunks(
            dataclasses.replace(configs[0], seed=seed), dataset, batches, layout
        )
        for seed in seeds
    }
    for _ in chunk_sizes(configs[0]):
        chunk = {seed: next(stream) for seed, stream in by_seed.items()}
        yield (
            np.stack([chunk[c.seed][0] for c in configs], axis=1),
            np.stack([chunk[c.seed][1] for c in configs], axis=1),
        )


@under_standard_promotion
def train_cell(
    configs: list[RunConfig],
    dataset: Any,
    *,
    batches: Callable[..., Iterator],
    to_float: Callable[..., np.ndarray],
    progress: Callable[..., Any] | None = None,
    cache: dict | None = None,
) -> list[dict[str, Any]]:
    """Train the runs of one cell together; return their records, in order.

    **Arguments:** as `_mnist_train.train_run`, with `configs` the runs of one
    cell (`group_cells`).

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
    cache = {} if cache is None else cache
    prepared = [_prepare(c, dataset, to_float, cache) for c in configs]
    first = prepared[0]
    pairs = zip(configs, prepared, strict=True)
    members = [_Member(c, p.evaluate(p.params)) for c, p in pairs]
    params = _stack([p.params for p in prepared])
    opt_state = _stack([p.opt_state for p in prepared])
    keys = jnp.stack([p.train_key for p in prepared])
    lrs = jnp.asarray([c.lr for c in configs], jnp.float32)
    alive = jnp.ones(len(configs), bool)
    threshold = jnp.full(len(configs), jnp.inf, jnp.float32)
    active = np.arange(len(configs))  # members still in the batch

    fn_key = ("batched", cell_key(configs[0]))
    if fn_key not in cache:
        cache[fn_key] = (make_batched_chunk_fn(configs[0], first.static), {})
    chunk_fn, compiled = cache[fn_key]

    def compile_for(*arguments) -> Any:
        shape = (arguments[5].shape[0], len(active))
        if shape not in compiled:
            start = time.perf_counter()
            compiled[shape] = chunk_fn.lower(*arguments).compile()
            members[active[0]].compile_time += time.perf_counter() - start
        return compiled[shape]

    sizes = chunk_sizes(configs[0])
    chunks = _member_chunks(configs, dataset, batches, first.layout)
    c = configs[0]
    description = f"{c.optimizer}-{c.estimator}, {len(configs)} runs batched"
    bar = progress(total=configs[0].iterations, desc=description) if progress else None
    done = 0
    xs, ys = next(chunks)
    for index, size in enumerate(sizes):
        arguments = (params, opt_state, alive, threshold, lrs, xs[:, active],
                     ys[:, active], keys, jnp.int32(done))  # fmt: skip
        run = compile_for(*arguments)
        start = time.perf_counter()
        params, opt_state, alive, threshold, losses = run(*arguments)
        if index + 1 < len(sizes):
            xs, ys = next(chunks)  # overlaps with the device computing this chunk
        losses = np.asarray(losses)
        share = (time.perf_counter() - start) / len(active)
        done += size

        thresholds = np.asarray(threshold)
        for column, member_index in enumerate(active):
            member = members[member_index]
            member.train_time += share
            bad = first_divergent_step(losses[:, column], thresholds[column])
            if bad is not None:
                member.diverged_at = done - size + bad + 1
                continue
            evaluation = first.evaluate(_take(params, column))
            add_point(member.curves, done, losses[:, column], evaluation,
                      member.train_time)  # fmt: skip
        survivors = np.flatnonzero([members[m].diverged_at is None for m in active])
        if bar is not None:
            bar.update(size)
            bar.set_postfix(alive=f"{len(survivors)}/{len(configs)}")
        if len(survivors) == 0:
            break
        if len(survivors) < len(active):
            params, opt_state, alive, threshold, keys, lrs = _take(
                (params, opt_state, alive, threshold, keys, lrs), survivors
            )
            active = active[survivors]
    if bar is not None:
        bar.close()
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


def auto_max_members(backend: str | None = None) -> int | None:
    """Runs per batch for `--batch-runs auto`: 1 (one at a time) on CPU, where
    batching measured slower (benchmarks/batched.py, docs/mnist.md); on an
    accelerator `None`, a whole cell per batch."""
    return 1 if (backend or jax.default_backend()) == "cpu" else None
