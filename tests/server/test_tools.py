"""Tool calling on the real engine: named, required, none and auto, whole and streamed.

The tiny model's weights are random, so a call can only come out of constrained decoding: a
named or required `tool_choice` constrains it to the tools' schemas, which is what these tests
show. For "auto", the model is steered with `guided_regex` to write a call in the pythonic
format, and vLLM's pythonic parser, chosen with NIM_TOOL_CALL_PARSER, must find it.
The random model likes whitespace, which a JSON grammar allows anywhere: the tests that let it
write JSON forbid the whitespace tokens with `logit_bias`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import httpx
import openai
import pydantic
import pytest
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from tests.server.conftest import SERVED_NAME, chat_body, tiny_server_env
from tests.server.test_errors import assert_error
from tests.support.server_process import ServerProcess, start_server
from tests.support.sse import json_events

CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
    "required": ["city"],
    "additionalProperties": False,
}
ZONE = {
    "type": "object",
    "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
    "required": ["zone"],
    "additionalProperties": False,
}
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather in a city", "parameters": CITY},
    },
    {"type": "function", "function": {"name": "get_time", "parameters": ZONE}},
]
WEATHER = {"type": "function", "function": {"name": "get_weather"}}
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def no_whitespace(tiny_model_dir: Path) -> dict[str, int]:
    """logit_bias that forbids every token that decodes to whitespace only."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return {
        str(token_id): -100
        for token_id in tokenizer.get_vocab().values()
        if not tokenizer.decode([token_id]).strip()
    }


def tool_body(**overrides: Any) -> dict[str, Any]:
    return chat_body(**{"messages": QUESTION, "tools": TOOLS, "max_tokens": 60, **overrides})


def test_named_choice_calls_that_function_with_valid_arguments(oai: openai.OpenAI) -> None:
    reply = oai.chat.completions.create(
        model=SERVED_NAME,
        messages=QUESTION,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice=WEATHER,  # type: ignore[arg-type]
        max_tokens=60,
        temperature=0,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop"  # a forced call ends as "stop", as in vLLM
    assert choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function"
    assert call.id.startswith("call_")
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments)["city"] in {"Paris", "Rome"}  # type: ignore[union-attr]


def test_named_choice_streams_the_arguments(http: httpx.Client) -> None:
    whole = http.post("/v1/chat/completions", json=tool_body(tool_choice=WEATHER)).json()
    response = http.post("/v1/chat/completions", json=tool_body(tool_choice=WEATHER, stream=True))
    assert response.status_code == 200, response.text
    events = json_events(response.text)
    deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
    calls = [call for delta in deltas for call in delta.get("tool_calls", [])]
    first, *rest = calls
    assert first["id"].startswith("call_")
    assert first["type"] == "function"
    assert first["function"]["name"] == "get_weather"
    assert all(set(call) == {"index", "function"} and call["index"] == 0 for call in rest)
    arguments = "".join(call["function"].get("arguments", "") for call in calls)
    (expected,) = whole["choices"][0]["message"]["tool_calls"]
    assert arguments == expected["function"]["arguments"]  # temperature 0: the same call
    finishes = [e["choices"][0]["finish_reason"] for e in events if e["choices"]]
    assert finishes[-1] == "stop"
    assert finishes.count("stop") == 1


@pytest.mark.parametrize("stream", [False, True])
def test_required_makes_one_call_when_parallel_calls_are_off(
    http: httpx.Client, no_whitespace: dict[str, int], stream: bool
) -> None:
    body = tool_body(
        tool_choice="required",
        parallel_tool_calls=False,
        logit_bias=no_whitespace,
        max_tokens=80,
        stream=stream,
    )
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    if stream:
        events = [e for e in json_events(response.text) if e["choices"]]
        calls = [c for e in events for c in e["choices"][0]["delta"].get("tool_calls", [])]
        finish_reason = events[-1]["choices"][0]["finish_reason"]
    else:
        choice = response.json()["choices"][0]
        assert choice["message"]["content"] is None
        calls = choice["message"]["tool_calls"]
        finish_reason = choice["finish_reason"]
    assert finish_reason == "tool_calls"
    (call,) = calls
    assert call["id"].startswith("call_")
    arguments = json.loads(call["function"]["arguments"])
    name = call["function"]["name"]
    assert name in {"get_weather", "get_time"}
    assert arguments in (
        [{"city": c} for c in ("Paris", "Rome")]
        if name == "get_weather"
        else [{"zone": z} for z in ("UTC", "CET")]
    )


def test_none_answers_in_text(http: httpx.Client) -> None:
    response = http.post("/v1/chat/completions", json=tool_body(tool_choice="none", max_tokens=8))
    assert response.status_code == 200, response.text
    message = response.json()["choices"][0]["message"]
    assert "tool_calls" not in message
    assert message["content"]


@pytest.mark.parametrize("content", [None, ""])
def test_a_conversation_with_calls_and_results_continues(
    http: httpx.Client, content: str | None
) -> None:
    messages = [
        *QUESTION,
        {
            "role": "assistant",
            "content": content,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 C"},
    ]
    body = chat_body(messages=messages, tools=TOOLS, tool_choice="none", max_tokens=8)
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize(
    ("overrides", "param"),
    [
        ({}, "tool_choice"),  # auto, the default with tools, is off on this server
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tools": None, "tool_choice": "required"}, "tool_choice"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}]},
            "tools.0.function.parameters",
        ),
        ({"tools": [TOOLS[0], TOOLS[0]], "tool_choice": "required"}, "tools.1"),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, None),
        ({"tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice"),
    ],
)
def test_tool_mistakes_are_400(
    http: httpx.Client, overrides: dict[str, Any], param: str | None
) -> None:
    body = tool_body(**overrides)
    if overrides.get("tools", TOOLS) is None:
        del body["tools"]
    error = assert_error(http.post("/v1/chat/completions", json=body), 400, param)
    assert error["type"] == "invalid_request_error"


# ----- auto, with vLLM's pythonic parser ---------------------------------------------------

PYTHONIC_CALL = r'\[get_weather\(city="(Paris|Rome)"\)\]'


def test_auto_finds_the_call_the_model_wrote(auto_server: ServerProcess) -> None:
    body = tool_body(guided_regex=PYTHONIC_CALL)
    response = httpx.post(f"{auto_server.base_url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"])["city"] in {"Paris", "Rome"}


def test_auto_streams_the_call(auto_server: ServerProcess) -> None:
    body = tool_body(guided_regex=PYTHONIC_CALL, stream=True)
    response = httpx.post(f"{auto_server.base_url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    events = [e for e in json_events(response.text) if e["choices"]]
    calls = [c for e in events for c in e["choices"][0]["delta"].get("tool_calls", [])]
    assert calls[0]["function"]["name"] == "get_weather"
    arguments = "".join(c["function"].get("arguments", "") for c in calls)
    assert json.loads(arguments)["city"] in {"Paris", "Rome"}
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_auto_without_a_call_is_text(auto_server: ServerProcess) -> None:
    body = tool_body(guided_regex="[a-z]{5}")
    response = httpx.post(f"{auto_server.base_url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    message = response.json()["choices"][0]["message"]
    assert "tool_calls" not in message
    assert len(message["content"]) == 5


def test_unknown_parser_stops_the_server_at_once(tmp_path: Path, tiny_model_dir: Path) -> None:
    env = {
        **tiny_server_env(tiny_model_dir, tmp_path / "cache"),
        "NIM_ENABLE_AUTO_TOOL_CHOICE": "1",
        "NIM_TOOL_CALL_PARSER": "no-such-parser",
    }
    proc = start_server(tmp_path, env)
    try:
        assert proc.process.wait(120) == 2
    finally:
        proc.stop()
    assert "NIM_TOOL_CALL_PARSER" in proc.log()
    assert "pythonic" in proc.log()  # the parsers vLLM has are listed


def test_openai_sdk_parse_helpers(oai: openai.OpenAI) -> None:
    """`parse` with a pydantic response_format, and a pydantic function tool, as SDK users write."""

    answer = oai.chat.completions.parse(
        model=SERVED_NAME,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        response_format=Capital,
        max_tokens=40,
        temperature=0,
    )
    assert isinstance(answer.choices[0].message.parsed, Capital)

    class GetWeather(pydantic.BaseModel):
        city: Literal["Paris", "Rome"]

    called = oai.chat.completions.parse(
        model=SERVED_NAME,
        messages=QUESTION,  # type: ignore[arg-type]
        tools=[openai.pydantic_function_tool(GetWeather, name="get_weather")],
        tool_choice=WEATHER,  # type: ignore[arg-type]
        max_tokens=40,
        temperature=0,
    )
    (call,) = called.choices[0].message.tool_calls or []
    assert isinstance(call.function.parsed_arguments, GetWeather)  # type: ignore[union-attr]


@tool
def get_weather(city: Literal["Paris", "Rome"]) -> str:
    """Weather in a city."""
    return "sunny"


class Capital(pydantic.BaseModel):
    city: Literal["Paris", "Rome"]


def test_langchain_bind_tools_and_structured_output(server: ServerProcess) -> None:
    llm = ChatOpenAI(
        base_url=f"{server.base_url}/v1",
        api_key=server.api_key,  # type: ignore[arg-type]
        model=SERVED_NAME,
        temperature=0,
        max_tokens=40,  # type: ignore[call-arg]
        max_retries=0,
    )
    message = llm.bind_tools([get_weather], tool_choice="get_weather").invoke("Weather in Paris?")
    (call,) = message.tool_calls  # type: ignore[attr-defined]
    assert call["name"] == "get_weather"
    assert call["args"]["city"] in {"Paris", "Rome"}
    answer = llm.with_structured_output(Capital).invoke("What is the capital of France?")
    assert isinstance(answer, Capital)
