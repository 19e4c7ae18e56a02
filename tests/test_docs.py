"""Every public name of fwdeqx is documented and appears in the API reference.

Adding a public name without documenting it makes this file fail.

**Which names are public.** For `fwdeqx` and its public submodules `fwdeqx.testfns`,
`fwdeqx.models`, `fwdeqx.data`, `fwdeqx.distributed` and `fwdeqx.local` (each only
when it can be imported): the module's `__all__`, submodules excepted, when it
defines one; otherwise the names its `dir()` finds. The `dir()` rule: for `fwdeqx`,
the names in `dir(fwdeqx)` that do not start with "_", submodules excepted; for a
submodule, the names in its `dir()` that do not start with "_", are not modules, and
were defined inside fwdeqx (a class or function whose `__module__` is outside
fwdeqx, such as `jnp`, `Array` or `Callable`, was only imported; a constant counts
when the module assigns it or re-exports it with `from ... import NAME as NAME`).
A module's `__all__` must hold every name the `dir()` rule finds that was defined in
the module or below it (not imported from elsewhere in fwdeqx), so a new public name
cannot escape the rules below by being left out of `__all__`.

**The rules.** Every public name

1. has a docstring of its own: for functions and classes the one written in the
   source (not the `Foo(a, b)` line that dataclasses and `eqx.Module` generate, nor
   one inherited); for constants the string literal right after the assignment (the
   attribute docstring that mkdocstrings renders);
2. documents its arguments when it takes any: a function with at least one
   parameter, or a class whose constructor takes at least one, has an
   `**Arguments:**` section (in the class or `__init__` docstring; a record such as
   a `NamedTuple` or frozen dataclass may use `**Attributes:**` or `**Fields:**`
   instead). Two hand-offs count as documenting them: "see [`fwdeqx.x`][] for the
   arguments", and, for a class users obtain from a factory, "Build it with
   [`fwdeqx.f`][]" (or "returned by" / "built by"). Exceptions are exempt: their
   argument is the message;
3. is rendered by a `::: <full public path>` directive (e.g. `::: fwdeqx.make_step`,
   `::: fwdeqx.data.load_dataset`) in a page under docs/api/.

The test also checks the opposite direction: every `:::` directive in docs/api/
names an object that exists, so renaming a public name breaks this test and not only
the docs build.
"""

import ast
import dataclasses
import importlib
import inspect
import re
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import pytest

import fwdeqx


DOCS_API = Path(__file__).resolve().parent.parent / "docs" / "api"
SUBMODULES = (
    "fwdeqx.testfns",
    "fwdeqx.models",
    "fwdeqx.data",
    "fwdeqx.distributed",
    "fwdeqx.local",
)
ARGUMENT_HEADINGS = ("**Arguments:**",)
RECORD_HEADINGS = ("**Arguments:**", "**Attributes:**", "**Fields:**")
HAND_OFFS = (
    re.compile(r"\[`fwdeqx\.[\w.]+`\]\[\][^.]*\bfor the arguments", re.IGNORECASE),
    re.compile(
        r"(Build it with|[Rr]eturned by|[Bb]uilt by)\s+\[`fwdeqx\.[\w.]+`\]\[\]"
    ),
)


def _importable_submodules() -> list[types.ModuleType]:
    modules = []
    for name in SUBMODULES:
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            continue
    return modules


def _is_defined_in_fwdeqx(module: types.ModuleType, name: str, obj: Any) -> bool:
    owner = getattr(obj, "__module__", None)
    if isinstance(owner, str):  # classes, functions, instances of classes
        return owner.split(".")[0] == "fwdeqx"
    return _constant_source(module, name) is not None  # str, int, tuple, dict, ...


def _dir_names(module: types.ModuleType) -> list[str]:
    """The public names of `module` by the `dir()` rule of the module docstring."""
    return [
        name
        for name in dir(module)
        if not name.startswith("_")
        and not inspect.ismodule(getattr(module, name))
        and (
            module is fwdeqx
            or _is_defined_in_fwdeqx(module, name, getattr(module, name))
        )
    ]


def _public_names_of(module: types.ModuleType) -> list[str]:
    if not hasattr(module, "__all__"):
        return _dir_names(module)
    return [
        name
        for name in module.__all__
        if not inspect.ismodule(getattr(module, name, None))
    ]


def _is_defined_in_package(module: types.ModuleType, name: str, obj: Any) -> bool:
    """Whether `module.name` was defined in `module` or below it (`fwdeqx.data`'s
    names in `fwdeqx.data._x`), not imported from elsewhere in fwdeqx."""
    owner = getattr(obj, "__module__", None)
    if not isinstance(owner, str):
        source = _constant_source(module, name)
        owner = None if source is None else source[0]
    return owner is not None and (owner + ".").startswith(module.__name__ + ".")


def public_names() -> list[tuple[str, Any]]:
    """`(full path, object)` for every public name, as defined in the module
    docstring."""
    found = []
    for module in [fwdeqx, *_importable_submodules()]:
        found += [
            (f"{module.__name__}.{name}", getattr(module, name, None))
            for name in _public_names_of(module)
        ]
    return sorted(found, key=lambda item: item[0])


# --- docstrings of constants, read from the source --------------------------------


def _module_ast(module_name: str) -> ast.Module | None:
    module = sys.modules.get(module_name) or importlib.import_module(module_name)
    path = getattr(module, "__file__", None)
    if path is None or not path.endswith(".py"):
        return None
    return ast.parse(Path(path).read_text(encoding="utf-8"))


def _constant_source(module: types.ModuleType, name: str) -> tuple[str, str] | None:
    """`(module name, name)` where the constant `module.name` is assigned, following
    `from ... import name as name` re-exports; `None` when it is not."""
    module_name = module.__name__
    for _ in range(10):  # re-export chains are short
        tree = _module_ast(module_name)
        if tree is None:
            return None
        step = _find_binding(tree, module_name, name)
        if step is None:
            return None
        if step == (module_name, name):
            return step
        module_name, name = step
    return None


def _package_of(module_name: str) -> str:
    module = sys.modules[module_name]
    is_package = hasattr(module, "__path__")
    return module_name if is_package else module_name.rpartition(".")[0]


def _find_binding(
    tree: ast.Module, module_name: str, name: str
) -> tuple[str, str] | None:
    for node in tree.body:
        if _assigns(node, name):
            return module_name, name
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.asname == name and alias.name == name:
                    if node.level == 0:
                        source = node.module or ""
                    else:
                        package = _package_of(module_name)
                        for _ in range(node.level - 1):
                            package = package.rpartition(".")[0]
                        source = f"{package}.{node.module}" if node.module else package
                    if source.split(".")[0] != "fwdeqx":
                        return None
                    return source, name
    return None


def _assigns(node: ast.stmt, name: str) -> bool:
    if isinstance(node, ast.Assign):
        return any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
    if isinstance(node, ast.AnnAssign):
        return isinstance(node.target, ast.Name) and node.target.id == name
    return False


def _attribute_docstring(module_name: str, name: str) -> str | None:
    tree = _module_ast(module_name)
    assert tree is not None
    body = tree.body
    for index, node in enumerate(body[:-1]):
        following = body[index + 1]
        if (
            _assigns(node, name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            return inspect.cleandoc(following.value.value)
    return None


# --- docstrings of functions and classes -------------------------------------------


def _own_docstring(path: str, obj: Any) -> str | None:
    if inspect.isclass(obj):
        doc = obj.__dict__.get("__doc__")
        generated = (
            (dataclasses.is_dataclass(obj) or _is_namedtuple(obj))
            and isinstance(doc, str)
            and doc.startswith(f"{obj.__name__}(")
        )
        return None if generated or not doc else inspect.cleandoc(doc)
    if callable(obj) and not _is_constant(obj):
        doc = getattr(obj, "__doc__", None)
        return inspect.cleandoc(doc) if doc else None
    module_name, _, name = path.rpartition(".")
    source = _constant_source(importlib.import_module(module_name), name)
    return None if source is None else _attribute_docstring(*source)


def _is_constant(obj: Any) -> bool:
    return isinstance(obj, str | int | float | tuple | dict | list | frozenset)


def _is_namedtuple(cls: type) -> bool:
    return issubclass(cls, tuple) and hasattr(cls, "_fields")


def _parameters(obj: Any) -> list[str]:
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return []
    return [name for name in signature.parameters if name != "self"]


def _argument_docs_missing(obj: Any, doc: str) -> bool:
    """True when `obj` takes arguments and `doc` neither documents nor hands them
    off (rule 2 of the module docstring)."""
    if _is_constant(obj) or not callable(obj):
        return False
    if inspect.isclass(obj) and issubclass(obj, BaseException):
        return False
    if not _parameters(obj):
        return False
    if any(pattern.search(doc) for pattern in HAND_OFFS):
        return False
    headings = ARGUMENT_HEADINGS
    texts = [doc]
    if inspect.isclass(obj):
        if dataclasses.is_dataclass(obj) or _is_namedtuple(obj):
            headings = RECORD_HEADINGS
        init = obj.__dict__.get("__init__")
        texts.append(getattr(init, "__doc__", None) or "")
    return not any(heading in text for heading in headings for text in texts)


# --- the API pages -----------------------------------------------------------------


def api_directives() -> dict[str, Path]:
    """Identifier of every `::: identifier` line under docs/api/ -> its page."""
    directives = {}
    for page in sorted(DOCS_API.rglob("*.md")):
        for line in page.read_text(encoding="utf-8").splitlines():
            match = re.match(r"^:::\s+([\w.]+)\s*$", line)
            if match:
                directives[match.group(1)] = page
    return directives


PUBLIC = public_names()
IDS = [path for path, _ in PUBLIC]


def test_public_api_is_found():
    paths = set(IDS)
    # A canary against this file silently finding nothing.
    assert {"fwdeqx.filter_value_and_fwd_grad", "fwdeqx.make_step"} <= paths
    assert "fwdeqx.testfns.beale" in paths
    assert not any(p.endswith((".jnp", ".Array", ".Callable", ".eqx")) for p in paths)


@pytest.mark.parametrize(
    "module",
    [fwdeqx, *_importable_submodules()],
    ids=lambda module: module.__name__,
)
def test_all_is_complete(module):
    if not hasattr(module, "__all__"):
        pytest.skip(f"{module.__name__} has no __all__")
    missing = sorted(
        name
        for name in set(_dir_names(module)) - set(module.__all__)
        if _is_defined_in_package(module, name, getattr(module, name))
    )
    assert not missing, (
        f"{module.__name__} has public names missing from its __all__: {missing}. "
        "Add them to __all__, or make them private."
    )


@pytest.mark.parametrize(("path", "obj"), PUBLIC, ids=IDS)
def test_has_docstring(path, obj):
    doc = _own_docstring(path, obj)
    assert doc, f"`{path}` has no docstring of its own."


@pytest.mark.parametrize(("path", "obj"), PUBLIC, ids=IDS)
def test_documents_arguments(path, obj):
    doc = _own_docstring(path, obj) or ""
    assert not _argument_docs_missing(obj, doc), (
        f"`{path}` takes arguments {_parameters(obj)} but its docstring has no "
        "`**Arguments:**` section (see the rules at the top of tests/test_docs.py)."
    )


@pytest.mark.parametrize("path", IDS)
def test_is_in_api_reference(path):
    assert path in api_directives(), (
        f"`{path}` is public but no page under docs/api/ renders it; add "
        f"`::: {path}` to the page of its area."
    )


def test_api_directives_exist():
    for identifier, page in api_directives().items():
        module_name, _, name = identifier.rpartition(".")
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            # `fwdeqx.TrainStep.init`-style member paths.
            owner_module, _, owner = module_name.rpartition(".")
            module = getattr(importlib.import_module(owner_module), owner)
        assert hasattr(module, name), f"{page.name}: `::: {identifier}` does not exist."


def test_rules_catch_undocumented_names():
    """The checks above on made-up objects: what must fail does."""
    import equinox as eqx

    class Undocumented(eqx.Module):
        size: int

    class Documented(eqx.Module):
        """A module.

        **Arguments:**

        - `size`: a size.
        """

        size: int

    def takes_arguments(x):
        """Does something with `x`."""

    def takes_nothing():
        """Does something."""

    def hands_off(x):
        """See [`fwdeqx.filter_value_and_fwd_grad`][] for the arguments."""

    assert _own_docstring("m.Undocumented", Undocumented) is None
    assert _own_docstring("m.Documented", Documented) is not None
    assert not _argument_docs_missing(Documented, Documented.__doc__)
    assert _argument_docs_missing(takes_arguments, takes_arguments.__doc__)
    assert not _argument_docs_missing(takes_nothing, takes_nothing.__doc__)
    assert not _argument_docs_missing(hands_off, hands_off.__doc__)


def test_code_blocks_in_docs_are_valid_python():
    """Every ```python block of the hand-written pages parses (the snippets of
    Getting started were also run by hand; running them all here would take ~30 s)."""
    docs = DOCS_API.parent
    for page in sorted(docs.rglob("*.md")):
        text = page.read_text(encoding="utf-8")
        blocks = re.findall(r"```python\n(.*?)```", text, re.S)
        for index, block in enumerate(blocks):
            try:
                ast.parse(textwrap.dedent(block))
            except SyntaxError as error:
                pytest.fail(f"{page.relative_to(docs)}, python block {index}: {error}")
