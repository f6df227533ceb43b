"""Log lines stay one line each whatever a client put in a message; a traceback keeps its lines."""

from __future__ import annotations

import logging

import pytest

from airouter.app import OneLineFormatter

FORMAT = "%(levelname)s %(name)s [%(request_id)s] %(message)s"


def _format(msg: str, *args: object, exc: bool = False) -> str:
    record = logging.LogRecord("airouter", logging.INFO, __file__, 1, msg, args, None)
    record.request_id = "rid-1"
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            import sys

            record.exc_info = sys.exc_info()
    return OneLineFormatter(FORMAT).format(record)


@pytest.mark.parametrize("text", ["a\nb", "a\r\nb", "a\x1b[31mb", "a\x00b", "a\x85b",
                                  "a\u2028b", "a\u2029b", "a\x7fb"])
def test_control_characters_in_a_message_are_escaped(text: str) -> None:
    line = _format("unknown model %s", text)
    assert len(line.splitlines()) == 1
    assert line.startswith("INFO airouter [rid-1] unknown model a\\")
    assert line.endswith("b")
    assert not any(c in line for c in "\n\r\x1b\x00\x85\u2028\u2029\x7f")


def test_a_clean_message_is_unchanged() -> None:
    assert _format("model %s: ok", "gpt-ä") == "INFO airouter [rid-1] model gpt-ä: ok"


def test_a_forged_second_record_stays_inside_the_first_line() -> None:
    line = _format("path %s", '/x\n2026-01-01 INFO airouter.access [forged] {"status":200}')
    assert line.count("\n") == 0 and "\\n2026-01-01" in line


def test_a_traceback_keeps_its_own_lines() -> None:
    text = _format("failed %s", "a\nb", exc=True)
    first, *rest = text.splitlines()
    assert first == "INFO airouter [rid-1] failed a\\nb"
    assert rest[0] == "Traceback (most recent call last):" and rest[-1] == "ValueError: boom"
