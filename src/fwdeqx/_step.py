"""Algorithm 1 as a reusable, jitted training step."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import optax
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from ._estimators import AbstractEstimator


class TrainStep(eqx.Module):
    """One step of Algorithm 1: estimate the gradient, then update with `optimizer`.

    Build it with [`fwdeqx.make_step`][]. Calling it runs one jitted step:
    `step(model, opt_state, batch, key) -> (model, opt_state, loss)`.
    """

    loss: Callable
    optimizer: optax.GradientTransformation
    estimator: AbstractEstimator

    def init(self, model: PyTree) -> optax.OptState:
        """The optimizer state for `model` (its floating-point array leaves)."""
        return self.optimizer.init(eqx.filter(model, eqx.is_inexact_array))

    @eqx.filter_jit
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
        - `batch`: passed to the loss as `loss(model, batch)`.
        - `key`: PRNG key for the estimator; use a fresh one every step.

        **Returns:**

        `(model, opt_state, loss)`: the updated model and optimizer state, and the
        loss at the model *before* the update.
        """
        return estimate_and_update(
            self.estimator, self.loss, self.optimizer, model, opt_state, batch, key
        )


def estimate_and_update(
    estimator: AbstractEstimator,
    loss: Callable,
    optimizer: optax.GradientTransformation,
    model: PyTree,
    opt_state: optax.OptState,
    batch: Any,
    key: PRNGKeyArray,
) -> tuple[PyTree, optax.OptState, Float[Array, ""]]:
    """The body of every training step (`fwdeqx.TrainStep` and the distributed
    step): estimate the gradient, let the optimizer turn it into updates, apply
    them to the floating leaves of the model."""
    value, grads = estimator(loss, model, batch, key=key)
    params = eqx.filter(model, eqx.is_inexact_array)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return eqx.apply_updates(model, updates), opt_state, value


def check_estimator(estimator: object) -> None:
    if not isinstance(estimator, AbstractEstimator):
        raise TypeError(
            "`estimator` must be an estimator such as `fwdeqx.ForwardGradient()` or "
            f"`fwdeqx.Backprop()`, got {estimator!r}."
        )


def check_optimizer(optimizer: object) -> None:
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            "`optimizer` must be an optax GradientTransformation such as "
            f"`optax.sgd(1e-3)`, got {optimizer!r}."
        )


def make_step(
    loss: Callable,
    optimizer: optax.GradientTransformation,
    estimator: AbstractEstimator,
) -> TrainStep:
    """Algorithm 1 of Baydin et al. (2022) for any estimator and optax optimizer.

    **Arguments:**

    - `loss`: `loss(model, batch) -> scalar`.
    - `optimizer`: any `optax.GradientTransformation` (`optax.sgd`, `optax.adam`,
        chains, schedules, ...).
    - `estimator`: how gradients are obtained, e.g. `fwdeqx.ForwardGradient()` or
        `fwdeqx.Backprop()`.

    **Returns:**

    A jitted [`fwdeqx.TrainStep`][]: `step(model, opt_state, batch, key) ->
    (model, opt_state, loss)`; `step.init(model)` gives the initial optimizer state.

    !!! Example

        ```python
        step = fwdeqx.make_step(loss, optax.sgd(1e-2), fwdeqx.ForwardGradient())
        opt_state = step.init(model)
        for batch in batches:
            key, subkey = jax.random.split(key)
            model, opt_state, value = step(model, opt_state, batch, subkey)
        ```
    """
    check_estimator(estimator)
    check_optimizer(optimizer)
    return TrainStep(loss, optimizer, estimator)
