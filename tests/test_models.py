import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fwdeqx import models


@pytest.mark.parametrize(
    ("build", "shape", "num_params"),
    [
        (models.MLP, (784,), 784 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 10 + 10),
        (models.LogisticRegression, (784,), 7850),
        (
            models.CNN,
            (1, 28, 28),
            (9 * 64 + 64) + 3 * (9 * 64 * 64 + 64) + (64 * 7 * 7 * 10 + 10),
        ),
    ],
    ids=["mlp", "logreg", "cnn"],
)
def test_paper_models_shapes_and_sizes(build, shape, num_params):
    model = build(key=jax.random.key(0))
    leaves = jax.tree.leaves(model)
    assert sum(x.size for x in leaves if hasattr(x, "size")) == num_params
    x = jnp.zeros((2, *shape))
    labels = jnp.array([0, 3], dtype=jnp.int32)
    loss = models.cross_entropy(model, x, labels)
    assert loss.shape == () and np.isfinite(loss)
    assert 0.0 <= models.accuracy(model, x, labels) <= 1.0
