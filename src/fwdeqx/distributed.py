"""Training steps across several devices, where forward gradients communicate only
scalars.

Every device draws the same tangents from the same key, so the devices only need to
agree on the K directional derivatives: an all-reduce of K + 1 scalars per step
(the derivatives and the loss), whatever the size of the model. Data-parallel
backprop, for comparison, all-reduces the whole gradient.

- `make_step(loss, optimizer, mesh=mesh, mode="data")`: the batch is split over
  the devices; each evaluates the K directional derivatives on its shard; their
  mean over devices is the full-batch derivative.
- `make_step(..., mode="tangent")`: the K tangents are split over the devices; each
  evaluates its K/D tangents on the whole batch; one sum over devices of a vector
  of K + 1 slots gives every device all the derivatives.
- `make_backprop_step(loss, optimizer, mesh=mesh)`: data-parallel backprop.

In every case each device then forms the same gradient from the same tangents
(drawn again from the key in tangent mode) and applies the same update, so the
parameters stay replicated, and the result equals the single-device
`fwdeqx.make_step` with the same key up to float rounding.

!!! Example

    ```python
    import fwdeqx.distributed

    mesh = jax.make_mesh((jax.device_count(),), ("batch",))
    step = fwdeqx.distributed.make_step(
        loss, optax.sgd(1e-3), mesh=mesh, num_tangents=8
    )
    opt_state = step.init(model)
    model, opt_state, value = step(model, opt_state, (x, y), key)
    ```
"""

import re
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from ._directional import check_scalar_output, value_and_directional_derivatives
from ._fwd_grad import (
    check_key,
    check_num_tangents,
    check_tangents,
    draw_tangents,
    mean_forward_gradient,
    sample_tangent_stack,
    value_and_derivatives_along,
)
from ._tangents import AbstractTangentDistribution, Gaussian


class DistributedTrainStep(eqx.Module):
    """One training step spread over the devices of a mesh axis.

    Build it with [`fwdeqx.distributed.make_step`][] or
    [`fwdeqx.distributed.make_backprop_step`][]. It is called exactly as
    [`fwdeqx.TrainStep`][]: `step(model, opt_state, batch, key) ->
    (model, opt_state, loss)`, and `step.init(model)` gives the optimizer state.
    The returned model and optimizer state are replicated over the mesh.
    """

    loss: Callable
    optimizer: optax.GradientTransformation
    tangents: AbstractTangentDistribution | None
    mesh: Mesh = eqx.field(static=True)
    axis_name: str = eqx.field(static=True)
    strategy: str = eqx.field(static=True)
    num_tangents: int = eqx.field(static=True)

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
            In `"data"` mode and for backprop, every leaf is split along its
            leading axis, which must be divisible by the number of devices.
        - `key`: PRNG key for the tangents; use a fresh one every step. The same
            key on every device (and every host) gives the same tangents.

        **Returns:**

        `(model, opt_state, loss)`: the updated model and optimizer state, and the
        full-batch loss at the model *before* the update.
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
        the optimised HLO, for example with
        [`fwdeqx.distributed.collective_bytes`][]."""
        arguments = self._place(model, opt_state, batch, key)
        return type(self)._jitted_step.lower(self, *arguments).lowered

    @property
    def _shards_batch(self) -> bool:
        return self.strategy != "tangent"

    def _place(
        self, model: PyTree, opt_state: optax.OptState, batch: Any, key: PRNGKeyArray
    ) -> tuple[PyTree, optax.OptState, Any, PRNGKeyArray]:
        """Put the batch on the devices as the step splits it, and everything else
        replicated (a no-op for arrays already placed so)."""
        check_key(key, "fwdeqx.distributed step")
        if self._shards_batch:
            _check_batch_divisible(batch, self.num_devices, self.axis_name)
        replicated = NamedSharding(self.mesh, PartitionSpec())
        split = NamedSharding(self.mesh, PartitionSpec(self.axis_name))
        batch_sharding = split if self._shards_batch else replicated
        return (
            _device_put_arrays(model, replicated),
            _device_put_arrays(opt_state, replicated),
            _device_put_arrays(batch, batch_sharding),
            jax.device_put(key, replicated),
        )

    @eqx.filter_jit
    def _jitted_step(
        self,
        model: PyTree,
        opt_state: optax.OptState,
        batch: Any,
        key: PRNGKeyArray,
    ) -> tuple[PyTree, optax.OptState, Float[Array, ""]]:
        model_arrays, model_static = eqx.partition(model, eqx.is_array)
        state_arrays, state_static = eqx.partition(opt_state, eqx.is_array)
        batch_arrays, batch_static = eqx.partition(batch, eqx.is_array)
        new_statics = {}

        def per_device(model_arrays, state_arrays, batch_arrays, key):
            model = eqx.combine(model_arrays, model_static)
            state = eqx.combine(state_arrays, state_static)
            local_batch = eqx.combine(batch_arrays, batch_static)
            value, grads = self._value_and_grad(model, local_batch, key)
            params = eqx.filter(model, eqx.is_inexact_array)
            updates, state = self.optimizer.update(grads, state, params)
            model = eqx.apply_updates(model, updates)
            model_arrays, new_statics["model"] = eqx.partition(model, eqx.is_array)
            state_arrays, new_statics["state"] = eqx.partition(state, eqx.is_array)
            return model_arrays, state_arrays, value

        replicated = PartitionSpec()
        split = PartitionSpec(self.axis_name)
        batch_spec = split if self._shards_batch else replicated
        model_arrays, state_arrays, value = jax.shard_map(
            per_device,
            mesh=self.mesh,
            in_specs=(replicated, replicated, batch_spec, replicated),
            out_specs=(replicated, replicated, replicated),
        )(model_arrays, state_arrays, batch_arrays, key)
        model = eqx.combine(model_arrays, new_statics["model"])
        opt_state = eqx.combine(state_arrays, new_statics["state"])
        return model, opt_state, value

    def _value_and_grad(
        self, model: PyTree, batch: Any, key: PRNGKeyArray
    ) -> tuple[Float[Array, ""], PyTree]:
        if self.strategy == "backprop":
            return self._backprop(model, batch)
        if self.strategy == "data":
            return self._data_parallel(model, batch, key)
        return self._tangent_parallel(model, batch, key)

    def _loss_fn(self, batch: Any) -> Callable:
        def fn(model):
            value = self.loss(model, batch)
            check_scalar_output(value, "fwdeqx.distributed.make_step")
            return value, None

        return fn

    def _backprop(self, model: PyTree, batch: Any) -> tuple[Array, PyTree]:
        # Differentiating a varying copy keeps the gradient local to the device
        # (for an invariant one, JAX would sum it over the devices itself); the
        # full parameter-sized gradient then crosses the interconnect in `pmean`.
        varying_model = _to_varying(model, self.axis_name)
        value, grads = eqx.filter_value_and_grad(self.loss)(varying_model, batch)
        return jax.lax.pmean((value, grads), self.axis_name)

    def _data_parallel(
        self, model: PyTree, batch: Any, key: PRNGKeyArray
    ) -> tuple[Array, PyTree]:
        like = eqx.filter(model, eqx.is_inexact_array)
        fn = self._loss_fn(batch)
        tangents = draw_tangents(self._tangents, key, like, self.num_tangents)
        (value, _), derivatives = value_and_derivatives_along(
            fn, model, tangents, self.num_tangents
        )
        # The loss is a mean over the batch, so the mean over equal shards of the
        # local derivatives is the full-batch derivative: only K + 1 scalars move.
        value, derivatives = jax.lax.pmean((value, derivatives), self.axis_name)
        # The tangents were drawn from the shared key, so they are the same on every
        # device: each forms the same gradient without exchanging it.
        return value, mean_forward_gradient(derivatives, tangents, self.num_tangents)

    def _tangent_parallel(
        self, model: PyTree, batch: Any, key: PRNGKeyArray
    ) -> tuple[Array, PyTree]:
        like = eqx.filter(model, eqx.is_inexact_array)
        per_device = self.num_tangents // self.num_devices
        index = jax.lax.axis_index(self.axis_name)
        keys = _tangent_keys(key, self.num_tangents)
        local_keys = jax.lax.dynamic_slice_in_dim(keys, index * per_device, per_device)
        local_stack = sample_tangent_stack(self._tangents, local_keys, like)
        # The tangents differ between devices; typing the model's copy as varying
        # too lets custom jvp rules (`fwdeqx.LowRank`) see matching types.
        varying_model = _to_varying(model, self.axis_name)
        (value, _), local_derivatives = value_and_directional_derivatives(
            self._loss_fn(batch), varying_model, local_stack
        )
        # Each device writes its K/D derivatives into a zero vector of K + 1 slots
        # (slot 0 holds the loss, which every device computed on the whole batch;
        # device 0 provides it) and the vectors are summed: adding zeros is exact,
        # and only K + 1 scalars move.
        slots = jnp.zeros(self.num_tangents + 1, local_derivatives.dtype)
        slots = jax.lax.dynamic_update_slice_in_dim(
            slots, local_derivatives, 1 + index * per_device, axis=0
        )
        own_value = jnp.where(index == 0, value, jnp.zeros_like(value))
        slots = slots.at[0].set(own_value.astype(slots.dtype))
        slots = jax.lax.psum(slots, self.axis_name)
        value = slots[0].astype(value.dtype)
        # Each device held only its own K/D tangents: draw all K again from the
        # shared key (the same on every device) to form the gradient.
        tangents = draw_tangents(self._tangents, key, like, self.num_tangents)
        return value, mean_forward_gradient(slots[1:], tangents, self.num_tangents)

    @property
    def _tangents(self) -> AbstractTangentDistribution:
        assert self.tangents is not None
        return self.tangents


def _tangent_keys(key: PRNGKeyArray, num_tangents: int) -> Array:
    # As `fwdeqx.ForwardGradient`: K = 1 uses the key itself, K > 1 splits it.
    if num_tangents == 1:
        return key[None]
    return jax.random.split(key, num_tangents)


def _to_varying(tree: PyTree, axis_name: str) -> PyTree:
    arrays, static = eqx.partition(tree, eqx.is_array)
    return eqx.combine(jax.lax.pcast(arrays, axis_name, to="varying"), static)


def _device_put_arrays(tree: PyTree, sharding: NamedSharding) -> PyTree:
    return jtu.tree_map(
        lambda leaf: jax.device_put(leaf, sharding) if eqx.is_array(leaf) else leaf,
        tree,
    )


def _check_batch_divisible(batch: Any, num_devices: int, axis: str) -> None:
    leaves = [leaf for leaf in jtu.tree_leaves(batch) if eqx.is_array(leaf)]
    if not leaves:
        raise ValueError(
            "The batch holds no arrays to split over the devices; pass the batch as "
            "a pytree of arrays with the examples on the leading axis."
        )
    for leaf in leaves:
        if leaf.ndim == 0 or leaf.shape[0] % num_devices != 0:
            raise ValueError(
                f"Every batch array is split along its leading axis over the "
                f"{num_devices} devices of mesh axis {axis!r}, so its leading "
                f"dimension must be divisible by {num_devices}; got an array of "
                f"shape {tuple(leaf.shape)}. Use a batch size that is a multiple of "
                f"{num_devices}."
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


def _check_optimizer(optimizer: Any) -> None:
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(
            f"`optimizer` must be an optax GradientTransformation, got {optimizer!r}."
        )


def make_step(
    loss: Callable,
    optimizer: optax.GradientTransformation,
    *,
    mesh: Mesh,
    mode: str = "data",
    tangents: AbstractTangentDistribution = Gaussian(),
    num_tangents: int = 1,
    axis_name: str | None = None,
) -> DistributedTrainStep:
    """The forward-gradient training step of [`fwdeqx.make_step`][] with
    `fwdeqx.ForwardGradient(tangents, num_tangents)`, spread over the devices of a
    mesh axis, exchanging only scalars.

    With the same key, the tangents are the same on every device and the same as
    on one device, so the update equals the single-device one up to float rounding
    (the order of the sums differs).

    **Arguments:**

    - `loss`: `loss(model, batch) -> scalar`. In `"data"` mode it must be a
        **mean over the leading axis** of the batch (as `fwdeqx.models.cross_entropy`
        is), so that the mean of the shards' losses is the full-batch loss; nothing
        in the loss may mix examples (no batch normalisation).
    - `optimizer`: any `optax.GradientTransformation`.
    - `mesh`: a `jax.sharding.Mesh`; on several hosts, the global mesh built after
        `jax.distributed.initialize()`.
    - `mode`: `"data"` (default) splits the batch over the devices, each
        evaluating all K tangents on its shard, then averages K + 1 scalars;
        `"tangent"` gives each device K/D of the tangents on the whole batch, then
        gathers the K derivatives.
    - `tangents`: the tangent distribution, e.g. `fwdeqx.Gaussian()` (default),
        `fwdeqx.Rademacher()` or `fwdeqx.LowRank()`.
    - `num_tangents`: K. In `"tangent"` mode it must be a multiple of the number of
        devices D.
    - `axis_name`: the mesh axis to split over; may be omitted for a 1-D mesh.

    **Returns:**

    A jitted [`fwdeqx.distributed.DistributedTrainStep`][]:
    `step(model, opt_state, batch, key) -> (model, opt_state, loss)`;
    `step.init(model)` gives the initial optimizer state.

    !!! Example

        ```python
        mesh = jax.make_mesh((4,), ("batch",))
        step = fwdeqx.distributed.make_step(
            loss, optax.sgd(1e-3), mesh=mesh, mode="tangent", num_tangents=8
        )
        ```
    """
    axis = _resolve_axis(mesh, axis_name)
    _check_optimizer(optimizer)
    check_tangents(tangents)
    check_num_tangents(num_tangents)
    if mode not in ("data", "tangent"):
        raise ValueError(f"`mode` must be 'data' or 'tangent', got {mode!r}.")
    num_devices = mesh.shape[axis]
    if mode == "tangent" and num_tangents % num_devices != 0:
        raise ValueError(
            f"`mode='tangent'` gives each of the {num_devices} devices of mesh axis "
            f"{axis!r} the same number of tangents, so `num_tangents` must be a "
            f"multiple of {num_devices}; got {num_tangents}."
        )
    return DistributedTrainStep(
        loss=loss,
        optimizer=optimizer,
        tangents=tangents,
        mesh=mesh,
        axis_name=axis,
        strategy=mode,
        num_tangents=num_tangents,
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
    of one number per parameter. Equals [`fwdeqx.make_step`][] with
    `fwdeqx.Backprop()` up to float rounding.

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
    axis = _resolve_axis(mesh, axis_name)
    _check_optimizer(optimizer)
    return DistributedTrainStep(
        loss=loss,
        optimizer=optimizer,
        tangents=None,
        mesh=mesh,
        axis_name=axis,
        strategy="backprop",
        num_tangents=0,
    )


_COLLECTIVES: tuple[str, ...] = (
    "all-reduce",
    "all-gather",
    "reduce-scatter",
    "all-to-all",
    "collective-permute",
)
_DTYPE_BYTES = {
    "pred": 1,
    "s8": 1,
    "u8": 1,
    "s16": 2,
    "u16": 2,
    "f16": 2,
    "bf16": 2,
    "s32": 4,
    "u32": 4,
    "f32": 4,
    "s64": 8,
    "u64": 8,
    "f64": 8,
    "c64": 8,
    "c128": 16,
}
_INSTRUCTION = re.compile(
    r"=\s*(?P<shape>\(.*?\)|\w+\[[\d,]*\](?:\{[^}]*\})?)\s+"
    r"(?P<op>" + "|".join(_COLLECTIVES) + r")(?:-start)?\("
)
_ARRAY_SHAPE = re.compile(r"(\w+)\[([\d,]*)\]")


def collective_bytes(hlo_text: str) -> dict[str, int]:
    """Bytes produced by each kind of cross-device collective in an HLO module: a
    diagnostic of how much one step communicates.

    **Arguments:**

    - `hlo_text`: the text of a compiled module, e.g.
        `step.lower(model, opt_state, batch, key).compile().as_text()`.

    **Returns:**

    A dict from the collective (`"all-reduce"`, `"all-gather"`, `"reduce-scatter"`,
    `"all-to-all"`, `"collective-permute"`) to the total bytes of the results of
    its instructions (every kind present, 0 when absent). For an all-reduce this is
    the size of the reduced buffer; asynchronous `-start`/`-done` pairs are counted
    once.
    """
    totals: dict[str, int] = dict.fromkeys(_COLLECTIVES, 0)
    for match in _INSTRUCTION.finditer(hlo_text):
        totals[match.group("op")] += _shape_bytes(match.group("shape"))
    return totals


def _shape_bytes(shape: str) -> int:
    total = 0
    for dtype, dims in _ARRAY_SHAPE.findall(shape):
        if dtype not in _DTYPE_BYTES:
            continue
        size = 1
        for dim in filter(None, dims.split(",")):
            size *= int(dim)
        total += size * _DTYPE_BYTES[dtype]
    return total


__all__ = [
    "DistributedTrainStep",
    "collective_bytes",
    "make_backprop_step",
    "make_step",
]
