"""FG-A / LG-FG-A (`ActivityPerturbation`) and LG-FG-W (`LocalWeightPerturbation`).

Both follow the core's `ForwardGradient`: sample tangents, one forward-mode pass
for the directional derivatives, combine. The pass is vmapped over the examples
and the K tangents and gives, per example, the derivative of every loss copy of
every head that counts, with each site's recorded input and output and each
head's pooled input. Then:

- a site's gradient estimate is the vjp of that one layer at its recorded inputs,
  with cotangent (1/N) dₙ ⊙ uₙ (the only reverse step through a network layer);
- a head's gradient is exact (the gradient of its own loss with respect to the
  head, at its recorded input);
- every other floating parameter is weight-perturbed in the same pass with
  tangents shared by the batch, and combined with the derivatives of the losses
  it reaches.
"""

import functools as ft
import operator
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, PRNGKeyArray, PyTree

from .._checks import (
    check_combiner,
    check_dense_tangents,
    check_key,
    check_positive_int,
    check_tangents,
)
from .._combine import AbstractCombiner, Mean
from .._directional import sample_directions
from .._estimators import AbstractEstimator
from .._tangents import AbstractTangentDistribution, Gaussian, tree_size
from ._layers import LocalNetwork, Point, points, record
from ._objectives import AbstractLocalObjective, check_local_network, unpack_batch
from ._sites import AbstractSite


class ActivityPerturbation(AbstractEstimator):
    """Activity perturbation (Ren et al. 2023): FG-A with `fwdeqx.local.GlobalLoss`,
    LG-FG-A with `fwdeqx.local.LocalLoss`.

    Every perturbation site's output z (a `Perturbed` layer's) gets a tangent uₙ
    of its own for every example n (and each of the K tangents). One forward-mode
    pass, vmapped over the batch and the K tangents, gives each example's
    directional derivative dₙ of every loss the site reaches: its block's loss
    under `LocalLoss` (each block's input is stop-gradiented), the final loss under
    `GlobalLoss`. A head with `groups=G` has G loss copies, and a
    `Perturbed(..., grouped=True)` layer's channel group g is paired with copy g
    only. The layer's estimate is then

        g_W = (1/N) Σₙ (1/K) Σ_k (dₙₖ uₙₖ) xₙᵀ   (and g_b = (1/N) Σₙ (1/K) Σ_k dₙₖ uₙₖ),

    computed as the vjp of that single layer at its recorded input xₙ. Its variance
    scales with the layer's width q rather than fan-in × width (Ren et al.'s
    Table 1: (q + 2)/N·V against (pq + 2)/N·V).

    The other parameters: each head's gradient is exact (the reverse step through
    its one `Linear` and the loss, as Ren et al. do); floating parameters outside
    sites and heads (e.g. `eqx.nn.LayerNorm`'s) are weight-perturbed in the same
    pass, with tangents shared by the batch, and paired with the derivatives of
    the losses they reach. All estimates are unbiased for the objective's gradient.

    **Arguments:**

    - `tangents`: the distribution of the activity (and weight) tangents; one with
        independent entries (default `fwdeqx.Gaussian()`, or `fwdeqx.Rademacher()`).
        Structured ones (`fwdeqx.LowRank()`) are refused.
    - `num_tangents`: K, averaged (one batched pass).
    - `mask_inactive`: zero the estimate at units of a site directly followed by a
        ReLU (`jax.nn.relu`, `eqx.nn.Lambda(jax.nn.relu)` or a subclass of
        `fwdeqx.local.AbstractReLU`) whose pre-activation is ≤ 0 (their true
        gradient is zero there), as Ren et al. do. Keeps the estimate unbiased.
        After any other activation nothing is masked (still unbiased, noisier).
    - `combine`: `fwdeqx.Mean()`, the only combiner: the K activity tangents are
        averaged unit by unit, and `fwdeqx.Projection()` (a projection on the span
        of whole-network directions) does not apply to per-example activity
        tangents.

    !!! Example

        ```python
        import fwdeqx.local as fl

        model = fl.mlp(784, 512, 3, 10, key=key)
        value, grads = fl.ActivityPerturbation()(fl.LocalLoss(), model, x, y, key=key)
        ```
    """

    tangents: AbstractTangentDistribution = Gaussian()
    num_tangents: int = eqx.field(static=True, default=1)
    mask_inactive: bool = eqx.field(static=True, default=True)
    combine: AbstractCombiner = Mean()

    def __check_init__(self):
        _check_config(self, "fwdeqx.local.ActivityPerturbation")
        if not isinstance(self.combine, Mean):
            raise TypeError(
                "fwdeqx.local.ActivityPerturbation averages its K activity tangents "
                f"unit by unit (fwdeqx.Mean()); {self.combine!r} needs whole-network "
                "directions. Use fwdeqx.local.LocalWeightPerturbation(combine=...) "
                "or fwdeqx.ForwardGradient(combine=...) for fwdeqx.Projection()."
            )

    def __call__(
        self,
        fun: Callable,
        x: PyTree,
        /,
        *args: Any,
        key: Any,  # any object: `check_key` explains what is wrong with it
        has_aux: bool = False,
        **kwargs: Any,
    ) -> tuple[Any, PyTree]:
        """`(value, grads)` for `fun(x, *args)`, where `fun` is a local objective
        (`fwdeqx.local.LocalLoss`, `GlobalLoss`, …), `x` a
        `fwdeqx.local.LocalNetwork` and `args` the batch `(inputs, labels)` (or one
        `(inputs, labels)` pair)."""
        name = "fwdeqx.local.ActivityPerturbation"
        objective, net, inputs, labels = _check_call(
            fun, x, args, kwargs, has_aux, key, name
        )
        found = _sites(net, name)
        key_u, key_v = jax.random.split(key)
        weighted, rest = eqx.partition(net, _weight_spec(net, _sites_and_heads))
        v = _sample(self.tangents, key_v, weighted, self.num_tangents)
        zs = jax.eval_shape(lambda xn: record(net, xn).sites, inputs[0])
        zeros = [jnp.zeros(z.shape, z.dtype) for _, z in zs]
        like = [jnp.zeros((len(inputs), *z.shape), z.dtype) for _, z in zs]
        # Materialised once: XLA would otherwise fuse (and repeat) the sampling into
        # each of its consumers (the jvp and the estimate).
        u = jax.lax.optimization_barrier(
            _sample(self.tangents, key_u, like, self.num_tangents)
        )
        copies, derivs, (sites, pooled) = _derivatives(
            objective, weighted, rest, zeros, inputs, labels, v, u
        )
        site_grads = [
            self._site_grad(objective, net, point, derivs, u[i], *sites[i])
            for i, point in enumerate(found)
        ]
        grads = _weight_grads(self.combine, objective, net, weighted, derivs, v)
        replace = site_grads + _head_grads(objective, net, pooled, labels)
        return _value(copies), eqx.tree_at(_sites_and_heads, grads, replace=replace)

    def _site_grad(self, objective, net, point: Point, derivs, u, xs, zs) -> PyTree:
        """The site's layer's estimate: the vjp of the layer at its recorded inputs
        `xs`, with cotangent (1/N)(1/K) Σ_k dₙₖ ⊙ uₙₖ (masked where inactive)."""
        terms = [
            point.site.pair(
                derivs[i],
                zs.shape[1:],
                net.blocks[point.block].head if head == point.block else None,
            )
            for i, head in _reach(objective, net, point.block)
        ]
        if not terms:  # the site reaches no loss of the objective
            params = eqx.filter(point.site.layer, eqx.is_inexact_array)
            return jtu.tree_map(jnp.zeros_like, params)
        factor = ft.reduce(operator.add, terms)
        gz = jnp.mean(factor * jnp.swapaxes(u, 0, 1), axis=1)
        if self.mask_inactive and point.relu_next:
            gz = jnp.where(zs > 0, gz, jnp.zeros_like(gz))
        gz = gz / len(zs)
        apply = point.site.apply
        _, vjp = eqx.filter_vjp(
            lambda layer: jax.vmap(lambda xn: apply(layer, xn))(xs), point.site.layer
        )
        return vjp(gz)[0]

    @property
    def num_forward_passes(self) -> int:
        return self.num_tangents


class LocalWeightPerturbation(AbstractEstimator):
    """Local weight perturbation (LG-FG-W, Ren et al. 2023), with
    `fwdeqx.local.LocalLoss`.

    Every floating parameter outside the heads gets a weight tangent v (shared by
    the batch) and one forward-mode pass, vmapped over the K tangents, gives every
    block's directional derivative d_b of its own loss; `combine` turns the
    block's K derivatives and tangents into its estimate ((1/K) Σ_k d_{b,k} v_k for
    `fwdeqx.Mean()`), so no block sees another block's loss. Each head's gradient
    is exact (one reverse step through its `Linear` and the loss). With
    `GlobalLoss` every block uses the final loss's derivative (FG-W with exact
    heads).

    **Arguments:**

    - `tangents`: the weight-tangent distribution (default `fwdeqx.Gaussian()`);
        structured ones (`fwdeqx.LowRank()`) are refused.
    - `num_tangents`: K, averaged (one batched pass).
    - `combine`: `fwdeqx.Mean()` (default) or `fwdeqx.Projection()`, applied to
        the parameters of the blocks that reach the same losses.
    """

    tangents: AbstractTangentDistribution = Gaussian()
    num_tangents: int = eqx.field(static=True, default=1)
    combine: AbstractCombiner = Mean()

    def __check_init__(self):
        _check_config(self, "fwdeqx.local.LocalWeightPerturbation")

    def __call__(
        self,
        fun: Callable,
        x: PyTree,
        /,
        *args: Any,
        key: Any,  # any object: `check_key` explains what is wrong with it
        has_aux: bool = False,
        **kwargs: Any,
    ) -> tuple[Any, PyTree]:
        """As `ActivityPerturbation.__call__`."""
        name = "fwdeqx.local.LocalWeightPerturbation"
        objective, net, inputs, labels = _check_call(
            fun, x, args, kwargs, has_aux, key, name
        )
        weighted, rest = eqx.partition(net, _weight_spec(net, _heads))
        v = _sample(
            self.tangents, jax.random.split(key)[1], weighted, self.num_tangents
        )
        copies, derivs, (_, pooled) = _derivatives(
            objective, weighted, rest, None, inputs, labels, v, None
        )
        grads = _weight_grads(self.combine, objective, net, weighted, derivs, v)
        replace = _head_grads(objective, net, pooled, labels)
        return _value(copies), eqx.tree_at(_heads, grads, replace=replace)

    @property
    def num_forward_passes(self) -> int:
        return self.num_tangents


def _check_config(estimator: Any, name: str) -> None:
    check_tangents(estimator.tangents)
    check_dense_tangents(estimator.tangents, name)
    check_positive_int(estimator.num_tangents, "num_tangents")
    check_combiner(estimator.combine)


def _check_call(
    fun: object,
    model: object,
    args: tuple,
    kwargs: dict,
    has_aux: bool,
    key: Any,
    name: str,
) -> tuple[AbstractLocalObjective, LocalNetwork, Array, Array]:
    check_key(key, name)
    if not isinstance(fun, AbstractLocalObjective):
        raise TypeError(
            f"{name} needs per-example losses: pass a local objective such as "
            f"fwdeqx.local.LocalLoss() or fwdeqx.local.GlobalLoss(), got {fun!r}."
        )
    if has_aux:
        raise ValueError(f"{name}: local-loss objectives return no aux (has_aux=True).")
    if kwargs:
        raise TypeError(f"{name} takes no keyword arguments for the objective.")
    net = check_local_network(model, name)
    fun.heads(net)
    return fun, net, *unpack_batch(args)


def _sites(net: LocalNetwork, name: str) -> list[Point]:
    """Every site of `net`; an error if there are none or some are out of sight."""
    found = points(net)
    is_site = lambda node: isinstance(node, AbstractSite)
    every = [leaf for leaf in jtu.tree_leaves(net, is_leaf=is_site) if is_site(leaf)]
    if len(every) != len(found):
        raise ValueError(
            "A fwdeqx.local.Perturbed layer is nested inside another module; the "
            "estimators only see Perturbed layers placed directly in "
            "Block(layers) or in fwdeqx.local.Residual(layers)."
        )
    if not found:
        raise ValueError(
            f"{name} perturbs activities, but the model has no perturbation points: "
            "wrap its affine layers as fwdeqx.local.Perturbed(eqx.nn.Linear(...))."
        )
    return found


def _heads(net: Any) -> list:
    """The heads of `net` (or of a pytree of its structure)."""
    return [block.head for block in net.blocks if block.head is not None]


def _sites_and_heads(net: Any) -> list:
    """The site layers and the heads of `net`: the parts estimated without weight
    tangents by `ActivityPerturbation`."""
    return [point.site.layer for point in points(net)] + _heads(net)


def _weight_spec(net: LocalNetwork, exclude: Callable[[Any], list]) -> PyTree:
    """True at the floating leaves that get weight tangents: all but those of the
    parts `exclude(net)`."""
    spec = jtu.tree_map(eqx.is_inexact_array, net)
    false = lambda tree: jtu.tree_map(lambda _: False, tree)
    return eqx.tree_at(exclude, spec, replace=[false(n) for n in exclude(spec)])


def _sample(
    tangents: AbstractTangentDistribution, key: PRNGKeyArray, like: PyTree, k: int
) -> PyTree:
    """K tangents of `like`'s structure, stacked, drawn as `fwdeqx.ForwardGradient`
    draws them (one per key of `jax.random.split(key, k)`)."""
    if not jtu.tree_leaves(like):
        return like
    return sample_directions(tangents, jax.random.split(key, k), like)


def _derivatives(
    objective: AbstractLocalObjective,
    weighted: PyTree,
    rest: PyTree,
    zeros: list[Array] | None,
    inputs: Array,
    labels: Array,
    v: PyTree,
    u: list[Array] | None,
) -> tuple[list[Array], list[Array], tuple[list, list[Array]]]:
    """One forward-mode pass, vmapped over the examples and the K tangents (weight
    tangents `v`, activity tangents `u`, perturbing the site outputs by `zeros`):
    each counted head's loss copies `[N, copies]`, their derivatives
    `[N, K, copies]`, and the recorded `(sites, pooled)` of the batch."""
    loss = objective.per_example_loss

    def forward(w, deltas, xn, yn):
        net = eqx.combine(w, rest)
        recording = record(net, xn, deltas, detach=objective.detaches)
        copies, pooled = [], []
        for b in objective.heads(net):
            head = net.blocks[b].head
            assert head is not None
            c, p = head.loss_copies(recording.outputs[b], yn, loss)
            copies.append(c)
            pooled.append(p)
        return copies, (recording.sites, pooled)

    def example(xn, yn, un):
        def direction(vk, unk):
            return jax.jvp(
                lambda w, deltas: forward(w, deltas, xn, yn),
                (weighted, zeros),
                (vk, unk),
                has_aux=True,
            )

        return jax.vmap(direction, out_axes=(None, 0, None))(v, un)

    return jax.vmap(example, in_axes=(0, 0, 1))(inputs, labels, u)


def _reach(
    objective: AbstractLocalObjective, net: LocalNetwork, block: int
) -> list[tuple[int, int]]:
    """`(position in the derivatives, head's block)` of every loss `block` reaches."""
    counted = objective.heads(net)
    return [(i, counted[i]) for i in objective.reached(net, block)]


def _weight_grads(
    combine: AbstractCombiner,
    objective: AbstractLocalObjective,
    net: LocalNetwork,
    weighted: PyTree,
    derivs: list[Array],
    v: PyTree,
) -> PyTree:
    """The weight-perturbed leaves' estimates: the blocks that reach the same
    losses are combined together, from the batch mean of those losses'
    derivatives (summed over copies)."""
    if not jtu.tree_leaves(v):
        return weighted
    together: dict[tuple[int, ...], list[int]] = {}
    for b in range(len(net.blocks)):
        together.setdefault(tuple(objective.reached(net, b)), []).append(b)
    blocks = list(v.blocks)
    for reach, members in together.items():
        part = [v.blocks[b] for b in members]
        if not jtu.tree_leaves(part):
            continue
        if reach:
            d = ft.reduce(
                operator.add,
                [jnp.mean(jnp.sum(derivs[i], axis=-1), axis=0) for i in reach],
            )
            like = [weighted.blocks[b] for b in members]
            estimate = combine(d, part, tree_size(like))
        else:
            estimate = jtu.tree_map(lambda t: jnp.zeros_like(t[0]), part)
        for b, grad in zip(members, estimate, strict=True):
            blocks[b] = grad
    return eqx.tree_at(lambda t: t.blocks, v, replace=tuple(blocks))


def _head_grads(
    objective: AbstractLocalObjective, net: LocalNetwork, pooled: list, labels: Array
) -> list[PyTree]:
    """Each head's exact gradient (zero for a head whose loss does not count)."""
    counted = objective.heads(net)
    out = []
    for b, block in enumerate(net.blocks):
        if block.head is None:
            continue
        if b in counted:
            i = counted.index(b)
            out.append(block.head.grad(pooled[i], labels, objective.per_example_loss))
        else:
            params = eqx.filter(block.head, eqx.is_inexact_array)
            out.append(jtu.tree_map(jnp.zeros_like, params))
    return out


def _value(copies: list[Array]) -> Array:
    """The objective: the sum over counted heads of the batch mean of their loss
    (every copy has its value)."""
    return jnp.sum(jnp.stack([jnp.mean(c[:, 0]) for c in copies]))
