"""The frames between the workers and the main process's limits server (limits.shared and
limits.shared_server), as typed structs. Each op is an array whose first item, its tag, says
which: `["P", spec, prompt, lease]` is an AdmitSpec. A frame is length-prefixed msgpack."""

from __future__ import annotations

from typing import Any

import msgspec

from airouter.frames import HEAD

QUEUED = "Q"  # a slot request waits in the node's queue: its answer comes in a frame of its own


class _Op(msgspec.Struct, array_like=True, tag_field="op"):
    pass


class Admit(_Op, tag="A"):
    """Check and count `checks` (each a Check's five fields); `dry` counts nothing."""

    dry: bool
    lease: str
    checks: list[Any]


class AdmitSpec(_Op, tag="P"):
    """A request's admission by its Spec's number, with its prompt's tokens."""

    spec: int
    prompt: int
    lease: str


class Charge(_Op, tag="C"):
    """Charge `items` (kind, key, amount, ...) and give back the slots of `release`."""

    items: list[Any]
    release: list[str]
    lease: str


class ChargeSpec(_Op, tag="Q"):
    """A request's charge by its Spec's number; its slots given back if `release`."""

    spec: int
    tokens: int
    lease: str
    release: bool


class Release(_Op, tag="L"):
    keys: list[str]
    lease: str


class Renew(_Op, tag="R"):
    keys: list[str]
    leases: list[str]


class Take(_Op, tag="T"):
    """A node slot; the answer (granted, full) or QUEUED, then a Later with `token` (granted,
    timeout, or shed). A waiter's place: by `priority`, then by its client key `who`'s
    `weight` (fairness.scheduler). With `pool` (its backend), a slot of `key` or, failing
    that, of one of `others`, waiting in the backend's one queue; the answer is then
    [outcome, the index of the node granted in key + others]."""

    key: str
    limit: int
    max_queue: int
    lease: str
    seconds: float
    token: int
    who: str = ""
    priority: int = 1
    weight: float = 1.0
    pool: str = ""
    others: list[str] = []


class Give(_Op, tag="G"):
    key: str
    lease: str


class Nothing(_Op, tag="N"):
    """Answered once every op before it has run."""


Op = Admit | AdmitSpec | Charge | ChargeSpec | Release | Renew | Take | Give | Nothing


class Frame(msgspec.Struct, array_like=True):
    """A worker's batch: `answer` when any op waits for its result; `specs` defines the Specs
    its ops name that this connection has not defined (number -> flat checks), after the
    server forgets those it holds if `forget`."""

    answer: bool
    ops: list[Op]
    specs: dict[int, list[Any]]
    forget: bool


class RawFrame(msgspec.Struct, array_like=True):
    """A Frame whose ops are decoded one by one (to answer a malformed one alone)."""

    answer: bool
    ops: list[msgspec.Raw]
    specs: dict[int, list[Any]]
    forget: bool


class Answers(msgspec.Struct, array_like=True, tag=0):
    """The results of a Frame that asked for them, one per op, in order."""

    results: list[Any]


class Later(msgspec.Struct, array_like=True, tag=1):
    """A queued Take's answer."""

    token: int
    result: Any


encode = msgspec.msgpack.Encoder().encode
decode_reply = msgspec.msgpack.Decoder(Answers | Later).decode
decode_frame = msgspec.msgpack.Decoder(Frame).decode
decode_raw_frame = msgspec.msgpack.Decoder(RawFrame).decode
decode_op = msgspec.msgpack.Decoder(Op).decode


def framed(msg: Any) -> bytes:
    body = encode(msg)
    return HEAD.pack(len(body)) + body
