"""Read a compose file as `docker compose` does: YAML, then ${VAR} interpolation of values."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import yaml

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}, ${NAME:+alt}, $$
_VAR = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\})")
FROM_THE_HOST = "from-the-host"


def interpolate(value: Any) -> Any:
    """Values as compose gives them on a host that sets only the variables the file requires
    (`${NAME:?...}`), each to FROM_THE_HOST; the others take their defaults."""
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        op, arg = m.group(2) or "", m.group(3) or ""
        if op.endswith("?"):
            return FROM_THE_HOST
        return arg if op.endswith("-") else ""

    return _VAR.sub(sub, value)


def load(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The file's services as written, and as interpolated."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    services = raw["services"]
    return services, interpolate(services)


def words(value: str | list[str] | None) -> list[str] | None:
    """`command` or `entrypoint`: a list as is, a string split as a shell would."""
    return shlex.split(value) if isinstance(value, str) else value


def environment(service: dict[str, Any]) -> dict[str, str]:
    """The list (`- NAME=value`) or mapping form; a bare NAME passes on the host's value."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def container_ports(service: dict[str, Any]) -> list[int]:
    """The container side of `ports`: "3000", "3000:3000", "127.0.0.1:80:3000/tcp", {target}."""
    out = []
    for p in service.get("ports", []):
        spec = str(p["target"]) if isinstance(p, dict) else str(p).rsplit(":", 1)[-1]
        out.append(int(spec.split("/")[0]))
    return out


def binds(service: dict[str, Any]) -> list[tuple[str, str]]:
    """Bind mounts, (host path, container path), in the short ("./a:/b:ro") or long syntax."""
    out = []
    for v in service.get("volumes", []):
        if isinstance(v, dict):
            if v.get("type") == "bind":
                out.append((v["source"], v["target"]))
            continue
        source, _, rest = str(v).partition(":")
        if source.startswith((".", "/", "~", "$")):  # otherwise a named volume
            out.append((source, rest.split(":")[0]))
    return out


def build_context(service: dict[str, Any], base: Path) -> tuple[Path, str] | None:
    """Where a service's image is built from: the context folder and the Dockerfile's name."""
    build = service.get("build")
    if build is None:
        return None
    if isinstance(build, str):
        build = {"context": build}
    return (base / build.get("context", ".")).resolve(), build.get("dockerfile", "Dockerfile")
