"""Commands that run the router and their configs, checked as `airouter` checks them."""

from __future__ import annotations

import argparse
import contextlib
import io
import posixpath
from collections.abc import Mapping, Sequence

from airouter import config as config_mod
from airouter.cli import build_check_parser, build_parser
from airouter.config import Config
from airouter.state import State


def router_args(argv: Sequence[str]) -> list[str] | None:
    """The arguments after `airouter` or `python -m airouter`; None for any other command."""
    if argv and posixpath.basename(argv[0]) == "airouter":
        return list(argv[1:])
    if len(argv) >= 3 and posixpath.basename(argv[0]).startswith("python"):
        if list(argv[1:3]) == ["-m", "airouter"]:
            return list(argv[3:])
    return None


def parse_router_args(args: Sequence[str]) -> argparse.Namespace:
    """Parse as `airouter` does; ValueError with argparse's message where it would exit.

    Options must be spelt out in full: argparse takes `--conf` for `--config`, and a
    deployment file that relies on that breaks when another option starting so is added.
    """
    check = list(args[:1]) == ["check"]
    parser = build_check_parser() if check else build_parser()
    parser.allow_abbrev = False
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(err):
            return parser.parse_args(list(args[1:] if check else args))
    except SystemExit:
        said = err.getvalue().strip().splitlines() or ["exits"]
        raise ValueError(f"airouter {' '.join(args)}: {said[-1]}") from None


def replace_option(args: Sequence[str], option: str, value: str) -> list[str]:
    """`args` with `option`'s value replaced (both `--opt v` and `--opt=v`), or appended."""
    out = list(args)
    for i, arg in enumerate(out):
        if arg == option and i + 1 < len(out):
            out[i + 1] = value
            return out
        if arg.startswith(option + "="):
            out[i] = f"{option}={value}"
            return out
    return [*out, option, value]


def check_config(text: str, source: str, env: Mapping[str, str]) -> Config:
    """Parse and build a config as `airouter check` does, in `env` alone (not this process's);
    raises ConfigError naming `source` and the key."""
    cfg = config_mod.parse(text, source, env=dict(env))
    State.build(cfg)
    return cfg
