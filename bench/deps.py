"""Install what the bench needs and the project does not: wrk, nginx, redis-server (apt),
matplotlib (pip)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

POLICY_RC = Path("/usr/sbin/policy-rc.d")


class MissingTool(RuntimeError):
    pass


def _say(msg: str) -> None:
    print(f">> {msg}", flush=True)


def nginx_bin() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def redis_bin() -> str | None:
    return shutil.which("redis-server") or next(
        (
            p
            for p in ("/usr/bin/redis-server", "/usr/local/bin/redis-server")
            if os.access(p, os.X_OK)
        ),
        None,
    )


def _apt_install(packages: list[str]) -> None:
    if os.geteuid() != 0:
        raise MissingTool(
            f"{' '.join(packages)} missing and not root: apt-get install -y " + " ".join(packages)
        )
    _say(f"installing {' '.join(packages)} with apt-get (once; needs the Debian registry)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Debian's nginx package starts a service on 0.0.0.0:80 unless policy-rc.d forbids it.
    made_policy = False
    if not POLICY_RC.exists():
        POLICY_RC.write_text("#!/bin/sh\nexit 101\n")
        POLICY_RC.chmod(0o755)
        made_policy = True
    try:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
        r = subprocess.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
            env=env,
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            raise MissingTool(f"apt-get install {' '.join(packages)} failed:\n{r.stderr[-2000:]}")
    finally:
        if made_policy:
            POLICY_RC.unlink(missing_ok=True)


def ensure_tools(*, redis: bool = False) -> None:
    """`redis`: also redis-server (the limits scenario counts in one)."""
    missing = []
    if shutil.which("wrk") is None:
        missing.append("wrk")
    if nginx_bin() is None:
        missing.append("nginx-light")
    if shutil.which("taskset") is None:
        missing.append("util-linux")
    if redis and redis_bin() is None:
        missing.append("redis-server")
    if missing:
        try:
            _apt_install(missing)
        except MissingTool:
            if "nginx-light" not in missing:
                raise
            # Newer Debian releases dropped nginx-light; plain nginx is the same server.
            _apt_install([m if m != "nginx-light" else "nginx" for m in missing])
    if shutil.which("wrk") is None or nginx_bin() is None:
        raise MissingTool("wrk or nginx still missing after apt-get install")
    if redis and redis_bin() is None:
        raise MissingTool("redis-server still missing after apt-get install")


def ensure_pip(module: str, package: str | None = None) -> bool:
    """pip-install `package` into this venv if `module` is not importable; False if that fails."""
    if importlib.util.find_spec(module) is not None:
        return True
    _say(f"installing {package or module} into {sys.prefix} with pip")
    r = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", package or module],
        capture_output=True,
        text=True,
    )
    importlib.invalidate_caches()
    if r.returncode != 0:
        print(r.stderr[-2000:], file=sys.stderr)
        return False
    return importlib.util.find_spec(module) is not None


def py_spy_bin() -> str | None:
    exe = Path(sys.executable).parent / "py-spy"
    if not exe.exists():
        # The wheel ships only the binary: no module to probe for.
        _say(f"installing py-spy into {sys.prefix} with pip")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "py-spy"], check=False)
    return str(exe) if exe.exists() else shutil.which("py-spy")
