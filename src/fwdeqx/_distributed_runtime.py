"""Starting JAX's multi-process runtime with bounded waits, and placing a step's
arguments on a mesh that may span several processes."""

import socket
import time
from typing import Any

import equinox as eqx
import jax
import jax.tree_util as jtu
import numpy as np
from jax.core import Tracer
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jaxtyping import PyTree


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    timeout: int = 60,
    heartbeat_timeout: int = 10,
    cpu_collectives: str = "gloo",
) -> None:
    """`jax.distributed.initialize` with bounded waits and clear errors: start the
    multi-process runtime that [`fwdeqx.distributed.make_step`][] runs on. Call it
    once per process, before anything else touches a device.

    With no arguments, JAX finds them itself on SLURM, Open MPI (`mpirun`), Cloud
    TPU and similar clusters. Elsewhere pass all three.

    **Arguments:**

    - `coordinator_address`: `"host:port"` of process 0, which hosts the
        coordinator (on one machine, `"127.0.0.1:PORT"` with a free port).
    - `num_processes`: N, the same on every process.
    - `process_id`: this process's index in `0..N-1`.
    - `timeout`: seconds to wait for the coordinator and the other processes
        before giving up (JAX's `initialization_timeout`).
    - `heartbeat_timeout`: seconds after which a process that stopped answering
        counts as dead; the others then stop with an error naming it rather
        than wait forever (JAX's `heartbeat_timeout_seconds`).
    - `cpu_collectives`: the CPU collectives library, `"gloo"` (JAX's default,
        `"none"`, cannot run a collective across processes); no effect on GPUs
        or TPUs.

    **Raises:**

    `ValueError` for a `process_id` outside `0..num_processes-1` or processes that
    disagree on `num_processes`; `TimeoutError` when the coordinator cannot be
    reached within `timeout` seconds. A peer that never arrives, or dies later,
    makes JAX end this process with a message that another task died, within
    `timeout` (respectively `heartbeat_timeout`) seconds.
    """
    _check_process_arguments(num_processes, process_id)
    if coordinator_address is not None and process_id not in (None, 0):
        _wait_for_coordinator(coordinator_address, timeout)
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(
        coordinator_address,
        num_processes,
        process_id,
        initialization_timeout=timeout,
        heartbeat_timeout_seconds=heartbeat_timeout,
        shutdown_timeout_seconds=timeout,
    )
    if num_processes is not None:
        _check_num_processes(num_processes)


def _check_process_arguments(num_processes: int | None, process_id: int | None) -> None:
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"`num_processes` must be at least 1, got {num_processes}.")
    if (
        num_processes is not None
        and process_id is not None
        and not 0 <= process_id < num_processes
    ):
        raise ValueError(
            f"`process_id` must be in 0..{num_processes - 1} for "
            f"num_processes={num_processes}, got {process_id}."
        )


def _wait_for_coordinator(address: str, timeout: int) -> None:
    """Wait until the coordinator's port accepts connections: JAX itself aborts
    the process (no Python exception) when it cannot reach the coordinator."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"`coordinator_address` must be 'host:port', got {address!r}.")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=1):
                return
        except OSError as error:
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"Could not reach the coordinator at {address} within {timeout} "
                    f"s ({error}). Start process 0 (which hosts the coordinator) "
                    "and check the address, port and firewall."
                ) from error
            time.sleep(0.1)


def _check_num_processes(num_processes: int) -> None:
    """Every process passed the same `num_processes` (the coordinator's count
    wins silently in JAX)."""
    requested = multihost_utils.process_allgather(np.int32(num_processes))
    counts = sorted({int(n) for n in np.ravel(requested)} | {jax.process_count()})
    if counts != [num_processes]:
        per_process = ", ".join(
            f"process {i}: {int(n)}" for i, n in enumerate(np.ravel(requested))
        )
        raise ValueError(
            "The processes disagree on `num_processes` "
            f"({per_process}; the coordinator started {jax.process_count()}). "
            "Pass the same value to every process."
        )


# ------------------------------------------------------------------- placement


def mesh_processes(mesh: Mesh) -> int:
    """How many processes own devices of `mesh`."""
    return len({device.process_index for device in mesh.devices.flat})


def is_global(leaf: Any) -> bool:
    """A `jax.Array` spread over several processes, or a traced value (inside a
    jitted function every array is the global one), as opposed to process-local
    data, which every other array is."""
    if isinstance(leaf, Tracer):
        return True
    return isinstance(leaf, jax.Array) and not leaf.is_fully_addressable


def place(tree: PyTree, sharding: NamedSharding) -> PyTree:
    """Place every array of `tree` as a global array with `sharding`, on one
    process or many: what [`fwdeqx.distributed.make_step`][]'s step does with its
    arguments, for a training loop that places them itself (e.g. a jitted
    `lax.scan` over steps, whose inputs must already be global).

    **Arguments:**

    - `tree`: any pytree; its non-array leaves are returned as they are. A leaf
        that is not yet global is this process's part of the array: its shard of
        a split axis (its rows of the batch), the whole array where `sharding`
        replicates (every process passes the same). PRNG keys are placed like
        other arrays.
    - `sharding`: a `jax.sharding.NamedSharding`, e.g. `NamedSharding(mesh,
        PartitionSpec())` to replicate.

    **Returns:**

    `tree` with global arrays: a no-op for arrays already placed so; another
    sharding of a global array is resharded. Inside a jitted function, where every
    array is already global, the traced values are constrained to `sharding`.
    """
    return jtu.tree_map(
        lambda leaf: _place_array(leaf, sharding) if eqx.is_array(leaf) else leaf,
        tree,
    )


def _place_array(leaf: Any, sharding: NamedSharding) -> jax.Array:
    if isinstance(leaf, Tracer):
        return jax.lax.with_sharding_constraint(leaf, sharding)
    if isinstance(leaf, jax.Array) and leaf.sharding.is_equivalent_to(
        sharding, leaf.ndim
    ):
        return leaf
    if sharding.is_fully_addressable:  # one process
        return jax.device_put(leaf, sharding)
    if is_global(leaf):  # another sharding of the same global array
        return jax.jit(lambda x: x, out_shardings=sharding)(leaf)
    local = leaf if isinstance(leaf, jax.Array) else np.asarray(leaf)
    return jax.make_array_from_process_local_data(sharding, local)
