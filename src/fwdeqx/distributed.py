"""Training steps across several devices and processes, where forward gradients
communicate only scalars.

`make_step(loss, optimizer, estimator, mesh=mesh, parallelism=...)` runs the step of
[`fwdeqx.make_step`][] for the same estimator over the devices of one mesh axis, on
one process or many (after [`fwdeqx.distributed.initialize`][]):

- `parallelism="data"` (default): the batch is split over the devices, and each
  calls the estimator on its shard with the loss averaged over the devices
  (`jax.lax.pmean`), so the estimator's derivatives are all-reduced wherever it
  takes them: K + 1 scalars for a `fwdeqx.ForwardGradient` (any combiner), the
  whole gradient for `fwdeqx.Backprop`, one scalar per evaluation for `fwdeqx.SPSA`.
  Any other estimator, such as `fwdeqx.local.ActivityPerturbation` (which draws a
  tangent per example), runs its single-device step on the global batch,
  partitioned by XLA: each device takes its examples, and the sums over examples,
  the per-layer gradient estimates among them, are all-reduced.
- `parallelism="tangent"`: the K tangents of a `fwdeqx.ForwardGradient` are split
  over the devices; each evaluates its K/D tangents on the whole batch, and one sum
  over devices of K + 1 slots gives every device all the derivatives.

Each device then forms the same gradient from the same tangents (the same key gives
the same tangents everywhere) and applies the same update through the step body of
`fwdeqx.TrainStep`, so the parameters stay replicated and the result equals the
single-device `fwdeqx.make_step` with the same key up to float rounding.

!!! Example

    ```python
    mesh = jax.make_mesh((jax.device_count(),), ("batch",))
    estimator = fwdeqx.ForwardGradient(num_tangents=8)
    step = fwdeqx.distributed.make_step(loss, optax.sgd(1e-3), estimator, mesh=mesh)
    model, opt_state, value = step(model, step.init(model), (x, y), key)
    ```
"""

from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import optax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from ._directional import value_and_derivatives
from ._distributed_runtime import (
    initialize as initialize,
    is_global,
    mesh_processes,
    place as place,
)
from ._estimators import (
    AbstractEstimator,
    Backprop,
    ForwardGradient,
    check_key,
    scalar_function,
)
from ._spsa import SPSA
from ._step import check_estimator, check_optimizer, estimate_and_update
from ._tangents import tree_size


# Estimators whose step is written per device (`jax.shard_map`), with the
# collective each one needs; any other estimator (e.g. `fwdeqx.local`'s, which
# draw a tangent per example) runs as on one device, partitioned by XLA.
_PER_DEVICE_ESTIMATORS = (ForwardGradient, Backprop, SPSA)

Parallelism = Literal["data", "tangent"]
"""What [`fwdeqx.distributed.make_step`][] splits over the devices: `"data"`, the
batch (every estimator), or `"tangent"`, the K tangents of a
`fwdeqx.ForwardGradient`."""
_PARALLELISMS = ("data", "tangent")


class DistributedTrainStep(eqx.Module):
    """One training step spread over the devices of a mesh axis.

    Build it with [`fwdeqx.distributed.make_step`][]. It is called exactly as
    [`fwdeqx.TrainStep`][]: `step(model, opt_state, batch, key) ->
    (model, opt_state, loss)`, and `step.init(model)` gives the optimizer state.
    The returned model and optimizer state are replicated over the mesh. The step
    can also be called inside a jitted function, e.g. a `lax.scan` over steps whose
    arguments are already global arrays: it then constrains them to the mesh
    instead of placing them.
    """

    loss: Callable
    optimizer: optax.GradientTransformation
    estimator: AbstractEstimator
    mesh: Mesh = eqx.field(static=True)
    axis_name: str = eqx.field(static=True)
    parallelism: Parallelism = eqx.field(static=True)

    @property
    def num_devices(self) -> int:
        """D, the number of devices along `axis_name`."""
        return self.mesh.shape[self.axis_name]

    def init(self, model: PyTree) -> optax.OptState:
        """The optimizer state for `model` (its floating-point array leaves)."""
        return self.optimizer.init(eqx.filter(model, eqx.is_inexact_array))

    def __call__(
        self,
        model: PyTree,
        opt_state: optax.OptState,
        batch: Any,
        key: PRNGKeyArray,
    ) -> tuple[PyTree, optax.OptState, Float[Array, ""]]:
        """**Arguments:**

        - `model`: the model (any pytree; its floating arrays are trained).
        - `opt_state`: from `step.init(model)`.
        - `batch`: a pytree of arrays passed to the loss as `loss(model, batch)`.
            With `parallelism="data"` every leaf is split along its leading axis,
            which must be divisible by the number of devices. On several
            processes, each passes its own rows (a NumPy or process-local array)
            or the global `jax.Array`; with `parallelism="tangent"`, each passes
            the whole batch.
        - `key`: PRNG key for the estimator; use a fresh one every step. The same
            key on every device (and every host) gives the same tangents.

        The model, optimizer state and key are placed replicated from each
        process's copy (every process must pass the same ones).

        **Returns:**

        `(model, opt_state, loss)`: the updated model and optimizer state, and the
        full-batch loss at the model *before* the update, as global arrays
        replicated over the mesh.
        """
        return self._jitted_step(*self._place(model, opt_state, batch, key))

    def lower(
        self,
        model: PyTree,
        opt_state: optax.OptState,
        batch: Any,
        key: PRNGKeyArray,
    ) -> jax.stages.Lowered:
        """The step lowered for these arguments, without running it (a
        `jax.stages.Lowered`): call `.compile().as_text()` on the result to read
        the optimised HLO, e.g. to count the bytes its collectives move."""
        arguments = self._place(model, opt_state, batch, key)
        return type(self)._jitted_step.lower(self, *arguments).lowered

    @property
    def _shards_batch(self) -> bool:
        return self.parallelism == "data"

    @property
    def _per_device_step(self) -> bool:
        return isinstance(self.estimator, _PER_DEVICE_ESTIMATORS)

    def _auto_mesh(self) -> Mesh:
        """The mesh with automatic axes: XLA's partitioner lays out what the step
        computes (the caller's mesh may have explicit axes)."""
        names = self.mesh.axis_names
        return Mesh(self.mesh.devices, names, axis_types=(AxisType.Auto,) * len(names))

    def _shardings(self) -> tuple[NamedSharding, NamedSharding]:
        """(replicated, batch) shardings."""
        mesh = self._auto_mesh()
        replicated = NamedSharding(mesh, PartitionSpec())
        split = NamedSharding(mesh, PartitionSpec(self.axis_name))
        return replicated, split if self._shards_batch else replicated

    def _place(
        self, model: PyTree, opt_state: optax.OptState, batch: Any, key: PRNGKeyArray
    ) -> tuple[PyTree, optax.OptState, Any, PRNGKeyArray]:
        """Make every argument a global array: the batch split over the devices as
        the step splits it, everything else replicated. Arrays that are not global
        yet are this process's part (a no-op for arrays already placed so)."""
        check_key(key, "fwdeqx.distributed step")
        if self._shards_batch:
            _check_batch_divisible(
                batch, self.num_devices, self.axis_name, mesh_processes(self.mesh)
            )
        replicated, batch_sharding = self._shardings()
        return (
            place(model, replicated),
            place(opt_state, replicated),
            place(batch, batch_sharding),
            place(key, replicated),
        )

    def _per_device(self) -> tuple[AbstractEstimator, Callable]:
        """The estimator and loss each device runs the step body with."""
        if self.parallelism == "data":
            return self.estimator, _MeanOverDevices(self.loss, self.axis_name)
        assert isinstance(self.estimator, ForwardGradient)
        split = _TangentParallel(self.estimator, self.axis_name, self.num_devices)
        return split, self.loss

    @eqx.filter_jit
    def _jitted_step(
        self,
        model: PyTree,
        opt_state: optax.OptState,
        batch: Any,
        key: PRNGKeyArray,
    ) -> tuple[PyTree, optax.OptState, Float[Array, ""]]:
        if not self._per_device_step:
            return self._partitioned_step(model, opt_state, batch, key)
        model_arrays, model_static = eqx.partition(model, eqx.is_array)
        state_arrays, state_static = eqx.partition(opt_state, eqx.is_array)
        batch_arrays, batch_static = eqx.partition(batch, eqx.is_array)
        estimator, loss = self._per_device()
        new_statics = {}

        def per_device(model_arrays, state_arrays, batch_arrays, key):
            model = eqx.combine(model_arrays, model_static)
            state = eqx.combine(state_arrays, state_static)
            local_batch = eqx.combine(batch_arrays, batch_static)
            model, state, value = estimate_and_update(
                estimator, loss, self.optimizer, model, state, local_batch, key
            )
            model_arrays, new_statics["model"] = eqx.partition(model, eqx.is_array)
            state_arrays, new_statics["state"] = eqx.partition(state, eqx.is_array)
            return model_arrays, state_arrays, jnp.asarray(value)

        replicated = PartitionSpec()
        split = PartitionSpec(self.axis_name)
        batch_spec = split if self._shards_batch else replicated
        model_arrays, state_arrays, value = jax.shard_map(
            per_device,
            mesh=self._auto_mesh(),
            in_specs=(replicated, replicated, batch_spec, replicated),
            out_specs=(replicated, replicated, replicated),
        )(model_arrays, state_arrays, batch_arrays, key)
        model = eqx.combine(model_arrays, new_statics["model"])
        opt_state = eqx.combine(state_arrays, new_statics["state"])
        return model, opt_state, value

    def _partitioned_step(
        self,
        model: PyTree,
        opt_state: optax.OptState,
        batch: Any,
        key: PRNGKeyArray,
    ) -> tuple[PyTree, optax.OptState, Float[Array, ""]]:
        """The single-device step on the global arrays, partitioned by XLA: each
        device works on its examples (with the tangents they get on one device)
        and the results' sums over examples, per-layer gradient estimates
        included, are all-reduced. The model and state come back replicated."""
        model, opt_state, value = estimate_and_update(
            self.estimator, self.loss, self.optimizer, model, opt_state, batch, key
        )
        replicated, _ = self._shardings()
        model, opt_state = _constrain((model, opt_state), replicated)
        return model, opt_state, value


class _MeanOverDevices(eqx.Module):
    """`loss(model, shard)` averaged over the devices: the full-batch loss when the
    loss is a mean over equal shards. Its derivatives, of any order or mode, are
    all-reduced with it."""

    loss: Callable
    axis_name: str = eqx.field(static=True)

    def __call__(self, model: PyTree, batch: Any) -> Float[Array, ""]:
        return jax.lax.pmean(self.loss(model, batch), self.axis_name)


class _TangentParallel(AbstractEstimator):
    """A `ForwardGradient` whose K directions are split over the D devices of
    `axis_name`: each device takes the derivatives along its K/D directions on the
    whole batch, the K derivatives are gathered, and every device combines them
    with all K directions, drawn again from the shared key."""

    estimator: ForwardGradient
    axis_name: str = eqx.field(static=True)
    num_devices: int = eqx.field(static=True)

    def __call__(
        self,
        fun: Callable,
        x: PyTree,
        /,
        *args: Any,
        key: PRNGKeyArray,
        has_aux: bool = False,
        **kwargs: Any,
    ) -> tuple[Any, PyTree]:
        name = "fwdeqx.distributed.make_step"
        fn = scalar_function(fun, args, kwargs, has_aux=has_aux, name=name)
        like = eqx.filter(x, eqx.is_inexact_array)
        num_tangents = self.estimator.num_tangents
        per_device = num_tangents // self.num_devices
        index = jax.lax.axis_index(self.axis_name)
        keys = self.estimator.direction_keys(key)
        local_keys = jax.lax.dynamic_slice_in_dim(keys, index * per_device, per_device)
        local_directions = self.estimator.sample(local_keys, like)
        # The directions differ between devices; typing the model's copy as varying
        # too lets custom jvp rules (`fwdeqx.LowRank`) see matching types.
        varying_x = _to_varying(x, self.axis_name)
        (value, aux), local_derivatives = value_and_derivatives(
            fn, varying_x, local_directions
        )
        # Each device writes its K/D derivatives into a zero vector of K + 1 slots
        # (slot 0 holds the loss, which every device computed on the whole batch;
        # device 0 provides it) and the vectors are summed: adding zeros is exact,
        # and only K + 1 scalars move.
        slots = jnp.zeros(num_tangents + 1, local_derivatives.dtype)
        slots = jax.lax.dynamic_update_slice_in_dim(
            slots, local_derivatives, 1 + index * per_device, axis=0
        )
        own_value = jnp.where(index == 0, value, jnp.zeros_like(value))
        slots = slots.at[0].set(own_value.astype(slots.dtype))
        slots = jax.lax.psum(slots, self.axis_name)
        value = slots[0].astype(jnp.result_type(value))
        # Each device held only its own K/D directions: draw all K again from the
        # shared key (the same on every device) to combine them.
        directions = self.estimator.sample(keys, like)
        grad = self.estimator.combine(slots[1:], directions, tree_size(like))
        return ((value, aux) if has_aux else value), grad

    @property
    def num_forward_passes(self) -> int:
        return self.estimator.num_forward_passes


def _to_varying(tree: PyTree, axis_name: str) -> PyTree:
    arrays, static = eqx.partition(tree, eqx.is_array)
    return eqx.combine(jax.lax.pcast(arrays, axis_name, to="varying"), static)


def _constrain(tree: PyTree, sharding: NamedSharding) -> PyTree:
    arrays, static = eqx.partition(tree, eqx.is_array)
    return eqx.combine(jax.lax.with_sharding_constraint(arrays, sharding), static)


def _check_batch_divisible(
    batch: Any, num_devices: int, axis: str, num_processes: int
) -> None:
    leaves = [leaf for leaf in jtu.tree_leaves(batch) if eqx.is_array(leaf)]
    if not leaves:
        raise ValueError(
            "The batch holds no arrays to split over the devices; pass the batch as "
            "a pytree of arrays with the examples on the leading axis."
        )
    for leaf in leaves:
        # An array that is not global is this process's share of the batch.
        share = 1 if is_global(leaf) else num_processes
        rows = leaf.shape[0] * share if leaf.ndim else 0
        if rows == 0 or rows % num_devices != 0:
            what = (
                f"{leaf.shape[0] if leaf.ndim else 0} rows per process x "
                f"{num_processes} processes"
                if share > 1
                else "its leading dimension"
            )
            raise ValueError(
                f"Every batch array is split along its leading axis over the "
                f"{num_devices} devices of mesh axis {axis!r}, so the global batch "
                f"must be divisible by {num_devices}; got an array of shape "
                f"{tuple(leaf.shape)} ({what}). Use a global batch size that is a "
                f"multiple of {num_devices}."
            )


def _resolve_axis(mesh: Any, axis_name: str | None) -> str:
    if not isinstance(mesh, Mesh):
        raise TypeError(
            "`mesh` must be a `jax.sharding.Mesh`, e.g. "
            "`jax.make_mesh((jax.device_count(),), ('batch',))`; got "
            f"{type(mesh).__name__}."
        )
    if axis_name is None:
        if len(mesh.axis_names) != 1:
            raise ValueError(
                f"The mesh has axes {mesh.axis_names}; pass `axis_name=` to say which "
                "one the work is split over."
            )
        return mesh.axis_names[0]
    if axis_name not in mesh.axis_names:
        raise ValueError(
            f"`axis_name={axis_name!r}` is not an axis of the mesh, whose axes are "
            f"{mesh.axis_names}."
        )
    return axis_name


def _check_parallelism(
    estimator: AbstractEstimator, parallelism: Any, num_devices: int, axis: str
) -> None:
    if parallelism not in _PARALLELISMS:
        raise ValueError(
            f"`parallelism` must be 'data' or 'tangent', got {parallelism!r}."
        )
    if parallelism == "data":
        return
    if not isinstance(estimator, ForwardGradient):
        what = (
            "computes the exact gradient and has no tangents"
            if isinstance(estimator, Backprop)
            else "has no batch of tangents"
        )
        raise TypeError(
            "`parallelism='tangent'` splits the K tangents of a "
            f"`fwdeqx.ForwardGradient` over the devices, but "
            f"`{type(estimator).__name__}` {what} to split. Use "
            "`parallelism='data'`, which works with every estimator."
        )
    if estimator.num_tangents % num_devices != 0:
        raise ValueError(
            f"`parallelism='tangent'` gives each of the {num_devices} devices of mesh "
            f"axis {axis!r} the same number of tangents, so the estimator's "
            f"`num_tangents` must be a multiple of {num_devices}; got "
            f"{estimator.num_tangents}."
        )


def make_step(
    loss: Callable,
    optimizer: optax.GradientTransformation,
    estimator: AbstractEstimator,
    *,
    mesh: Mesh,
    parallelism: Parallelism = "data",
    axis_name: str | None = None,
) -> DistributedTrainStep:
    """The training step of [`fwdeqx.make_step`][] for `estimator`, spread over the
    devices of a mesh axis.

    With the same key, the tangents are the same on every device and the same as
    on one device, so the update equals the single-device one up to float rounding
    (the order of the sums differs).

    **Arguments:**

    - `loss`: `loss(model, batch) -> scalar`. With `parallelism="data"` it must be
        a **mean over the leading axis** of the batch (as
        `fwdeqx.models.cross_entropy` is), so that the mean of the shards' losses
        is the full-batch loss; nothing in the loss may mix examples (no batch
        normalisation).
    - `optimizer`: any `optax.GradientTransformation`.
    - `estimator`: how gradients are obtained, e.g.
        `fwdeqx.ForwardGradient(num_tangents=8)` (any tangents and combiner),
        `fwdeqx.Backprop()`, `fwdeqx.SPSA()` or a `fwdeqx.local` estimator.
    - `mesh`: a `jax.sharding.Mesh`; on several processes, the global mesh built
        after [`fwdeqx.distributed.initialize`][], e.g.
        `jax.make_mesh((jax.device_count(),), ("batch",))`.
    - `parallelism`: what is split over the devices. `"data"` (default): the
        batch; every device runs the estimator on its shard with the loss averaged
        over the devices, so the estimator's derivatives are all-reduced (K + 1
        scalars for a forward gradient, the whole gradient for backprop). Works
        with every estimator; the `fwdeqx.local` ones all-reduce their
        per-layer gradient estimates. `"tangent"`: the K tangents of a
        `fwdeqx.ForwardGradient`, whose `num_tangents` must be a multiple of the
        number of devices D; each device evaluates its K/D tangents on the whole
        batch, then the K derivatives are gathered (K + 1 scalars). Other
        estimators raise a `TypeError`.
    - `axis_name`: the mesh axis to split over; may be omitted for a 1-D mesh.

    **Returns:**

    A jitted [`fwdeqx.distributed.DistributedTrainStep`][]:
    `step(model, opt_state, batch, key) -> (model, opt_state, loss)`;
    `step.init(model)` gives the initial optimizer state.

    !!! Example

        ```python
        mesh = jax.make_mesh((4,), ("batch",))
        estimator = fwdeqx.ForwardGradient(num_tangents=8, combine=fwdeqx.Projection())
        step = fwdeqx.distributed.make_step(
            loss, optax.adam(1e-3), estimator, mesh=mesh, parallelism="tangent"
        )
        ```
    """
    axis = _resolve_axis(mesh, axis_name)
    check_optimizer(optimizer)
    check_estimator(estimator)
    _check_parallelism(estimator, parallelism, mesh.shape[axis], axis)
    return DistributedTrainStep(
        loss=loss,
        optimizer=optimizer,
        estimator=estimator,
        mesh=mesh,
        axis_name=axis,
        parallelism=parallelism,
    )


def make_backprop_step(
    loss: Callable,
    optimizer: optax.GradientTransformation,
    *,
    mesh: Mesh,
    axis_name: str | None = None,
) -> DistributedTrainStep:
    """Data-parallel backprop, the baseline: each device computes the gradient of
    its batch shard and the gradients are averaged over the devices, an all-reduce
    of one number per parameter. Short for
    `make_step(loss, optimizer, fwdeqx.Backprop(), mesh=mesh, axis_name=axis_name)`;
    equals [`fwdeqx.make_step`][] with `fwdeqx.Backprop()` up to float rounding.

    **Arguments:**

    - `loss`: `loss(model, batch) -> scalar`, a mean over the leading axis of the
        batch.
    - `optimizer`: any `optax.GradientTransformation`.
    - `mesh`: a `jax.sharding.Mesh`.
    - `axis_name`: the mesh axis the batch is split over; may be omitted for a 1-D
        mesh.

    **Returns:**

    A jitted [`fwdeqx.distributed.DistributedTrainStep`][], called as
    `step(model, opt_state, batch, key)` (the key is accepted and ignored).
    """
    return make_step(loss, optimizer, Backprop(), mesh=mesh, axis_name=axis_name)


__all__ = [
    "DistributedTrainStep",
    "initialize",
    "make_backprop_step",
    "make_step",
    "place",
]
