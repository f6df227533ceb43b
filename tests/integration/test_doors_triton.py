"""The Responses and Messages routes in front of a real Triton with mock models: text, length
and mid-stream errors (tool round trips and reasoning: test_doors_triton_tools.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest

from tests.support.openapi import validate, validate_response_event
from tests.support.router import RouterProc, run_router
from tests.support.triton import TritonServer, run_triton

pytestmark = pytest.mark.triton

REPO = Path(__file__).resolve().parents[1] / "triton_models"
FULL = "Hello, world! Café 😀 The end."
SYSTEM = "You are terse."
USER = "Say hello"
ALIASES = ["ens", "nonstream"]


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    tmp = tmp_path_factory.mktemp("triton-doors")
    with run_triton(REPO, log=tmp / "triton.log",
                    models=["trtllm_ensemble", "trtllm_nonstream", "error_mid_stream"]) as s:
        yield s


@pytest.fixture(scope="module")
def router(triton: TritonServer, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[RouterProc]:
    cfg = f"""
[server]
api_keys = ["sk-t"]

[backends.triton]
type = "triton"
url = "{triton.grpc_url}"
"""
    for alias, name in (("ens", "trtllm_ensemble"), ("nonstream", "trtllm_nonstream"),
                        ("err-mid", "error_mid_stream")):
        cfg += f'\n[models.{alias}]\nbackend = "triton"\nbackend_model = "{name}"\n'
        cfg += 'prompt_format = "chatml"\n'
    with run_router(cfg, tmp_path_factory.mktemp("router-doors")) as r:
        yield r


@pytest.fixture
def oai(router: RouterProc) -> openai.OpenAI:
    return openai.OpenAI(base_url=router.base_url, api_key="sk-t", max_retries=0, timeout=30)


@pytest.fixture
def claude(router: RouterProc) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=router.url, api_key="sk-t", max_retries=0, timeout=30)


@pytest.mark.parametrize("alias", ALIASES)
def test_responses_text(oai: openai.OpenAI, alias: str) -> None:
    r = oai.responses.create(model=alias, instructions=SYSTEM, input=USER)
    validate("Response", r.model_dump(mode="json", exclude_unset=True))
    assert r.output_text == FULL and r.status == "completed" and r.model == alias
    assert r.usage is not None and r.usage.output_tokens > 0 and r.usage.input_tokens > 0
    events = list(oai.responses.create(model=alias, instructions=SYSTEM, input=USER,
                                       stream=True))
    for e in events:
        validate_response_event(e.model_dump(mode="json", exclude_unset=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == FULL
    assert events[-1].type == "response.completed"
    assert events[-1].response.usage is not None
    assert events[-1].response.usage.output_tokens == r.usage.output_tokens


def test_responses_length(oai: openai.OpenAI) -> None:
    r = oai.responses.create(model="ens", instructions=SYSTEM, input=USER, max_output_tokens=5)
    assert r.output_text == "Hello, world!" and r.status == "incomplete"
    assert r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_output_tokens"


@pytest.mark.parametrize("alias", ALIASES)
def test_messages_text(claude: anthropic.Anthropic, alias: str) -> None:
    m = claude.messages.create(model=alias, max_tokens=100, system=SYSTEM,
                               messages=[{"role": "user", "content": USER}])
    assert m.content[0].type == "text" and m.content[0].text == FULL
    assert m.stop_reason == "end_turn" and m.usage.output_tokens > 0
    with claude.messages.stream(model=alias, max_tokens=100, system=SYSTEM,
                                messages=[{"role": "user", "content": USER}]) as s:
        assert "".join(s.text_stream) == FULL
        final = s.get_final_message()
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == m.usage.output_tokens
    m = claude.messages.create(model=alias, max_tokens=5, system=SYSTEM,
                               messages=[{"role": "user", "content": USER}])
    assert m.stop_reason == "max_tokens"


def test_mid_stream_errors(oai: openai.OpenAI, claude: anthropic.Anthropic) -> None:
    events = list(oai.responses.create(model="err-mid", input=USER, stream=True))
    assert events[-1].type == "response.failed"
    with pytest.raises(anthropic.APIStatusError):  # noqa: SIM117
        with claude.messages.stream(model="err-mid", max_tokens=100,
                                    messages=[{"role": "user", "content": USER}]) as s:
            list(s)

