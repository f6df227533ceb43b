"""Prompt texts and estimates for limits, the GGUF metadata reader, and a ticket's batched
completion charges."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import pytest

from airouter import tokenizers
from airouter.backends.base import Stats
from airouter.config import parse
from airouter.gguf_vocab import GGUFError, read_metadata
from airouter.limits import Limiter
from airouter.limits.limiter import BATCH


@pytest.mark.parametrize(
    ("body", "text", "ids"),
    [
        ({"messages": [{"role": "user", "content": "hi"},
                       {"role": "user", "content": [{"type": "text", "text": "a"},
                                                    {"type": "image_url", "image_url": {}},
                                                    {"type": "text", "text": "b"}]}]},
         "hi\nab", 0),
        ({"prompt": "once"}, "once", 0),
        ({"prompt": ["one", "two"]}, "one\ntwo", 0),
        ({"prompt": [1, 2, 3]}, "", 3),
        ({"input": [[1, 2], [3]]}, "", 3),
        ({"input": "embed me"}, "embed me", 0),
        ({}, "", 0),
    ],
)
def test_prompt_text(body: dict, text: str, ids: int) -> None:
    assert tokenizers.prompt_text(body) == (text, ids)
    assert tokenizers.estimated_prompt(body) == ids + tokenizers.estimate(text)


@pytest.mark.parametrize(
    "messages",
    [[], [{"role": "user", "content": "é" * 7}], ["not a message", {"content": None}],
     [{"content": "abc"}, {"content": "dé"}, {"content": [{"type": "text", "text": "ü"}]}]],
)
def test_estimated_prompt_of_messages_is_the_estimate_of_their_text(messages: list) -> None:
    body = {"messages": messages}
    text, _ = tokenizers.prompt_text(body)
    assert tokenizers.estimated_prompt(body) == tokenizers.estimate(text)


def test_estimate_is_four_bytes_a_token() -> None:
    assert [tokenizers.estimate(t) for t in ("", "a", "abcd", "abcde", "é" * 4)] == [0, 1, 1, 2, 2]


def _gguf(path: Path, kv: list[tuple[str, int, bytes]]) -> None:
    out = b"GGUF" + struct.pack("<IQQ", 3, 0, len(kv))
    for key, vtype, value in kv:
        out += struct.pack("<Q", len(key)) + key.encode() + struct.pack("<I", vtype) + value
    path.write_bytes(out)


def _s(text: str) -> bytes:
    return struct.pack("<Q", len(text.encode())) + text.encode()


def test_gguf_metadata_reader(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    tokens = struct.pack("<IQ", 8, 2) + _s("a") + _s("b")
    _gguf(path, [
        ("general.name", 8, _s("tiny")),
        ("tokenizer.ggml.model", 8, _s("gpt2")),
        ("tokenizer.ggml.tokens", 9, tokens),
        ("tokenizer.ggml.token_type", 9, struct.pack("<IQ", 5, 2) + struct.pack("<2i", 1, 3)),
        ("llama.context_length", 4, struct.pack("<I", 4096)),
        ("tokenizer.ggml.add_bos_token", 7, b"\x01"),
    ])
    assert read_metadata(path) == {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": ["a", "b"],
        "tokenizer.ggml.token_type": [1, 3],
        "llama.context_length": 4096,
        "tokenizer.ggml.add_bos_token": True,
    }


def test_gguf_reader_rejects_other_files(tmp_path: Path) -> None:
    path = tmp_path / "x.gguf"
    path.write_bytes(b"not a model")
    with pytest.raises(GGUFError, match="not a GGUF file"):
        read_metadata(path)
    _gguf(path, [("tokenizer.x", 8, _s("abc"))])
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(GGUFError):
        read_metadata(path)


CFG = """
[keys.a]
key = "sk-a"
tpm = 100000

[backends.b]
type = "openai"
base_url = "http://127.0.0.1:1/v1"

[models.m]
backend = "b"
"""


def test_streamed_completion_is_charged_in_batches() -> None:
    cfg = parse(CFG)

    async def main() -> list[int]:
        limiter = Limiter(cfg)
        await limiter.start()
        from airouter.state import State

        target = State.build(cfg).models.lookup("m")
        assert target is not None
        ticket = await limiter.admit("a", target, {"prompt": "abcdefgh"})  # 2 tokens estimated
        engine = limiter.engine
        assert engine is not None

        async def used() -> int:
            await asyncio.sleep(0)  # let spawned charges run
            checks = limiter.rules.checks(limiter.rules.keys["a"], 0)
            out = await engine.admit(checks, "", dry=True)
            assert out is not None
            return out.used[0]

        seen = [await used()]
        for _ in range(BATCH - 1):
            ticket.chunk(b"data: {}\n\n")
        seen.append(await used())  # not yet a batch
        ticket.chunk(b"data: {}\n\n")
        seen.append(await used())  # one batch charged
        ticket.chunk(b"data: {}\n\ndata: {}\n\n")
        await ticket.settle(Stats(prompt_tokens=5, completion_tokens=40))
        seen.append(await used())  # corrected to the backend's count
        await limiter.aclose()
        return seen

    assert asyncio.run(main()) == [2, 2, 2 + BATCH, 45]
