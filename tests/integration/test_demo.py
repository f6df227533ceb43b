"""`make run`'s launcher end to end: Triton with the example SmolLM2 models, the router in
front, the README's quick-start examples against it, prompt token counts equal to llama.cpp's
own server, repeatable greedy answers, embeddings, and a clean stop on SIGINT."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from tests.support.llama_server import run_llama_server
from tests.support.procs import ROOT, free_port, spawn, wait_http

pytestmark = [pytest.mark.triton, pytest.mark.llm]

SHM = Path("/dev/shm")
LAUNCHER = [sys.executable, "-m", "examples.demo", "--config", str(ROOT / "backends.toml")]
README = (ROOT / "README.md").read_text(encoding="utf-8")
QUICK_START = README[README.index("## Try it") : README.index("## Configuration")]


def readme_python_blocks() -> list[str]:
    """The quick start's Python examples, in order."""
    return re.findall(r"```python\n(.*?)```", QUICK_START, flags=re.S)


def readme_streaming_example() -> str:
    """The README's streaming `openai` example, as printed there."""
    found = [b for b in readme_python_blocks()
             if "from openai import OpenAI" in b and "stream=True" in b]
    assert found, "README.md has no streaming openai example"
    return found[0]


def readme_curls() -> list[str]:
    """The quick start's curl commands (continuation lines joined), in order."""
    (block,) = re.findall(r"```sh\n(.*?)```", QUICK_START, flags=re.S)
    commands, current = [], ""
    for line in block.splitlines():
        if line.startswith("#") or (not line.strip() and not current):
            continue
        current += line.removesuffix("\\") + "\n"
        if not line.endswith("\\") and current.count("'") % 2 == 0:
            commands.append(current)
            current = ""
    return commands


@dataclass
class Demo:
    proc: subprocess.Popen[bytes]
    port: int
    state: Path
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://localhost:{self.port}/v1"

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key="none", max_retries=0, timeout=120)


@contextlib.contextmanager
def launched(tmp: Path) -> Iterator[Demo]:
    """The launcher on free ports with its own state folder, up and ready."""
    port, http, grpc = free_port(), free_port(), free_port()
    env = {
        "AIROUTER_PORT": str(port),
        "TRITON_HTTP_PORT": str(http),
        "TRITON_GRPC_PORT": str(grpc),
        "AIROUTER_DEMO_DIR": str(tmp / "demo"),
        # Triton only: no OpenAI-compatible backend is added.
        "OPENAI_API_KEY": "",
        "AIROUTER_UPSTREAM_URL": "",
    }
    log = tmp / "demo.log"
    with spawn(LAUNCHER, env=env, log=log, cwd=ROOT) as proc:
        try:
            wait_http(f"http://127.0.0.1:{port}/health/ready", timeout=180, proc=proc)
            deadline = time.monotonic() + 10
            while "Ctrl-C stops" not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.05)
        except Exception:
            pytest.fail(f"the demo did not come up:\n{log.read_text(errors='replace')}")
        yield Demo(proc, port, tmp / "demo", log)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    with launched(tmp_path_factory.mktemp("demo")) as running:
        yield running


def pgroup_members(pgids: set[int]) -> list[str]:
    """Live (non-zombie) processes in any of these process groups."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            pid = stat.parent.name
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if fields[0] != "Z" and int(fields[2]) in pgids:
                out.append(f"{pid}: {(stat.parent / 'cmdline').read_bytes()!r}")
    return out


def mapped(paths: set[Path]) -> set[Path]:
    """Those of `paths` some live process still maps (another Triton's, say)."""
    found: set[Path] = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        with contextlib.suppress(OSError):
            content = maps.read_text(errors="replace")
            found.update(p for p in paths if str(p) in content)
    return found


def processes_mentioning(text: str) -> list[str]:
    out = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            raw = cmdline.read_bytes()
            if text.encode() in raw and b"pytest" not in raw:
                out.append(f"{cmdline.parent.name}: {raw!r}")
    return out


@pytest.mark.timeout(300)
def test_demo_serves_smollm2_and_stops_cleanly(tmp_path: Path) -> None:
    shm_before = set(SHM.glob("triton_python_backend_shm_region_*"))
    with launched(tmp_path) as running:
        proc, port, state, log = running.proc, running.port, running.state, running.log
        out = log.read_text(errors="replace")
        pids = {
            name: int(m.group(1))
            for name in ("Triton", "router")
            if (m := re.search(rf"\[demo\] {name} ready in .*\(pid (\d+)\)", out))
        }
        assert set(pids) == {"Triton", "router"}, out
        assert f"http://localhost:{port}/v1" in out  # the printed one-liners name the real port
        assert "(smollm2, smollm2_embed)" in out

        # The README's example, verbatim but for the port.
        code = readme_streaming_example()
        assert "http://localhost:3000/v1" in code
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(code.replace("localhost:3000", f"localhost:{port}"), {"__name__": "readme"})
        assert printed.getvalue().strip(), "the README example printed nothing"

        # The same call, looking at every chunk.
        client = openai.OpenAI(base_url=f"http://localhost:{port}/v1", api_key="none")
        stream = client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": "Write a haiku about the sea."}],
            stream=True,
        )
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
        assert text.strip()
        assert "<|im_end|>" not in text and "<|im_start|>" not in text
        assert [r for r in reasons if r is not None] in (["stop"], ["length"])
        assert {c.model for c in chunks} == {"smollm2"}

        # Ctrl-C: the router, then Triton, all gone within 20 s.
        os.kill(proc.pid, signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the demo did not stop within 20 s:\n{log.read_text(errors='replace')}")
        assert proc.returncode == 0, log.read_text(errors="replace")
    out = log.read_text(errors="replace")
    assert out.index("stopping router") < out.index("stopping tritonserver"), out
    assert pgroup_members(set(pids.values())) == []
    assert processes_mentioning(str(state)) == []  # no tritonserver, no backend stub
    left = set(SHM.glob("triton_python_backend_shm_region_*")) - shm_before
    assert left <= mapped(left), "Triton's shared-memory files were left behind"


def test_demo_refuses_a_taken_port(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        env = {
            **os.environ,
            "AIROUTER_PORT": str(taken),
            "TRITON_HTTP_PORT": str(free_port()),
            "TRITON_GRPC_PORT": str(free_port()),
            "AIROUTER_DEMO_DIR": str(tmp_path / "demo"),
        }
        done = subprocess.run(LAUNCHER, env=env, cwd=ROOT, capture_output=True, text=True,
                              timeout=60)
    assert done.returncode == 1
    assert f"port {taken} (router) is already in use" in done.stderr
    assert "AIROUTER_PORT" in done.stderr


# ---- against one running demo ----


def test_prompt_tokens_match_llama_cpp_server(demo: Demo, tmp_path: Path) -> None:
    """The demo renders chats with the model's own template, as llama.cpp's server does."""
    chats = [
        [{"role": "user", "content": "What is the capital of France?"}],
        [{"role": "system", "content": "You answer in one word."},
         {"role": "user", "content": "What is the capital of France?"}],
    ]
    router = demo.client()
    with run_llama_server(log=tmp_path / "llama.log") as llama:
        upstream = openai.OpenAI(base_url=llama.url, api_key="none", max_retries=0, timeout=60)
        counts = []
        for messages in chats:
            ours = router.chat.completions.create(model="smollm2", messages=messages,
                                                  max_tokens=1, temperature=0)
            theirs = upstream.chat.completions.create(model="smollm2", messages=messages,
                                                      max_tokens=1, temperature=0)
            assert ours.usage is not None and theirs.usage is not None
            assert ours.usage.prompt_tokens == theirs.usage.prompt_tokens, messages
            counts.append(ours.usage.prompt_tokens)
    # Without a system message the template adds SmolLM2's default one.
    assert counts[0] > 30 and counts[0] != counts[1]


def test_greedy_answers_repeat(demo: Demo) -> None:
    """Ten identical greedy requests, five streamed: one text."""
    client = demo.client()
    # A question whose greedy answer llama.cpp changes when it reuses its cached prompt.
    ask = {"model": "smollm2", "max_tokens": 32, "temperature": 0,
           "messages": [{"role": "user", "content": "Name three colours."}]}
    texts = []
    for i in range(10):
        if i % 2:
            chunks = list(client.chat.completions.create(**ask, stream=True))
            texts.append("".join(c.choices[0].delta.content or "" for c in chunks if c.choices))
        else:
            reply = client.chat.completions.create(**ask)
            texts.append(reply.choices[0].message.content or "")
    assert texts[0].strip()
    assert texts == [texts[0]] * 10


def timed_exec(code: str, port: int) -> tuple[str, float]:
    printed = io.StringIO()
    began = time.monotonic()
    with contextlib.redirect_stdout(printed):
        exec(code.replace("localhost:3000", f"localhost:{port}"), {"__name__": "readme"})
    return printed.getvalue(), time.monotonic() - began


def test_readme_quick_start_answers_are_short_and_whole(demo: Demo) -> None:
    """The first examples ask short questions with a small max_tokens: each answer ends by
    itself (finish_reason "stop") within that budget. Timings are printed (`pytest -s`)."""
    timings = {}
    curls = readme_curls()
    assert [re.findall(r"/v1/(\S+)", c)[0] for c in curls] == [
        "chat/completions", "chat/completions", "embeddings", "models"]
    chat, streamed = (c.replace("localhost:3000", f"localhost:{demo.port}") for c in curls[:2])
    for name, command in (("curl", chat), ("curl stream", streamed)):
        began = time.monotonic()
        done = subprocess.run([*shlex.split(command), "-s"], capture_output=True, text=True,
                              timeout=60)
        timings[name] = time.monotonic() - began
        assert done.returncode == 0, done.stderr
        body = json.loads(shlex.split(command)[-1])
        assert body["max_tokens"] <= 20
        if body.get("stream"):
            events = [line.removeprefix("data: ") for line in done.stdout.splitlines()
                      if line.startswith("data: ")]
            assert events[-1] == "[DONE]"
            last = json.loads(events[-2])
            assert last["choices"][0]["finish_reason"] == "stop", done.stdout
        else:
            answer = json.loads(done.stdout)
            assert answer["choices"][0]["finish_reason"] == "stop", answer
            assert answer["usage"]["completion_tokens"] < body["max_tokens"]

    # The Python examples: each question, with its max_tokens, ends by itself...
    chat_blocks = [b for b in readme_python_blocks() if "smollm2-embed" not in b]
    assert len(chat_blocks) == 3
    client = demo.client()
    for block in chat_blocks:
        limit = int(re.findall(r"max_tokens=(\d+)", block)[0])
        assert limit <= 20
        questions = re.findall(r'"content": "([^"]+)"', block) or re.findall(
            r'llm\.(?:invoke|stream)\("([^"]+)"\)', block)
        assert questions, block
        for question in questions:
            reply = client.chat.completions.create(
                model="smollm2", max_tokens=limit,
                messages=[{"role": "user", "content": question}])
            assert reply.choices[0].finish_reason == "stop", (question, reply)
    # ...and runs as printed.
    for name, block in zip(("openai", "openai stream", "langchain"), chat_blocks, strict=True):
        printed, timings[name] = timed_exec(block, demo.port)
        assert printed.strip(), name
    print("\nREADME quick start timings:",
          ", ".join(f"{name} {took:.2f}s" for name, took in timings.items()))


def test_embeddings_through_langchain_and_openai(demo: Demo) -> None:
    from langchain_openai import OpenAIEmbeddings

    embeddings = OpenAIEmbeddings(base_url=demo.base_url, api_key="none",
                                  model="smollm2-embed", check_embedding_ctx_length=False)
    query = embeddings.embed_query("The sea is calm tonight.")
    docs = embeddings.embed_documents(["The sea is calm tonight.", "Paris is in France."])
    assert len(query) == 576 and all(isinstance(x, float) for x in query)
    assert len(docs) == 2 and docs[0] != docs[1]
    assert max(abs(a - b) for a, b in zip(query, docs[0], strict=True)) < 1e-6

    client = demo.client()
    first = client.embeddings.create(model="smollm2-embed", input="Deterministic, please.",
                                     encoding_format="float")
    again = client.embeddings.create(model="smollm2-embed", input="Deterministic, please.",
                                     encoding_format="float")
    assert first.data[0].embedding == again.data[0].embedding
    assert first.usage.prompt_tokens > 0

    # The README's embeddings example runs as printed.
    (block,) = [b for b in readme_python_blocks() if "smollm2-embed" in b]
    printed, _ = timed_exec(block, demo.port)
    assert "[576, 576]" in printed


CITY = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 24},
        "country": {"type": "string", "maxLength": 24},
        "population": {"type": "integer"},
    },
    "required": ["city", "country", "population"],
    "additionalProperties": False,
}


def test_structured_output_validates_every_time(demo: Demo) -> None:
    """response_format json_schema through the router reaches the real model as a guided-
    decoding guide: 10 of 10 answers are JSON valid against the schema."""
    import jsonschema

    client = demo.client()
    for i in range(10):
        reply = client.chat.completions.create(
            model="smollm2", max_tokens=64, temperature=0.7, seed=i,
            messages=[{"role": "user", "content": "Describe a large city as JSON."}],
            response_format={"type": "json_schema",
                             "json_schema": {"name": "city", "schema": CITY, "strict": True}},
        )
        content = reply.choices[0].message.content
        assert content is not None and reply.choices[0].finish_reason == "stop", reply
        jsonschema.validate(json.loads(content), CITY)


def test_named_tool_choice_calls_that_function(demo: Demo) -> None:
    """SmolLM2's own template cannot show tools, but a named tool_choice is forced by guided
    decoding: a call to that function with arguments valid against its schema."""
    import jsonschema

    weather = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24}},
               "required": ["city"], "additionalProperties": False}
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city.",
        "parameters": weather}}]
    client = demo.client()
    reply = client.chat.completions.create(
        model="smollm2", max_tokens=48, tools=tools,  # type: ignore[arg-type]
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls, reply
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), weather)
    # Streamed: the same call, in OpenAI's delta shape.
    chunks = list(client.chat.completions.create(
        model="smollm2", max_tokens=48, tools=tools, stream=True,  # type: ignore[arg-type]
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
    ))
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].id and deltas[0].function and deltas[0].function.name == "get_weather"
    args = "".join(d.function.arguments or "" for d in deltas if d.function)
    jsonschema.validate(json.loads(args), weather)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
