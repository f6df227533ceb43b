"""Read a Dockerfile: what the image copies in, its environment, and the command it runs."""

from __future__ import annotations

import json
import posixpath
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    value: str  # the rest, continuation lines joined
    line: int  # where it starts, 1-based


@dataclass
class Image:
    """What a single-stage Dockerfile's final image holds and runs."""

    env: dict[str, str] = field(default_factory=dict)
    copies: dict[str, str] = field(default_factory=dict)  # path copied to -> build source
    user: str = ""
    workdir: str = "/"
    expose: list[int] = field(default_factory=list)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)  # this file's; the base image's is not known
    healthcheck: list[str] = field(default_factory=list)

    @property
    def argv(self) -> list[str]:
        """What a container started with no arguments runs."""
        return [*self.entrypoint, *self.cmd]


def instructions(text: str) -> list[Instruction]:
    """Instructions in order; comment lines dropped, also inside a continued instruction."""
    out: list[Instruction] = []
    parts: list[str] = []
    start = 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not parts:
            start = n
        continued = line.endswith("\\")
        parts.append(line[:-1].strip() if continued else line)
        if not continued:
            keyword, _, value = " ".join(parts).partition(" ")
            out.append(Instruction(keyword.upper(), value.strip(), start))
            parts = []
    if parts:
        raise ValueError(f"line {start}: the last instruction ends with a continuation")
    return out


def exec_form(value: str) -> list[str]:
    """The JSON array form of CMD, ENTRYPOINT and HEALTHCHECK CMD; the shell form is refused."""
    try:
        argv = json.loads(value)
    except json.JSONDecodeError:
        raise ValueError(f"not the exec (JSON array) form: {value}") from None
    if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
        raise ValueError(f"not a non-empty array of strings: {value}")
    return argv


_ENV_PAIR = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.DOTALL)


def _env(value: str) -> dict[str, str]:
    words = shlex.split(value)
    if words and "=" not in words[0]:  # the legacy `ENV KEY value with spaces` form
        return {words[0]: value.split(None, 1)[1].strip()}
    pairs = {}
    for word in words:
        m = _ENV_PAIR.match(word)
        if m is None:
            raise ValueError(f"not KEY=value: {word}")
        pairs[m.group(1)] = m.group(2)
    return pairs


def _copy(value: str, workdir: str) -> dict[str, str]:
    words = [w for w in shlex.split(value) if not w.startswith("--")]
    *sources, dest = words
    dest = posixpath.join(workdir, dest)
    into_dir = len(sources) > 1 or dest.endswith("/") or words[-1] in (".", "./")
    copies = {}
    for source in sources:
        target = posixpath.join(dest, posixpath.basename(source.rstrip("/"))) if into_dir else dest
        copies[posixpath.normpath(target)] = posixpath.normpath(source)
    return copies


def read(path: Path) -> Image:
    image = Image()
    stages = 0
    for ins in instructions(path.read_text(encoding="utf-8")):
        if ins.keyword == "FROM":
            stages += 1
            if stages > 1:
                raise ValueError(f"line {ins.line}: a second stage; this reader takes one")
        elif ins.keyword == "ENV":
            image.env.update(_env(ins.value))
        elif ins.keyword == "WORKDIR":
            image.workdir = posixpath.join(image.workdir, ins.value)
        elif ins.keyword in ("COPY", "ADD"):
            image.copies.update(_copy(ins.value, image.workdir))
        elif ins.keyword == "USER":
            image.user = ins.value
        elif ins.keyword == "EXPOSE":
            image.expose += [int(p.split("/")[0]) for p in ins.value.split()]
        elif ins.keyword == "ENTRYPOINT":
            image.entrypoint = exec_form(ins.value)
        elif ins.keyword == "CMD":
            image.cmd = exec_form(ins.value)
        elif ins.keyword == "HEALTHCHECK":
            _, sep, test = ins.value.partition("CMD ")
            image.healthcheck = exec_form(test) if sep else []
    return image
