"""The example model repository that `make run` serves (examples/triton), in a real Triton,
spoken to directly over gRPC: repeatable greedy answers, guided decoding with llama.cpp
grammars, and embeddings on the interface of Triton's vLLM backend."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import jsonschema
import numpy as np
import pytest

from tests.support.procs import ROOT
from tests.support.triton import (
    Response,
    TritonServer,
    bytes_input,
    run_triton,
    scalar_input,
    send_stream,
)

pytestmark = [pytest.mark.triton, pytest.mark.llm]

REPO = ROOT / "examples" / "triton"
TEMPLATE = json.loads((REPO / "smollm2" / "tokenizer_config.json").read_text())["chat_template"]


def chat(question: str) -> str:
    """The prompt the router sends for one user message (the model's own chat template)."""
    import jinja2

    return jinja2.Template(TEMPLATE).render(
        messages=[{"role": "user", "content": question}], add_generation_prompt=True
    )


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    tmp = tmp_path_factory.mktemp("demo-models")
    with run_triton(REPO, log=tmp / "triton.log", ready_timeout=120) as server:
        yield server


def generate(triton: TritonServer, prompt: str, max_tokens: int, *, stream: bool = False,
             **extra: Any) -> tuple[str, list[Response]]:
    inputs = {
        "text_input": bytes_input(prompt),
        "max_tokens": scalar_input(max_tokens, np.int32),
        "stream": scalar_input(stream, np.bool_),
        "exclude_input_in_output": scalar_input(True, np.bool_),
    }
    for name, value in extra.items():
        if isinstance(value, str):
            inputs[name] = bytes_input(value)
        elif isinstance(value, float):
            inputs[name] = scalar_input(value, np.float32)
        else:
            inputs[name] = scalar_input(value, np.uint64)
    responses = send_stream(triton.grpc_url, "smollm2", inputs, timeout=120)
    return b"".join(r.text for r in responses).decode(), responses


# ---- the generation model ----


def test_tokenizer_config_is_the_gguf_metadata() -> None:
    """The chat template and special tokens shipped for the router are the GGUF file's own."""
    import llama_cpp

    from tests.support.llama_server import gguf_path

    llm = llama_cpp.Llama(model_path=str(gguf_path()), vocab_only=True, verbose=False)
    meta = llm.metadata
    shipped = json.loads((REPO / "smollm2" / "tokenizer_config.json").read_text())
    assert shipped["chat_template"] == meta["tokenizer.chat_template"]
    for key in ("bos", "eos", "padding", "unknown"):
        token = llm._model.token_get_text(int(meta[f"tokenizer.ggml.{key}_token_id"]))
        name = {"padding": "pad", "unknown": "unk"}.get(key, key)
        assert shipped[f"{name}_token"] == token
    assert "You are a helpful AI assistant named SmolLM" in shipped["chat_template"]


def test_greedy_answers_do_not_depend_on_earlier_requests(triton: TritonServer) -> None:
    # A prompt whose greedy answer llama.cpp changes when it reuses the cached prompt.
    prompt = chat("Name three colours.")
    texts = [generate(triton, prompt, 40, stream=i % 2 == 0)[0] for i in range(3)]
    # Another prompt in between, sharing the template's prefix, then the first one again.
    generate(triton, chat("Name a colour."), 8)
    texts += [generate(triton, prompt, 40, stream=i % 2 == 0)[0] for i in range(3)]
    assert texts[0].strip()
    assert texts == [texts[0]] * 6


def test_a_seed_repeats_a_sampled_answer(triton: TritonServer) -> None:
    prompt = chat("Tell me a fact about cats.")
    first, _ = generate(triton, prompt, 24, temperature=1.0, seed=7)
    generate(triton, prompt, 24, temperature=1.0)  # unseeded: leaves no state behind
    again, _ = generate(triton, prompt, 24, temperature=1.0, seed=7)
    assert first == again and first.strip()


PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "city": {"type": "string", "maxLength": 20},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}


def test_json_schema_guided_generations_validate(triton: TritonServer) -> None:
    schema = json.dumps(PERSON)
    people = ["a baker", "a pilot", "a child", "a painter", "a doctor"]
    done = []
    for i in range(10):
        prompt = chat(f"Describe {people[i % 5]} as JSON with name, age and city.")
        # Half greedy, half sampled with a seed: ten different generations.
        sampling = {"temperature": 0.9, "seed": i} if i >= 5 else {}
        text, responses = generate(
            triton, prompt, 120, stream=i % 2 == 1,
            guided_decoding_guide_type="json_schema", guided_decoding_guide=schema, **sampling,
        )
        assert not any(r.error for r in responses), responses
        value = json.loads(text)
        jsonschema.validate(value, PERSON)
        done.append(value)
    assert len({json.dumps(v, sort_keys=True) for v in done}) > 1


def test_json_guide_gives_a_json_object(triton: TritonServer) -> None:
    text, _ = generate(triton, chat("What is the year after 2024?"), 60,
                       guided_decoding_guide_type="json")
    assert isinstance(json.loads(text), dict)


def test_ebnf_grammar_guide_is_a_llama_cpp_grammar(triton: TritonServer) -> None:
    text, _ = generate(triton, chat("What is the year after 2024?"), 10,
                       guided_decoding_guide_type="ebnf_grammar",
                       guided_decoding_guide='root ::= [0-9]+ "!"')
    assert text[:-1].isdigit() and text.endswith("!")


@pytest.mark.parametrize(
    ("guides", "message"),
    [
        ({"guided_decoding_guide_type": "regex", "guided_decoding_guide": r"\d+"},
         "'regex' is not supported"),
        ({"guided_decoding_guide_type": "json_schema", "guided_decoding_guide": "{not json"},
         "not a JSON schema"),
        ({"guided_decoding_guide_type": "json_schema", "guided_decoding_guide": '{"type": 3}'},
         "not a JSON schema"),
        ({"guided_decoding_guide_type": "json_schema"}, "needs a guided_decoding_guide"),
        ({"guided_decoding_guide_type": "ebnf_grammar", "guided_decoding_guide": "root ::= ("},
         "not a grammar llama.cpp can parse"),
        ({"guided_decoding_guide_type": "ebnf_grammar", "guided_decoding_guide": 'x ::= "a"'},
         "not a grammar llama.cpp can parse"),
        ({"guided_decoding_guide_type": "xml"}, "unknown guided_decoding_guide_type"),
        ({"guided_decoding_guide": "{}"}, "without guided_decoding_guide_type"),
    ],
)
def test_guides_it_cannot_follow_are_errors(
    triton: TritonServer, guides: dict[str, str], message: str
) -> None:
    for stream in (False, True):
        _, responses = generate(triton, chat("Hi"), 8, stream=stream, **guides)
        assert len(responses) == 1 and responses[0].error, responses
        assert message in responses[0].error
    # and the model still answers afterwards
    text, _ = generate(triton, chat("Hi"), 4)
    assert text


# ---- the embedding model ----


def embed_request(value: object, pooling: dict[str, object] | None = None, *,
                  count: bool | None = None) -> dict[str, np.ndarray]:
    body = {"input": value, "pooling_params": pooling or {}}
    inputs = {
        "text_input": bytes_input("", batched=False),
        "embedding_request": bytes_input(json.dumps(body), batched=False),
    }
    if count is not None:
        inputs["return_num_input_tokens"] = scalar_input(count, np.bool_, batched=False)
    return inputs


def embed(triton: TritonServer, inputs: dict[str, np.ndarray]) -> list[Response]:
    return send_stream(triton.grpc_url, "smollm2_embed", inputs, timeout=60, empty_final=False)


def vector(responses: list[Response]) -> list[float]:
    assert len(responses) == 1, responses
    (only,) = responses
    assert only.error is None and only.final, only
    out = only.outputs["text_output"]
    assert out.shape == (1,)
    values = json.loads(out[0])
    assert all(isinstance(x, float) for x in values)
    return list(values)


def test_embeddings_are_deterministic_unit_vectors(triton: TritonServer) -> None:
    a = vector(embed(triton, embed_request("The quick brown fox.")))
    other = vector(embed(triton, embed_request("A completely different sentence about tax law.")))
    again = vector(embed(triton, embed_request("The quick brown fox.")))
    assert len(a) == 576
    assert a == again
    assert a != other
    assert math.isclose(sum(x * x for x in a), 1.0, rel_tol=1e-5)


def test_embedding_of_token_ids_equals_that_of_their_text(triton: TritonServer) -> None:
    import llama_cpp

    from tests.support.llama_server import gguf_path

    llm = llama_cpp.Llama(model_path=str(gguf_path()), vocab_only=True, verbose=False)
    ids = llm.tokenize(b"hello world", add_bos=True, special=False)
    by_ids = embed(triton, embed_request(ids, count=True))
    assert by_ids[0].scalar("num_input_tokens") == len(ids)
    assert by_ids[0].outputs["num_input_tokens"].dtype == np.uint32
    assert vector(by_ids) == vector(embed(triton, embed_request("hello world")))


def test_embedding_dimensions_and_token_count(triton: TritonServer) -> None:
    full = vector(embed(triton, embed_request("hello world")))
    responses = embed(triton, embed_request("hello world", {"dimensions": [64]}, count=True))
    short = vector(responses)
    assert len(short) == 64
    assert math.isclose(sum(x * x for x in short), 1.0, rel_tol=1e-5)
    # the first 64 components of the full vector, scaled to unit length
    norm = math.sqrt(sum(x * x for x in full[:64]))
    assert all(math.isclose(s, f / norm, rel_tol=1e-4, abs_tol=1e-6)
               for s, f in zip(short, full[:64], strict=True))
    assert responses[0].scalar("num_input_tokens") == 2
    without = embed(triton, embed_request("hello world"))
    assert "num_input_tokens" not in without[0].outputs


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("{oops", "not valid JSON"),
        ('["hello"]', "must be a JSON object"),
        ('{"input": ""}', "input is empty"),
        ('{"input": []}', "non-empty string or list of token ids"),
        ('{"input": ["a", "b"]}', "non-empty string or list of token ids"),
        ('{"input": [1, 99999999]}', "outside this model's vocabulary"),
        ('{"input": "hi", "pooling_params": {"dimensions": [0]}}', "positive integer"),
        ('{"input": "hi", "pooling_params": {"dimensions": [4096]}}', "this model has 576"),
        ('{"input": "hi", "pooling_params": []}', "pooling_params must be a JSON object"),
    ],
)
def test_bad_embedding_requests_are_errors(triton: TritonServer, raw: str, message: str) -> None:
    inputs = {
        "text_input": bytes_input("", batched=False),
        "embedding_request": bytes_input(raw, batched=False),
    }
    responses = embed(triton, inputs)
    assert len(responses) == 1 and responses[0].error, responses
    assert message in responses[0].error


def test_an_input_longer_than_the_context_is_refused(triton: TritonServer) -> None:
    responses = embed(triton, embed_request(" ".join(["word"] * 2100)))
    assert responses[0].error and "this model takes 2048" in responses[0].error
    assert vector(embed(triton, embed_request("still fine")))

