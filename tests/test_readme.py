"""The README's example runs as written and trains."""

import re
from pathlib import Path

import jax


def test_readme_example_runs_and_reduces_the_loss():
    readme = Path(__file__).parents[1] / "README.md"
    code = re.search(r"```python\n(.*?)```", readme.read_text(), re.S)
    assert code is not None
    namespace: dict = {}
    with jax.numpy_dtype_promotion("standard"):  # optax mixes int counts and floats
        exec(compile(code.group(1), str(readme), "exec"), namespace)
    model0 = namespace["eqx"].nn.MLP(2, 1, 32, 2, key=jax.random.key(0))
    x, y = namespace["x"], namespace["y"]
    initial = ((jax.vmap(model0)(x) - y) ** 2).mean()
    assert namespace["value"] < 0.5 * initial
