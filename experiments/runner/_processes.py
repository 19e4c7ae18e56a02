"""The jobs' distributed mode: start JAX's multi-process runtime from the command
line, and lay a run's arrays out over every process's devices.

One run spans all processes: each reads its shard of every global batch (Grain's
`ShardByJaxProcess`), the step is `fwdeqx.distributed.make_step` over a mesh of all
devices, and the parameters, optimizer state and key are replicated. With one
process (the default) none of this applies and a run is exactly what it was.
Only process 0 evaluates, writes files and shows progress (`is_writer`).
"""

import argparse
import os
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec
from jaxtyping import PyTree

import fwdeqx


AXIS = "batch"


def add_process_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that start the multi-process runtime (docs/distributed.md)."""
    group = parser.add_argument_group(
        "several processes (one run spans them all; see docs/distributed.md)"
    )
    group.add_argument(
        "--distributed",
        action="store_true",
        help="start JAX's multi-process runtime; alone, JAX finds the coordinator, "
        "process count and id itself under SLURM (srun) and Open MPI (mpirun); "
        "implied by the next three flags",
    )
    group.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        help="address of process 0, which hosts the coordinator (default: "
        "$JAX_COORDINATOR_ADDRESS); the same on every process",
    )
    group.add_argument(
        "--num-processes", type=int, metavar="N", help="number of processes"
    )
    group.add_argument(
        "--process-id", type=int, metavar="I", help="this process, in 0..N-1"
    )


def processes_requested(args: argparse.Namespace) -> bool:
    """Whether the flags ask for the multi-process runtime."""
    explicit = (args.coordinator, args.num_processes, args.process_id)
    return args.distributed or explicit != (None, None, None)


def start_processes(args: argparse.Namespace) -> None:
    """Start the runtime when the flags ask for it (a no-op otherwise); exit with
    a one-line error when it cannot start. Call before anything touches a
    device."""
    if not processes_requested(args):
        return
    coordinator = args.coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    try:
        fwdeqx.distributed.initialize(coordinator, args.num_processes, args.process_id)
    except (ValueError, TypeError, TimeoutError, RuntimeError) as error:
        raise SystemExit(f"error: cannot start the processes: {error}") from None


def check_batch_split(batch_size: int) -> None:
    """Exit with a one-line error when the global batch cannot be split equally
    over the devices of all processes."""
    devices = jax.device_count()
    if jax.process_count() > 1 and batch_size % devices:
        raise SystemExit(
            f"error: the batch of {batch_size} is split over {devices} devices "
            f"({jax.process_count()} processes), so it must be a multiple of "
            f"{devices}; change --batch-size or the number of processes"
        )


def is_writer() -> bool:
    """Whether this process writes outputs and shows progress: process 0."""
    return jax.process_index() == 0


def say(*values: Any) -> None:
    """`print(*values)` (flushed) on process 0 only."""
    if is_writer():
        print(*values, flush=True)


def train_mesh() -> Mesh | None:
    """The mesh a run spans: every device of every process; `None` with one
    process (a run then stays on its default device, as without this mode)."""
    if jax.process_count() == 1:
        return None
    # Automatic axes: XLA lays out what the step computes, so the types of the
    # chunk's carry do not change from step to step.
    return jax.make_mesh((jax.device_count(),), (AXIS,), axis_types=(AxisType.Auto,))


def shard_options() -> Any:
    """Grain's process sharding for the training batches, `None` with one
    process."""
    import grain

    return None if jax.process_count() == 1 else grain.sharding.ShardByJaxProcess()


def make_train_step(loss: Any, optimizer: Any, estimator: Any) -> Any:
    """`fwdeqx.make_step`, or with several processes the same step data-parallel
    over `train_mesh()`."""
    mesh = train_mesh()
    if mesh is None:
        return fwdeqx.make_step(loss, optimizer, estimator)
    return fwdeqx.distributed.make_step(loss, optimizer, estimator, mesh=mesh)


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """Every array of `tree` (the same on every process) as a global array
    replicated over `mesh`."""
    return fwdeqx.distributed.place(tree, NamedSharding(mesh, PartitionSpec()))


def shard_steps(array: np.ndarray, mesh: Mesh) -> jax.Array:
    """This process's rows of a chunk of batches, `(steps, rows, ...)`, as the
    global `(steps, batch, ...)` array split over `mesh` along the batch axis."""
    sharding = NamedSharding(mesh, PartitionSpec(None, AXIS))
    return fwdeqx.distributed.place(array, sharding)


def local(tree: PyTree) -> PyTree:
    """`tree` with each array spread over processes replaced by this process's
    copy (they are replicated); other leaves as they are."""

    def one(leaf: Any) -> Any:
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            return leaf.addressable_data(0)
        return leaf

    return jax.tree.map(one, tree)


def to_host(tree: PyTree) -> PyTree:
    """`local(tree)` as NumPy arrays, PRNG keys as their key data."""

    def one(leaf: Any) -> Any:
        if not eqx.is_array(leaf):
            return leaf
        if _is_key(leaf):
            leaf = jax.random.key_data(leaf)
        return np.asarray(leaf)

    return jax.tree.map(one, local(tree))


def from_host(tree: PyTree, like: PyTree) -> PyTree:
    """Undo `to_host`: NumPy leaves back to device arrays with the dtypes of
    `like`, keys rewrapped, replicated over `train_mesh()` with several
    processes."""

    def one(leaf: Any, template: Any) -> Any:
        if not eqx.is_array(template):
            return leaf
        if _is_key(template):
            return jax.random.wrap_key_data(leaf, impl=jax.random.key_impl(template))
        return jnp.asarray(leaf)

    restored = jax.tree.map(one, tree, like)
    mesh = train_mesh()
    return restored if mesh is None else replicate(restored, mesh)


def _is_key(leaf: Any) -> bool:
    return jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def agree(value: int, what: str) -> None:
    """Exit with an error unless every process holds the same `value` (a no-op
    with one process)."""
    if jax.process_count() == 1:
        return
    values = np.ravel(multihost_utils.process_allgather(np.int64(value)))
    if len(set(values.tolist())) > 1:
        per_process = ", ".join(f"process {i}: {v}" for i, v in enumerate(values))
        raise SystemExit(
            f"error: the processes disagree on {what} ({per_process}); every "
            "process must see the same --out folder (a shared file system)"
        )
