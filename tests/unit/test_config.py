"""backends.toml loading and validation: one invalid file per rule, and the CLI's `check`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from airouter import config
from airouter.cli import check_exposure
from airouter.config import ConfigError
from airouter.state import State
from tests.support.procs import ROOT

INVALID = sorted((Path(__file__).parents[1] / "data/configs/invalid").glob("*.toml"))


def expected_error(path: Path) -> str:
    return path.read_text().splitlines()[0].removeprefix("# error: ")


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_each_invalid_config_is_rejected_naming_the_key(path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        State.build(config.load(path))
    assert expected_error(path) in str(e.value)


@pytest.mark.parametrize("path", INVALID[:3], ids=[p.stem for p in INVALID[:3]])
def test_check_command_names_file_and_key(path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "airouter", "check", str(path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert str(path) in r.stderr and expected_error(path) in r.stderr
    assert "Traceback" not in r.stderr


def test_shipped_backends_toml_is_valid() -> None:
    r = subprocess.run([sys.executable, "-m", "airouter", "check", str(ROOT / "backends.toml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_env_expansion_with_defaults() -> None:
    text = """
[backends.up]
type = "openai"
base_url = "${UP_URL:-http://127.0.0.1:9/v1}"
api_key = "${UP_KEY}"
"""
    cfg = config.parse(text, env={"UP_KEY": "k1"})
    up = cfg.backends["up"]
    assert isinstance(up, config.OpenAIBackendConfig)
    assert (up.base_url, up.api_key) == ("http://127.0.0.1:9/v1", "k1")
    cfg = config.parse(text, env={"UP_KEY": "k2", "UP_URL": "https://example.test/v1"})
    assert cfg.backends["up"].base_url == "https://example.test/v1"  # type: ignore[union-attr]


def test_defaults() -> None:
    cfg = config.parse("")
    assert (cfg.server.host, cfg.server.port, cfg.server.api_keys) == ("127.0.0.1", 3000, [])
    assert cfg.max_body_bytes == 16 * 1024 * 1024


def test_template_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "t.j2").write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    f = tmp_path / "c.toml"
    f.write_text('[backends.t]\ntype = "triton"\nurl = "h:1"\n'
                 '[models.m]\nbackend = "t"\ntemplate_file = "t.j2"\n')
    cfg = config.load(f)
    assert cfg.models["m"].template_file == str(tmp_path / "t.j2")
    State.build(cfg)


@pytest.mark.parametrize(
    ("host", "keys", "allow", "refused"),
    [("127.0.0.1", [], False, False), ("localhost", [], False, False), ("::1", [], False, False),
     ("0.0.0.0", [], False, True), ("10.1.2.3", [], False, True), ("0.0.0.0", ["k"], False, False),
     ("0.0.0.0", [], True, False)],
)
def test_secure_default_exposure(host: str, keys: list[str], allow: bool, refused: bool) -> None:
    keys_toml = ", ".join(f'"{k}"' for k in keys)
    cfg = config.parse(f"[server]\napi_keys = [{keys_toml}]\n"
                       f"allow_unauthenticated = {str(allow).lower()}\n")
    assert (check_exposure(cfg, host) is not None) == refused


def test_router_refuses_public_bind_without_keys(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("[server]\napi_keys = []\n")
    r = subprocess.run([sys.executable, "-m", "airouter", "--config", str(f), "--host", "0.0.0.0",
                        "--port", "1"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "allow_unauthenticated" in r.stderr and "Traceback" not in r.stderr


def test_every_key_is_documented_in_the_reference_config() -> None:
    text = (ROOT / "backends.toml").read_text()
    structs = (config.ServerConfig, config.KeyConfig, config.NodeConfig, config.NodesConfig,
               config.OpenAIBackendConfig, config.TritonBackendConfig, config.ModelConfig)
    missing = [f"{s.__name__}.{name}" for s in structs for name in s.__struct_fields__
               if not any(line.lstrip("# ").startswith(name) or f"`{name}`" in line
                          or f" {name} " in line for line in text.splitlines())]
    assert missing == []


def test_slow_client_limits_and_metrics_key() -> None:
    cfg = config.parse(
        '[server]\nheader_timeout = 5\nbody_timeout = 2.5\nmax_connections = 100\n'
        'metrics_key = "${MK}"\n', env={"MK": "m-1"})
    s = cfg.server
    assert (s.header_timeout, s.body_timeout, s.max_connections, s.metrics_key) == (
        5, 2.5, 100, "m-1")
    d = config.parse("").server
    assert (d.header_timeout, d.body_timeout, d.max_connections, d.metrics_key) == (
        60, 60, 16384, None)
