"""The one algorithm behind the local estimators.

One forward-mode pass, vmapped over the examples and over the K tangents, gives
every loss copy's per-example directional derivative and records each `Perturbed`
layer's input and output and each head's pooled input. Then:

- a `Perturbed` layer's gradient estimate is the vjp of that one layer at its
  recorded inputs, with cotangent (1/N) dₙ ⊙ uₙ (the only reverse step through a
  network layer; `(dₙ uₙ) xₙᵀ` for a `Linear`);
- a head's gradient is exact: the gradient of its own loss with respect to its
  one `Linear`, at its recorded (stop-gradiented) input;
- every other floating parameter (layer norms, layers not marked `Perturbed`,
  or all of them for weight perturbation) is weight-perturbed in the same pass
  with tangents shared by the batch, and paired with its block's derivative.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, PRNGKeyArray, PyTree

from .._directional import sample_directions
from .._tangents import AbstractTangentDistribution
from ._layers import LinearHead, LocalNetwork, Perturbed, Residual
from ._objectives import (
    AbstractLocalObjective,
    LocalLoss,
    check_heads,
    check_local_network,
    unpack_batch,
)


class Point(NamedTuple):
    block: int
    perturbed: Perturbed
    relu_next: bool


def _walk(layers: tuple, block: int, out: list[Point]) -> None:
    for i, layer in enumerate(layers):
        if isinstance(layer, Perturbed):
            following = layers[i + 1] if i + 1 < len(layers) else None
            out.append(Point(block, layer, following is jax.nn.relu))
        elif isinstance(layer, Residual):
            _walk(layer.layers, block, out)


def points(net: LocalNetwork) -> list[Point]:
    """Every `Perturbed` layer of `net`, in the order the forward pass meets them."""
    out: list[Point] = []
    for index, block in enumerate(net.blocks):
        _walk(block.layers, index, out)
    return out


def _check_visible(net: LocalNetwork, found: list[Point]) -> None:
    every = [
        leaf
        for leaf in jtu.tree_leaves(net, is_leaf=lambda n: isinstance(n, Perturbed))
        if isinstance(leaf, Perturbed)
    ]
    if len(every) != len(found):
        raise ValueError(
            "A fwdeqx.local.Perturbed layer is nested inside another module; the "
            "estimators only see Perturbed layers placed directly in "
            "Block(layers) or in fwdeqx.local.Residual(layers)."
        )


def _run(layers: tuple, h: Array, deltas: list | None, records: list | None) -> Array:
    for layer in layers:
        if isinstance(layer, Perturbed):
            z = layer(h)
            if records is not None:
                records.append((h, z))
            if deltas is not None and records is not None:
                z = z + deltas[len(records) - 1]
            h = z
        elif isinstance(layer, Residual):
            h = h + _run(layer.layers, h, deltas, records)
        else:
            h = layer(h)
    return h


def _copy_losses(
    head: LinearHead, h: Array, y: Array, loss: Callable
) -> tuple[Array, Array]:
    """The head's loss once per channel group, group g's copy carrying only group
    g's tangent; and the pooled features.

    Every copy has the loss's value. Heads carry no tangent of their own, so copy
    g's logits tangent is `W[:, g] ṗ[g]` (the head's weight times the features'
    tangent, summed within channel group g), and its loss tangent that times the
    loss's gradient with respect to the logits: one head evaluation and one loss
    gradient, rather than G of each.
    """
    pooled = head.pool(h)
    logits = head.linear(pooled)
    groups = head.groups
    if groups == 1:
        return loss(logits, y)[None], pooled
    weight = head.linear.weight
    tangent_only = pooled - jax.lax.stop_gradient(pooled)  # value 0, tangent ṗ
    by_group = (weight * tangent_only[None]).reshape(len(weight), groups, -1).sum(-1)
    value, dlogits = jax.value_and_grad(loss)(jax.lax.stop_gradient(logits), y)
    return value + dlogits @ by_group, pooled


def forward(
    net: LocalNetwork,
    deltas: list | None,
    x: Array,
    y: Array,
    loss: Callable,
    *,
    local: bool,
    record: bool,
) -> tuple[list[Array], tuple[list, list[Array]]]:
    """One example: the loss copies of every block with a loss (`local`) or of the
    last head, and `(records, pooled)`: each Perturbed layer's (input, output) and
    each loss's pooled head input."""
    records: list | None = [] if record else None
    losses, pooled = [], []
    last = len(net.blocks) - 1
    h = x
    for index, block in enumerate(net.blocks):
        if local:
            h = jax.lax.stop_gradient(h)
        h = _run(block.layers, h, deltas, records)
        if local or index == last:
            assert block.head is not None
            copy_losses, features = _copy_losses(block.head, h, y, loss)
            losses.append(copy_losses)
            pooled.append(features)
    return losses, (records or [], pooled)


def _false(tree: PyTree) -> PyTree:
    return jtu.tree_map(lambda _: False, tree)


def _slots(net: Any, *, layers: bool, heads: bool) -> list:
    found = [p.perturbed.layer for p in points(net)] if layers else []
    if heads:
        found += [block.head for block in net.blocks if block.head is not None]
    return found


def _weight_spec(net: LocalNetwork, *, activity: bool) -> PyTree:
    """True at the floating leaves that get weight tangents."""
    spec = jtu.tree_map(eqx.is_inexact_array, net)
    where = lambda t: _slots(t, layers=activity, heads=True)
    return eqx.tree_at(where, spec, replace=[_false(n) for n in where(spec)])


def _sample(
    tangents: AbstractTangentDistribution, key: PRNGKeyArray, like: PyTree, k: int
) -> PyTree:
    """K tangents of `like`'s structure, stacked, drawn as `fwdeqx.ForwardGradient`
    draws them (one per key of `jax.random.split(key, k)`)."""
    if not jtu.tree_leaves(like):
        return like
    return sample_directions(tangents, jax.random.split(key, k), like)


def _head_grad(head: LinearHead, pooled: Array, y: Array, loss: Callable) -> PyTree:
    def objective(head_):
        return jnp.mean(jax.vmap(lambda p, yn: loss(head_.linear(p), yn))(pooled, y))

    return eqx.filter_grad(objective)(head)


def _expand(
    d: Array, point: Point, z_shape: tuple[int, ...], head: LinearHead | None
) -> Array:
    """Per-unit derivative factor `[N, K, *z]`-broadcastable: the own group's copy
    for a routed grouped point, else the sum over copies."""
    n, k, groups = d.shape
    ndim = len(z_shape)
    if head is None or groups == 1 or not point.perturbed.grouped:
        return jnp.sum(d, axis=-1).reshape(n, k, *([1] * ndim))
    axis = point.perturbed.channel_axis % ndim
    channels = z_shape[axis]
    if channels != head.in_features:
        raise ValueError(
            f"A grouped Perturbed layer of block {point.block} has {channels} output "
            f"channels but the block's head has in_features={head.in_features} "
            f"(groups={groups}); a grouped point's channels must be the head's."
        )
    shape = [n, k] + [1] * ndim
    shape[2 + axis] = channels
    return jnp.repeat(d, channels // groups, axis=-1).reshape(shape)


def check_objective(fun: object, who: str) -> AbstractLocalObjective:
    if not isinstance(fun, AbstractLocalObjective):
        raise TypeError(
            f"{who} needs per-example losses: pass fwdeqx.local.LocalLoss(...) or "
            f"fwdeqx.local.GlobalLoss(...) as the objective, got {fun!r}."
        )
    return fun


def estimate(
    fun: object,
    model: object,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    key: PRNGKeyArray,
    has_aux: bool,
    tangents: AbstractTangentDistribution,
    num_tangents: int,
    activity: bool,
    mask_inactive: bool,
    who: str,
) -> tuple[Array, PyTree]:
    objective = check_objective(fun, who)
    if has_aux:
        raise ValueError(f"{who}: local-loss objectives return no aux (has_aux=True).")
    if kwargs:
        raise TypeError(f"{who} takes no keyword arguments for the objective.")
    net = check_local_network(model, who)
    local = isinstance(objective, LocalLoss)
    if local:
        check_heads(net)
    x, y = unpack_batch(args)
    found = points(net)
    _check_visible(net, found)
    if activity and not found:
        raise ValueError(
            f"{who} perturbs activities, but the model has no perturbation points: "
            "wrap its affine layers as fwdeqx.local.Perturbed(eqx.nn.Linear(...))."
        )
    loss = objective.per_example_loss
    size, k = x.shape[0], num_tangents
    last = len(net.blocks) - 1
    entry = (lambda b: b) if local else (lambda b: 0)

    weighted, rest = eqx.partition(net, _weight_spec(net, activity=activity))
    key_a, key_w = jax.random.split(key)
    v = _sample(tangents, key_w, weighted, k)

    if activity:
        z_shapes = jax.eval_shape(
            lambda xn, yn: forward(net, None, xn, yn, loss, local=local, record=True)[
                1
            ][0],
            x[0],
            y[0],
        )
        z_like = [z for _, z in z_shapes]
        zeros = [jnp.zeros(z.shape, z.dtype) for z in z_like]
        like = [jnp.zeros((size, *z.shape), z.dtype) for z in z_like]
        # Materialised once: XLA would otherwise fuse (and repeat) the sampling into
        # each of its consumers (the jvp and the estimate).
        u = jax.lax.optimization_barrier(_sample(tangents, key_a, like, k))
    else:
        z_like, zeros, u = [], [], []

    def per_example(w, deltas, xn, yn):
        return forward(
            eqx.combine(w, rest), deltas, xn, yn, loss, local=local, record=activity
        )

    def example(xn, yn, un):
        def direction(vk, unk):
            return jax.jvp(
                lambda w, deltas: per_example(w, deltas, xn, yn),
                (weighted, zeros),
                (vk, unk),
                has_aux=True,
            )

        return jax.vmap(direction, out_axes=(None, 0, None))(v, un)

    primal, derivs, (records, pooled) = jax.vmap(example, in_axes=(0, 0, 1))(x, y, u)
    value = jnp.sum(jnp.stack([jnp.mean(p[:, 0]) for p in primal]))

    # Weight-perturbed leaves: (1/K) Σ_k (mean_n d_{b,n,k}) v_k, block by block.
    coeffs = [jnp.mean(jnp.sum(d, axis=-1), axis=0) / k for d in derivs]  # [K] each
    if jtu.tree_leaves(v):
        blocks = tuple(
            jtu.tree_map(lambda t, c=coeffs[entry(b)]: jnp.tensordot(c, t, 1), vb)
            for b, vb in enumerate(v.blocks)
        )
        grads = eqx.tree_at(lambda t: t.blocks, v, replace=blocks)
    else:
        grads = weighted

    replace = []
    if activity:
        for i, point in enumerate(found):
            xs, zs = records[i]
            head = (
                net.blocks[point.block].head if (local or point.block == last) else None
            )
            factor = _expand(derivs[entry(point.block)], point, z_like[i].shape, head)
            gz = jnp.mean(factor * jnp.swapaxes(u[i], 0, 1), axis=1)
            if mask_inactive and point.relu_next:
                gz = jnp.where(zs > 0, gz, jnp.zeros_like(gz))
            gz = gz / size
            layer = point.perturbed.layer
            apply = point.perturbed.apply
            _, vjp = eqx.filter_vjp(
                lambda lay, xs=xs, apply=apply: jax.vmap(lambda xn: apply(lay, xn))(xs),
                layer,
            )
            (layer_grad,) = vjp(gz)
            replace.append(layer_grad)
    for index, block in enumerate(net.blocks):
        if block.head is None:
            continue
        if local or index == last:
            replace.append(_head_grad(block.head, pooled[entry(index)], y, loss))
        else:  # the global objective does not use this head
            replace.append(
                jtu.tree_map(
                    jnp.zeros_like, eqx.filter(block.head, eqx.is_inexact_array)
                )
            )
    where = lambda t: _slots(t, layers=activity, heads=True)
    grads = eqx.tree_at(where, grads, replace=replace)
    return value, grads
