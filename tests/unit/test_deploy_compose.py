"""compose.yaml: the services that run the router pass it arguments it takes and the
environment its config needs; what the file mounts and names is there."""

from __future__ import annotations

import posixpath
from pathlib import Path
from typing import Any

import pytest

from airouter.config import DEFAULT_CONFIG
from tests.support import compose
from tests.support.dockerfile import Image, read
from tests.support.procs import ROOT
from tests.support.router_command import check_config, parse_router_args, router_args

COMPOSE = ROOT / "compose.yaml"
RAW, SERVICES = compose.load(COMPOSE)


def image_of(service: dict[str, Any]) -> Image | None:
    """The image a service builds from this repository, if it does."""
    built = compose.build_context(service, COMPOSE.parent)
    if built is None:
        return None
    context, dockerfile = built
    assert (context / dockerfile).is_file(), f"{context / dockerfile} is missing"
    return read(context / dockerfile)


def command_of(service: dict[str, Any]) -> list[str]:
    """What the container runs: `entrypoint` replaces the image's ENTRYPOINT and drops its CMD,
    `command` replaces its CMD."""
    image = image_of(service) or Image()
    entrypoint = compose.words(service.get("entrypoint"))
    command = compose.words(service.get("command"))
    if command is None:
        command = image.cmd if entrypoint is None else []
    return [*(image.entrypoint if entrypoint is None else entrypoint), *command]


def routers() -> list[str]:
    return [name for name, s in SERVICES.items() if router_args(command_of(s)) is not None]


def test_services_that_build_this_repository_run_the_router() -> None:
    built = [name for name, s in SERVICES.items() if image_of(s) is not None]
    assert built
    assert set(built) <= set(routers())


@pytest.mark.parametrize("name", routers())
def test_the_router_takes_the_arguments_and_its_config_the_environment(name: str) -> None:
    service = SERVICES[name]
    image = image_of(service) or Image()
    given = parse_router_args(router_args(command_of(service)) or [])
    env = {**image.env, **compose.environment(service)}
    named = given.config or env.get("AIROUTER_CONFIG") or DEFAULT_CONFIG
    path = posixpath.join(image.workdir, named)
    source = mounted(name, path) or image.copies.get(path)
    assert source, f"{name}: its config {path} is neither mounted nor in the image"
    config = ROOT / source
    cfg = check_config(config.read_text(), f"{name}: {source}", env)
    assert (given.port or cfg.server.port) in compose.container_ports(service)


def mounted(name: str, path: str) -> str | None:
    """The repository file a service's bind mount puts at `path`, if one does."""
    for source, target in compose.binds(SERVICES[name]):
        if source.startswith(".") and posixpath.commonpath([target, path]) == target:
            return str(Path(source) / posixpath.relpath(path, target))
    return None


@pytest.mark.parametrize("name", list(RAW))
def test_what_a_service_mounts_and_names_is_there(name: str) -> None:
    service = RAW[name]
    for source, _ in compose.binds(service):
        # Paths of the repository's own; one from a variable (a model repository) or an
        # absolute one is the host's.
        if source.startswith("."):
            assert (COMPOSE.parent / source).exists(), f"{name}: {source} is missing"
    assert set(service.get("depends_on", [])) <= set(RAW), f"{name}: depends on no service"
