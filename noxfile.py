"""Developer sessions: `nox -s tests lint typecheck docs bench`."""

import nox


nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests", "lint", "typecheck", "docs"]


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite with runtime jaxtyping + beartype checks (see pyproject)."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".", "pyright")
    session.run("pyright", "src")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation strictly: any warning fails the build."""
    session.install("-e", ".[docs]")
    session.run("mkdocs", "build", "--strict", "--site-dir", "site")


@nox.session
def bench(session: nox.Session) -> None:
    """Run the benchmarks; results go to results/bench/ (`-- --quick`: smoke run)."""
    session.install("-e", ".[experiments]")
    session.run("python", "-m", "benchmarks", *session.posargs)
