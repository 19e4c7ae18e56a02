import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fwdeqx import testfns


def test_beale_minimum_and_paper_point():
    minimum = jnp.array(testfns.BEALE_MINIMUM)
    assert np.allclose(testfns.beale(minimum), 0.0)
    assert np.allclose(jax.grad(testfns.beale)(minimum), 0.0, atol=1e-6)
    x, y = testfns.BEALE_PAPER_POINT
    expected = (
        (1.5 - x + x * y) ** 2
        + (2.25 - x + x * y**2) ** 2
        + (2.625 - x + x * y**3) ** 2
    )
    assert np.allclose(testfns.beale(jnp.array([x, y])), expected)


@pytest.mark.parametrize("n", [2, 5])
def test_rosenbrock_minimum(n):
    minimum = testfns.rosenbrock_minimum(n)
    assert np.allclose(testfns.rosenbrock(minimum), 0.0)
    assert np.allclose(jax.grad(testfns.rosenbrock)(minimum), 0.0)
    assert testfns.rosenbrock(minimum + 0.1) > 0.0


def test_rosenbrock_rejects_one_dimension():
    with pytest.raises(ValueError, match="at least 2"):
        testfns.rosenbrock(jnp.ones(1))
