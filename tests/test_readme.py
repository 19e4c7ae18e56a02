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


def test_readme_setup_installs_from_the_checkout():
    """Two commands do all the set-up on a fresh clone: one installs and runs the
    main job, one installs the test runner and runs the tests. Nothing is
    installed under a name that is not on the index (fwdeqx is not on PyPI)."""
    import tomllib

    root = Path(__file__).parents[1]
    text = (root / "README.md").read_text()
    commands = re.findall(r"```bash\n(.*?)```", text, re.S)
    assert any(
        'pip install -e ".[experiments]" && python -m experiments.mnist_compare' in c
        for c in commands
    )
    assert any("pip install nox && nox -s tests" in c for c in commands)
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for doc in (text, (root / "docs" / "getting-started.md").read_text()):
        assert not re.search(r"pip install [\"']?fwdeqx", doc)
        for names in re.findall(r'pip install -e "\.\[([\w,]+)\]"', doc):
            assert set(names.split(",")) <= set(extras), names


def test_results_are_output_only_and_docs_carry_no_machine_paths():
    """results/ is ignored and untracked; the docs link no file under it and name
    no path of the machine that wrote them."""
    import shutil
    import subprocess

    root = Path(__file__).parents[1]
    ignored = (root / ".gitignore").read_text().splitlines()
    assert "results/" in ignored
    if shutil.which("git") and (root / ".git").exists():
        tracked = subprocess.run(
            ["git", "ls-files", "results"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert tracked == ""
    machine = re.compile(r"/work/|/home/|/root/|/Users/|site-packages")
    for page in [root / "README.md", *sorted((root / "docs").rglob("*.md"))]:
        text = page.read_text()
        assert not re.search(r"\]\((\.\./)*results/", text), page
        assert not machine.search(text), (page, machine.search(text))
