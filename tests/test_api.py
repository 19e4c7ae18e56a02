"""The public API can be discovered: `help(fwdeqx)` lists it, the submodules are
reachable after a bare `import fwdeqx`, and `__all__` names only what exists.

(That every name in `__all__` is documented and rendered is checked by
tests/test_docs.py, which reads `__all__`.)
"""

import inspect
import pydoc
import subprocess
import sys
import types

import pytest

import fwdeqx
import fwdeqx.data
import fwdeqx.local


PACKAGES = (fwdeqx, fwdeqx.data, fwdeqx.local)
IDS = [package.__name__ for package in PACKAGES]


def _help_text(module: types.ModuleType) -> str:
    return pydoc.render_doc(module, renderer=pydoc.plaintext)


def _section(text: str, heading: str) -> str:
    """The lines of pydoc's section `heading` (up to the next unindented line)."""
    lines = text.splitlines()
    start = lines.index(heading) + 1
    end = next(
        (i for i in range(start, len(lines)) if lines[i] and not lines[i][0].isspace()),
        len(lines),
    )
    return "\n" + "\n".join(lines[start:end])


@pytest.mark.parametrize("package", PACKAGES, ids=IDS)
def test_defines_all_of_existing_names(package):
    assert hasattr(package, "__all__"), f"{package.__name__} has no __all__"
    absent = [name for name in package.__all__ if not hasattr(package, name)]
    assert not absent, f"{package.__name__}.__all__ names what it lacks: {absent}"


@pytest.mark.parametrize("package", (fwdeqx, fwdeqx.data), ids=["fwdeqx", "data"])
def test_help_lists_the_api(package):
    text = _help_text(package)
    classes, functions = _section(text, "CLASSES"), _section(text, "FUNCTIONS")
    for name in package.__all__:
        obj = getattr(package, name)
        if inspect.isclass(obj):
            assert f"    class {name}(" in classes, f"help() lacks class {name}"
        elif inspect.isfunction(obj):
            assert f"\n    {name}(" in functions, f"help() lacks function {name}"
        elif not inspect.ismodule(obj):
            assert f"    {name} = " in _section(text, "DATA"), f"help() lacks {name}"


def test_help_names_the_main_entry_points():
    description = _section(_help_text(fwdeqx), "DESCRIPTION")
    for name in ("filter_value_and_fwd_grad", "ForwardGradient", "make_step"):
        assert f"`{name}`" in description
    for submodule in ("data", "local", "models"):
        assert f"`fwdeqx.{submodule}`" in description


def test_submodules_are_reachable_after_a_bare_import():
    """In a fresh interpreter, since this one has imported the submodules itself."""
    code = (
        "import fwdeqx\n"
        "print(fwdeqx.data.load_dataset.__name__, fwdeqx.local.LocalLoss.__name__, "
        "fwdeqx.models.MLP.__name__, fwdeqx.testfns.beale.__name__, "
        "fwdeqx.distributed.__name__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "load_dataset",
        "LocalLoss",
        "MLP",
        "beale",
        "fwdeqx.distributed",
    ]
