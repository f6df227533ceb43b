"""LangChain's OpenAI (Responses API) and Anthropic chat models through the router."""

from __future__ import annotations

import pytest
from langchain_anthropic import ChatAnthropic
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from tests.conftest import CLIENT_KEY
from tests.integration.test_responses_route import door_router  # noqa: F401 - fixture
from tests.support.fake_tools import TOOL_CALL_ID
from tests.support.router import RouterProc


def get_weather(city: str) -> str:
    """Weather in a city."""
    return "sunny"


def _openai(router: RouterProc, model: str) -> ChatOpenAI:
    return ChatOpenAI(model=model, base_url=router.base_url, api_key=SecretStr(CLIENT_KEY),
                      use_responses_api=True, max_retries=0, timeout=20)


def _anthropic(router: RouterProc, model: str) -> ChatAnthropic:
    return ChatAnthropic(model_name=model, base_url=router.url, api_key=SecretStr(CLIENT_KEY),
                         max_retries=0, timeout=20, stop=None)


@pytest.mark.parametrize("make", [_openai, _anthropic])
def test_invoke_and_stream(door_router: RouterProc, make) -> None:  # noqa: F811
    llm = make(door_router, "echo")
    out = llm.invoke("hello there")
    assert isinstance(out, AIMessage) and out.text == "echo: hello there"
    assert out.usage_metadata is not None and out.usage_metadata["output_tokens"] == 3
    chunks = list(llm.stream("hello there"))
    assert len(chunks) > 2 and all(isinstance(c, AIMessageChunk) for c in chunks)
    total = chunks[0]
    for c in chunks[1:]:
        total += c
    assert total.text == "echo: hello there"


@pytest.mark.parametrize("make", [_openai, _anthropic])
def test_tool_round_trip(door_router: RouterProc, make) -> None:  # noqa: F811
    llm = make(door_router, "tools").bind_tools([get_weather])
    first = llm.invoke([HumanMessage("Paris")])
    assert len(first.tool_calls) == 1
    call = first.tool_calls[0]
    assert call["name"] == "get_weather" and call["args"] == {"city": "Paris"}
    assert TOOL_CALL_ID in (call["id"] or "")
    result = ToolMessage("sunny", tool_call_id=call["id"])
    second = llm.invoke([HumanMessage("Paris"), first, result])
    assert second.text == "tool said: sunny"
