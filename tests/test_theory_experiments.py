"""The theory experiments (`experiments.beale`, `.unbiasedness`, `.convergence`) in
their `--quick` mode, and the Beale forward-gradient mean against the true gradient.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from experiments import beale, convergence, unbiasedness

import fwdeqx
from fwdeqx.testfns import BEALE_PAPER_POINT


def _run(module, tmp_path):
    record = module.main(["--quick", "--out", str(tmp_path), "--seed", "0"])
    on_disk = json.loads((tmp_path / f"{module.NAME}.json").read_text())
    assert on_disk["experiment"] == module.NAME
    assert on_disk["quick"] is True
    for figure in on_disk["figures"]:
        assert (tmp_path / figure).stat().st_size > 10_000
    return record, on_disk


@pytest.mark.usefixtures("fast_compile")
def test_beale_quick(tmp_path):
    _, data = _run(beale, tmp_path)
    assert set(data["figures"]) == {
        "beale_arrows.png",
        "beale_error_vs_k.png",
        "beale_trajectories.png",
    }
    assert set(data["arrows"]["mean_forward_gradients"]) == {"5", "10", "100"}
    true = np.asarray(data["true_gradient"])
    np.testing.assert_allclose(
        true, jax.grad(fwdeqx.testfns.beale)(jnp.asarray(BEALE_PAPER_POINT)), rtol=1e-5
    )
    rows = data["error_vs_k"]["results"]
    for name in ("gaussian", "rademacher"):
        first, last = rows[name][0], rows[name][-1]
        assert first["K"] == 1
        assert last["relative_error_rms"] < first["relative_error_rms"]
        assert last["relative_error_rms_theory"] == pytest.approx(
            np.sqrt((2 + (1 if name == "gaussian" else -1)) / last["K"])
        )
    # In 2-D, a single Rademacher forward gradient is ∇f ± (∂_y f, ∂_x f): its
    # relative error is exactly 1 for every draw.
    assert rows["rademacher"][0]["relative_error_mean"] == pytest.approx(1.0, abs=1e-5)
    assert rows["rademacher"][0]["relative_error_std"] < 1e-5
    for name in ("beale", "rosenbrock"):
        trajectory = data["trajectories"][name]
        assert trajectory["fgd_diverged_seeds"] == 0
        start = np.asarray(trajectory["start"])
        start_loss = float(getattr(fwdeqx.testfns, name)(jnp.asarray(start)))
        assert trajectory["gd_final_loss"] < start_loss
        assert max(trajectory["fgd_final_loss"]) < start_loss


@pytest.mark.usefixtures("fast_compile")
def test_unbiasedness_quick(tmp_path):
    """Second moments against theory, |z| < 5 for each of the 12 (problem, n,
    distribution) cells; the mean of 4000 samples is close to normal here, so the
    false-failure probability is about 12 × 6e-7."""
    _, data = _run(unbiasedness, tmp_path)
    for problem, per_distribution in data["results"].items():
        assert set(per_distribution) == {"gaussian", "rademacher", "scaled_gaussian"}
        for name, entries in per_distribution.items():
            assert [e["n"] for e in entries] == data["sizes"][problem]
            for entry in entries:
                for field in (
                    "N",
                    "relative_error_rms",
                    "relative_error_rms_ci95",
                    "relative_error_rms_theory",
                    "second_moment_ratio",
                    "second_moment_ratio_ci95",
                    "second_moment_theory",
                    "projection_on_grad",
                ):
                    assert field in entry
                assert abs(entry["second_moment_z"]) < 5, (problem, name, entry["n"])
                expected = 4.0 if name == "scaled_gaussian" else 1.0
                assert entry["projection_theory"] == expected
                assert (
                    abs(entry["projection_on_grad"] - expected)
                    < 5 * (entry["projection_on_grad_ci95"] / 1.96) + 0.02 * expected
                ), (problem, name, entry["n"])


def test_convergence_quick(tmp_path):
    """Theorem 4: measured / bound ≤ 1 at every grid point where α ≤ 1/(2·L·C1),
    both for the Monte-Carlo estimate and (quadratic) the exact expectation."""
    _, data = _run(convergence, tmp_path)
    assert data["violations"] == []
    for problem, per_distribution in data["results"].items():
        constants = data["problems"][problem]
        for field in ("L", "sigma2", "f0_minus_fstar"):
            assert isinstance(constants[field], float) and constants[field] > 0
        assert "uniform" in constants["sampling"]
        for name, entry in per_distribution.items():
            n = constants["n"]
            assert entry["C1"] == (n * (n + 2) if name == "gaussian" else n * n)
            applies = [row for row in entry["grid"] if row["theorem_applies"]]
            assert len(applies) > 0
            assert any(not row["theorem_applies"] for row in entry["grid"])
            for row in applies:
                assert row["ratio"] <= 1.0, (problem, name, row)
                if problem == "quadratic":
                    assert row["ratio_exact"] <= 1.0, (problem, name, row)


@pytest.mark.usefixtures("fast_compile")
def test_exact_moment_recursion_matches_monte_carlo(getkey):
    """The exact E‖∇f(θ_k)‖² of the quadratic against 4000 simulated runs: the
    Monte-Carlo mean is within 5 standard errors at k = 10 and 30 (about 1e-6
    false-failure probability each, normal approximation). Both distributions run
    in one compiled program, on independent keys."""
    problem = convergence.make_quadratic(jax.random.key(1), 3, 5)
    steps = 31
    alpha = np.asarray([0.05])
    settings = {
        name: (convergence.TANGENTS[name], jnp.asarray(alpha, jnp.float32))
        for name in ("gaussian", "rademacher")
    }
    simulated = convergence.simulate(
        problem, settings, getkey(), seeds=4000, steps=steps
    )
    assert set(simulated) == set(settings)
    for name, (mean, stderr) in simulated.items():
        exact = convergence.exact_quadratic_moments(problem, name, alpha, steps)
        for k in (10, 30):
            assert abs(mean[k, 0] - exact[k, 0]) < 5 * stderr[k, 0], (name, k)


@pytest.mark.usefixtures("fast_compile")
@pytest.mark.parametrize("tangents", [fwdeqx.Gaussian(), fwdeqx.Rademacher()])
def test_beale_mean_of_10000_forward_gradients(tangents, getkey):
    """ḡ = mean of K = 10,000 forward gradients at the paper's point. Per component,
    Var[ḡ_j] = (‖∇f‖² + (∇f)_j²)/K for Gaussian tangents (E[ggᵀ] = ‖a‖²I + 2aaᵀ) and
    (∇f)_{other}²/K for Rademacher in 2-D; we allow 5 standard deviations per
    component: false-failure probability < 2 × 5.7e-7 (normal approximation, exact
    enough at K = 10,000)."""
    point = jnp.asarray(BEALE_PAPER_POINT)
    true = np.asarray(jax.grad(fwdeqx.testfns.beale)(point), np.float64)
    num = 10_000
    grad = fwdeqx.filter_fwd_grad(
        fwdeqx.testfns.beale, tangents=tangents, num_tangents=num
    )
    estimate = np.asarray(grad(point, key=getkey()), np.float64)
    if isinstance(tangents, fwdeqx.Gaussian):
        variance = (true @ true + true**2) / num
    else:
        variance = true[::-1] ** 2 / num
    assert np.all(np.abs(estimate - true) <= 5 * np.sqrt(variance))
    # And the tolerance is tight enough to catch a bias of a few per cent.
    assert np.all(5 * np.sqrt(variance) < 0.1 * np.linalg.norm(true))
