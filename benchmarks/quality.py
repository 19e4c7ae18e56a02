"""Estimator quality: the relative mean squared error E‖g − ∇f‖² / ‖∇f‖² of the
forward gradient for each tangent distribution, on the paper's MLP.

For K tangents, Gaussian has (n + 1)/K and Rademacher (n − 1)/K exactly
(n parameters); the measured values are Monte-Carlo means with their standard error.
"""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

import fwdeqx

from ._setups import DISTRIBUTIONS, loss, mlp_setup, num_params


def _sq_norm(tree: Any) -> jax.Array:
    return sum(jnp.sum(jnp.square(leaf)) for leaf in jtu.tree_leaves(tree))


def relative_error_fn(distribution: fwdeqx.AbstractTangentDistribution, k: int):
    estimate = fwdeqx.filter_fwd_grad(loss, tangents=distribution, num_tangents=k)

    @eqx.filter_jit
    def relative_error(model, batch, exact, key):
        grad = estimate(model, batch, key=key)
        diff = jtu.tree_map(lambda g, e: g - e, grad, exact)
        cosine = sum(
            jnp.vdot(g, e)
            for g, e in zip(jtu.tree_leaves(grad), jtu.tree_leaves(exact), strict=True)
        ) / jnp.sqrt(_sq_norm(grad) * _sq_norm(exact))
        return _sq_norm(diff) / _sq_norm(exact), cosine

    return relative_error


def theory(
    distribution: fwdeqx.AbstractTangentDistribution, n: int, k: int
) -> float | None:
    if isinstance(distribution, fwdeqx.Gaussian):
        return (n + 1) / k
    if isinstance(distribution, fwdeqx.Rademacher):
        return (n - 1) / k
    return None


def run(quick: bool = False) -> dict:
    setup = mlp_setup("paper-mlp", 16 if quick else 1024, 2, 4 if quick else 64)
    samples = 3 if quick else 100
    ks = (1,) if quick else (1, 4)
    model_key, batch_key, sample_key = jax.random.split(jax.random.key(0), 3)
    model = setup.model(model_key)
    batch = setup.batch(batch_key)
    exact = eqx.filter_grad(loss)(model, batch)
    n = num_params(model)
    rows: dict[str, Any] = {}
    distributions = ("gaussian", "lowrank") if quick else tuple(DISTRIBUTIONS)
    for name in distributions:
        distribution = DISTRIBUTIONS[name]
        for k in ks:
            relative_error = relative_error_fn(distribution, k)
            keys = jax.random.split(jax.random.fold_in(sample_key, k), samples)
            values = np.array(
                [relative_error(model, batch, exact, key) for key in keys], np.float64
            )
            errors, cosines = values[:, 0], values[:, 1]
            row = {
                "relative_mse": float(errors.mean()),
                "stderr": float(errors.std(ddof=1) / np.sqrt(samples)),
                "relative_mse_over_n": float(errors.mean() / n),
                "theory": theory(distribution, n, k),
                "mean_cosine": float(cosines.mean()),
                "samples": samples,
            }
            rows[f"{name}-k{k}"] = row
            print(
                f"[quality] {name} K={k}: E|g-grad|^2/|grad|^2 = "
                f"{row['relative_mse']:.4g} ± {row['stderr']:.2g} "
                f"(theory {row['theory']}, n = {n})",
                flush=True,
            )
    return {"description": setup.description, "num_params": n, "estimators": rows}
