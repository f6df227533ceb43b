"""The package's layers, read from the source with `ast` (nothing is imported): the wire
protocol, the model-output readers and writers, the front doors' translators, the HTTP response
parser and the SSE relay's state machine are pure; backends know nothing of observability."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "airouter"

# The pure layers (packages and single modules): bytes, payloads or text in, payloads or events
# out, no I/O. What they may use from the package: each other and the leaf modules.
PURE = (
    "airouter.protocol",
    "airouter.output",
    "airouter.doors.anthropic",
    "airouter.doors.anthropic_events",
    "airouter.doors.responses",
    "airouter.doors.responses_events",
    "airouter.doors.chat_read",
    "airouter.backends.http.parser",
    "airouter.backends.openai.relay_state",
    "airouter.backends.openai.resume_state",
    "airouter.fairness.scheduler",
)
PURE_MAY_IMPORT = (*PURE, "airouter.errors", "airouter.bounds")
# The upstream HTTP client serves any backend and knows none: what it may use besides itself.
HTTP_CLIENT_MAY_IMPORT = (
    "airouter.backends.http", "airouter.upstream", "airouter.sweep", "airouter.errors",
    "airouter.bounds",
)
# Above the backends: they must never reach up into these.
ABOVE_BACKENDS = (
    "airouter.handlers",
    "airouter.app",
    "airouter.doors",
    "airouter.routing",
    "airouter.lifecycle",
    "airouter.identity",
    "airouter.disconnect",
    "airouter.auth",
    "airouter.observability",
    "airouter.state",
    "airouter.limits",
    "airouter.cli",
    "airouter.exchange",
    "airouter.rsgi",
    "airouter.asgi",
    "airouter.asgi_io",
    "airouter.routes",
    "airouter.cold",
    "airouter.service",
    "prometheus_client",
    "opentelemetry",
)
# The endpoints speak to the exchange, never to a server interface: what they must not import.
INTERFACES = ("airouter.rsgi", "airouter.asgi", "airouter.asgi_io", "airouter.app", "granian",
              "starlette")
ENDPOINTS = ("airouter.handlers", "airouter.cold", "airouter.usage", "airouter.count_tokens",
             "airouter.tokenize_api", "airouter.observability", "airouter.disconnect",
             "airouter.routes", "airouter.service", "airouter.exchange", "airouter.identity")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """Every module `path` imports, with relative imports resolved, TYPE_CHECKING ones too."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield node.lineno, base
            for alias in node.names:  # `from airouter import config` imports a module
                yield node.lineno, f"{base}.{alias.name}"


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _modules(*names: str) -> list[Path]:
    """The files of the named packages and modules (dotted, `airouter.` first)."""
    out: list[Path] = []
    for name in names:
        path = PACKAGE.parent.joinpath(*name.split("."))
        if path.is_dir():
            out.extend(sorted(path.rglob("*.py")))
        else:
            assert path.with_suffix(".py").is_file(), name
            out.append(path.with_suffix(".py"))
    return out


def _package_import(name: str) -> bool:
    return name == "airouter" or name.startswith("airouter.")


def _beyond(path: Path, allowed: tuple[str, ...]) -> list[str]:
    """What `path` imports from the package outside `allowed`."""
    return [
        f"{path.name}:{line} imports {name}"
        for line, name in _imports(path)
        if _package_import(name)
        and name != "airouter"
        and not _within(name, allowed)
        # `from airouter.errors import RouterError` also yields airouter.errors.RouterError
        and not _within(name.rpartition(".")[0], allowed)
    ]


@pytest.mark.parametrize("path", _modules(*PURE), ids=_module_name)
def test_pure_layers_import_only_each_other_and_leaves(path: Path) -> None:
    bad = _beyond(path, PURE_MAY_IMPORT)
    assert not bad, bad


@pytest.mark.parametrize("path", _modules("airouter.backends.http"), ids=_module_name)
def test_the_http_client_knows_no_backend(path: Path) -> None:
    bad = _beyond(path, HTTP_CLIENT_MAY_IMPORT)
    assert not bad, bad


@pytest.mark.parametrize(("backend", "other"), [("openai", "triton"), ("triton", "openai")])
def test_a_backend_does_not_import_another(backend: str, other: str) -> None:
    bad = [
        f"{path.name}:{line} imports {name}"
        for path in _modules(f"airouter.backends.{backend}")
        for line, name in _imports(path)
        if _within(name, (f"airouter.backends.{other}",))
    ]
    assert not bad, bad


@pytest.mark.parametrize("path", _modules("airouter.backends"), ids=_module_name)
def test_backends_do_not_reach_up(path: Path) -> None:
    bad = [
        f"{path.name}:{line} imports {name}"
        for line, name in _imports(path)
        if _within(name, ABOVE_BACKENDS)
    ]
    assert not bad, bad


@pytest.mark.parametrize("path", _modules(*ENDPOINTS), ids=_module_name)
def test_endpoints_do_not_know_the_server_interface(path: Path) -> None:
    bad = [
        f"{path.name}:{line} imports {name}"
        for line, name in _imports(path)
        if _within(name, INTERFACES)
    ]
    assert not bad, bad


def test_the_checks_see_the_imports() -> None:
    """The parser resolves what the checks rely on: a relative import and a name import."""
    names = {name for _, name in _imports(PACKAGE / "backends" / "base.py")}
    assert "airouter.protocol.endpoints.Endpoint" in names
    assert _within("airouter.observability.metrics", ABOVE_BACKENDS)
    assert not _within("airouter.observer", ("airouter.observability",))


def test_no_package_module_is_over_450_lines() -> None:
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 450
    }
    assert not long, long
