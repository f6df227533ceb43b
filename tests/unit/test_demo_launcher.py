"""The `make run` launcher's config extension: extra backends from the environment, and
template paths that still name the files next to the original config."""

from __future__ import annotations

from pathlib import Path

import pytest

from airouter import config
from examples import demo
from tests.support.procs import ROOT


def test_shipped_config_is_served_as_it_is_without_extra_backends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("AIROUTER_UPSTREAM_URL", raising=False)
    served, aliases = demo.extend_config(ROOT / "backends.toml", tmp_path)
    assert (served, aliases) == (ROOT / "backends.toml", [])


def test_extended_config_keeps_template_paths_working(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-value")
    monkeypatch.setenv("AIROUTER_UPSTREAM_URL", "http://127.0.0.1:9/v1")
    state = tmp_path / "state"
    state.mkdir()
    served, aliases = demo.extend_config(ROOT / "backends.toml", state)
    assert served == state / "backends.toml"
    assert aliases == ["gpt-4o-mini", "gpt-*", "upstream"]
    text = served.read_text()
    assert "sk-secret-value" not in text  # secrets stay ${VAR} references
    cfg = config.load(served)
    shipped = ROOT / "examples" / "triton" / "smollm2" / "tokenizer_config.json"
    assert cfg.models["smollm2"].tokenizer_config == str(shipped)
    assert {"smollm2", "smollm2-embed", "gpt-4o-mini", "gpt-*", "upstream"} <= set(cfg.models)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('tokenizer_config = "a/t.json"', 'tokenizer_config = "/cfg/a/t.json"'),
        ('  template_file="t.j2"   # why', '  template_file="/cfg/t.j2"   # why'),
        ('tokenizer_config = "/abs/t.json"', 'tokenizer_config = "/abs/t.json"'),
        ('tokenizer_config = "${TOK}"', 'tokenizer_config = "${TOK}"'),
        ('# tokenizer_config = "a/t.json"', '# tokenizer_config = "a/t.json"'),
        ('prompt_format = "chatml"', 'prompt_format = "chatml"'),
    ],
)
def test_absolute_paths(line: str, expected: str) -> None:
    assert demo.absolute_paths(line + "\n", Path("/cfg")) == expected + "\n"
