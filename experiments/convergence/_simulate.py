"""Forward SGD θ_{k+1} = θ_k − α (∇f_{i_k}(θ_k)·v_k) v_k, simulated for many step
sizes and seeds at once (`jax.vmap`) in one compiled `lax.scan`."""

import functools as ft

import jax
import jax.numpy as jnp
import numpy as np

import fwdeqx

from ._problems import Problem


def simulate(problem: Problem, settings, key, *, seeds, steps):
    """Forward SGD for every tangent distribution in `settings` (a dict name ->
    (distribution, step sizes)), every step size (vmapped) and seed (vmapped), in one
    compiled program. Returns name -> (mean, stderr), each of shape
    (steps, number of step sizes): E‖∇f(θ_k)‖² estimated by the mean over seeds and
    its standard error, for k = 0 … steps−1."""

    def one_step(component_grad, theta, key_, alpha):
        key_i, key_v = jax.random.split(key_)
        i = jax.random.randint(key_i, (), 0, problem.m)
        data_i = tuple(array[i] for array in problem.data)
        return theta - alpha * component_grad(theta, *data_i, key=key_v)

    def grad_norm2(theta):
        value = jnp.sum(problem.full_gradient(theta) ** 2)
        return jnp.where(jnp.isnan(value), jnp.inf, value)

    def body(thetas, key_):
        new_thetas, outputs = {}, {}
        for (name, (tangents, alphas)), key_name in zip(
            settings.items(), jax.random.split(key_, len(settings)), strict=True
        ):
            component_grad = fwdeqx.filter_fwd_grad(
                problem.component_loss, tangents=tangents
            )
            norms = jax.vmap(jax.vmap(grad_norm2))(thetas[name])  # (alphas, seeds)
            outputs[name] = (
                jnp.mean(norms, axis=1),
                jnp.std(norms, axis=1) / float(np.sqrt(seeds)),
            )
            keys = jax.random.split(key_name, (alphas.shape[0], seeds))
            step = jax.vmap(
                jax.vmap(ft.partial(one_step, component_grad), in_axes=(0, 0, None))
            )
            new_thetas[name] = step(thetas[name], keys, alphas)
        return new_thetas, outputs

    theta0 = jnp.asarray(problem.theta0, jnp.float32)
    thetas = {
        name: jnp.broadcast_to(theta0, (alphas.shape[0], seeds, problem.n))
        for name, (_, alphas) in settings.items()
    }

    @jax.jit
    def run(thetas_, keys_):
        return jax.lax.scan(body, thetas_, keys_)[1]

    outputs = run(thetas, jax.random.split(key, steps))
    return {
        name: (np.asarray(mean, np.float64), np.asarray(stderr, np.float64))
        for name, (mean, stderr) in outputs.items()
    }
