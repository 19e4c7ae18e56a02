"""The two test problems of the convergence experiment, with their constants exact
or as rigorous bounds:

- `quadratic`: f_i(x) = ½‖A(x − c_i)‖², A symmetric with AᵀA = H having
  eigenvalues evenly spaced in [0.1, 1] (L = 1). ∇f_i − ∇f = H(c̄ − c_i) does not
  depend on x, so σ² = (1/m) Σ_i ‖H(c_i − c̄)‖² exactly, f* = (1/m) Σ_i ½‖A(c_i −
  c̄)‖² exactly.
- `logistic`: f_i(w) = log(1 + exp(−y_i x_iᵀw)) + (λ/2)‖w‖²; L = λ_max(XᵀX)/(4m) +
  λ (a bound on the Hessian of f), σ² = (1/m) Σ_i ‖x_i‖² (as ∇f_i − ∇f is the
  centred −y_i x_i s_i with s_i ∈ (0, 1)), f* by Newton's method in float64.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np


@dataclass
class Problem:
    """f = (1/m) Σ_i f_i on Rⁿ, a start θ_0 and the constants of Theorem 4."""

    name: str
    n: int
    m: int
    component_loss: Callable[..., jax.Array]  # f_i(θ, *data_i)
    data: tuple[jax.Array, ...]  # arrays with leading axis m
    full_gradient: Callable[[jax.Array], jax.Array]  # θ -> ∇f(θ)
    theta0: np.ndarray
    lipschitz: float
    sigma2: float
    f0_minus_fstar: float
    strong_convexity: float
    constants: dict = field(default_factory=dict)


def make_quadratic(key, n, m) -> Problem:
    """The quadratic problem in n dimensions with m components."""
    key_q, key_c, key_x = jax.random.split(key, 3)
    eigenvalues = np.linspace(0.1, 1.0, n)
    q, _ = np.linalg.qr(np.asarray(jax.random.normal(key_q, (n, n)), np.float64))
    hessian = q @ np.diag(eigenvalues) @ q.T
    root = q @ np.diag(np.sqrt(eigenvalues)) @ q.T  # A, with AᵀA = H
    centres = np.asarray(jax.random.normal(key_c, (m, n)), np.float64)
    centre = centres.mean(axis=0)
    deviations = centres - centre
    sigma2 = float(np.mean(np.sum((deviations @ hessian) ** 2, axis=1)))
    fstar = float(np.mean(0.5 * np.sum((deviations @ root) ** 2, axis=1)))
    direction = np.asarray(jax.random.normal(key_x, (n,)), np.float64)
    theta0 = centre + 3.0 * direction
    error0 = theta0 - centre
    f0_minus_fstar = float(0.5 * error0 @ hessian @ error0)

    root32 = jnp.asarray(root, jnp.float32)
    hessian32 = jnp.asarray(hessian, jnp.float32)
    centre32 = jnp.asarray(centre, jnp.float32)

    def component_loss(theta, centre_i):
        return 0.5 * jnp.sum((root32 @ (theta - centre_i)) ** 2)

    def full_gradient(theta):
        return hessian32 @ (theta - centre32)

    return Problem(
        name="quadratic",
        n=n,
        m=m,
        component_loss=component_loss,
        data=(jnp.asarray(centres, jnp.float32),),
        full_gradient=full_gradient,
        theta0=theta0,
        lipschitz=float(eigenvalues.max()),
        sigma2=sigma2,
        f0_minus_fstar=f0_minus_fstar,
        strong_convexity=float(eigenvalues.min()),
        constants={
            "L_is": "largest eigenvalue of H = AᵀA (exact)",
            "sigma2_is": "(1/m) Σ_i ‖H(c_i − c̄)‖², exact and independent of x",
            "fstar": fstar,
            "f* and f0": "exact (closed form)",
            "hessian": hessian,
            "noise_covariance": (deviations @ hessian).T @ (deviations @ hessian) / m,
            "centre": centre,
        },
    )


def make_logistic(key, n, m, regularisation=0.1) -> Problem:
    """Ridge logistic regression on m Gaussian inputs, labels from a random teacher
    with 10% flipped."""
    key_x, key_w, key_flip, key_0 = jax.random.split(key, 4)
    features = np.asarray(jax.random.normal(key_x, (m, n)), np.float64)
    teacher = np.asarray(jax.random.normal(key_w, (n,)), np.float64)
    flips = np.asarray(jax.random.bernoulli(key_flip, 0.1, (m,)))
    labels = np.sign(features @ teacher) * np.where(flips, -1.0, 1.0)

    def objective(w):
        margins = labels * (features @ w)
        return np.mean(np.logaddexp(0.0, -margins)) + 0.5 * regularisation * w @ w

    def newton_minimum():
        w = np.zeros(n)
        for _ in range(50):
            s = 1.0 / (1.0 + np.exp(labels * (features @ w)))  # σ(−y xᵀw)
            grad = -(features * (labels * s)[:, None]).mean(0) + regularisation * w
            weights = s * (1 - s)
            hess = (features.T * weights) @ features / m + regularisation * np.eye(n)
            w = w - np.linalg.solve(hess, grad)
        return w

    w_star = newton_minimum()
    fstar = float(objective(w_star))
    theta0 = 2.0 * np.asarray(jax.random.normal(key_0, (n,)), np.float64)
    lipschitz = float(
        np.linalg.eigvalsh(features.T @ features).max() / (4 * m) + regularisation
    )
    sigma2 = float(np.mean(np.sum(features**2, axis=1)))

    x32 = jnp.asarray(features, jnp.float32)
    y32 = jnp.asarray(labels, jnp.float32)

    def component_loss(theta, x_i, y_i):
        return jnp.logaddexp(0.0, -y_i * jnp.dot(x_i, theta)) + 0.5 * regularisation * (
            jnp.sum(theta**2)
        )

    def full_loss(theta):
        margins = y32 * (x32 @ theta)
        return jnp.mean(jnp.logaddexp(0.0, -margins)) + 0.5 * regularisation * (
            jnp.sum(theta**2)
        )

    return Problem(
        name="logistic",
        n=n,
        m=m,
        component_loss=component_loss,
        data=(x32, y32),
        full_gradient=jax.grad(full_loss),
        theta0=theta0,
        lipschitz=lipschitz,
        sigma2=sigma2,
        f0_minus_fstar=float(objective(theta0) - fstar),
        strong_convexity=regularisation,
        constants={
            "L_is": "λ_max(XᵀX)/(4m) + λ (bound on the Hessian of f)",
            "sigma2_is": "(1/m) Σ_i ‖x_i‖² ≥ E_i‖∇f_i − ∇f‖² for every w (bound)",
            "sigma2_at_theta0": _logistic_sigma2(features, labels, theta0),
            "sigma2_at_minimum": _logistic_sigma2(features, labels, w_star),
            "fstar": fstar,
            "f* and f0": "f* by 50 Newton steps in float64",
            "regularisation": regularisation,
            "label_noise": 0.1,
        },
    )


def _logistic_sigma2(features, labels, w) -> float:
    """E_i‖∇f_i(w) − ∇f(w)‖² of the unregularised loss at `w` (exact)."""
    s = 1.0 / (1.0 + np.exp(labels * (features @ w)))
    per_example = -(features * (labels * s)[:, None])
    centred = per_example - per_example.mean(0)
    return float(np.mean(np.sum(centred**2, axis=1)))
