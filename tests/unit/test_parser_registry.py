"""The output parsers by name (airouter/output/parsers.py): every name the config accepts makes
a fresh parser, an unknown one is refused, and reading the names loads no parser."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from airouter.output.parsers import REASONING_PARSERS, TOOL_PARSERS, reasoning_parser, tool_parser
from airouter.output.reasoning import ThinkParser

ROOT = Path(__file__).resolve().parents[2]


def test_the_tool_formats() -> None:
    assert sorted(TOOL_PARSERS) == ["hermes", "llama3_json", "mistral", "pythonic"]
    for name in TOOL_PARSERS:
        p = tool_parser(name)
        assert not p.called
        assert p is not tool_parser(name)  # fresh: one per output
    with pytest.raises(ValueError, match=r"unknown tool parser 'nope' \(known: hermes, "):
        tool_parser("nope")


def test_the_reasoning_formats() -> None:
    assert sorted(REASONING_PARSERS) == ["deepseek_r1", "qwen3"]
    for name in REASONING_PARSERS:
        assert isinstance(reasoning_parser(name), ThinkParser)
    # deepseek_r1: the output starts inside the thinking; qwen3: only after an opening <think>.
    assert [type(e).__name__ for e in reasoning_parser("deepseek_r1").feed("a</think>b")] == [
        "Reasoning", "Text"]
    assert [type(e).__name__ for e in reasoning_parser("qwen3").feed("a</think>b")] == ["Text"]
    with pytest.raises(ValueError, match="unknown reasoning parser 'nope'"):
        reasoning_parser("nope")


def test_the_config_loads_no_parser() -> None:
    """The config reads the names at start-up; the parsers' modules wait for a first output."""
    code = (
        "import sys, airouter.config\n"
        "print(sorted(m for m in sys.modules if m.startswith('airouter.output')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "['airouter.output', 'airouter.output.events', 'airouter.output.parsers']"
