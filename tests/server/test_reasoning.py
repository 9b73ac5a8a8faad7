"""Reasoning models on the real engine: thinking apart from the answer, whole and streamed.

The server runs a scripted tiny model (tests/support/scripted_model.py): whatever it is asked,
its greedy answer is `<think>`, one sentence of thinking, `</think>`, then a hermes-style
`<tool_call>`. So the real engine writes what a reasoning model writes, and vLLM's deepseek_r1
reasoning parser (NIM_REASONING_PARSER) and hermes tool-call parser must take it apart.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.server.conftest import SERVED_NAME, TINY_MAX_MODEL_LEN, tiny_server_env
from tests.server.test_errors import assert_error
from tests.support.scripted_model import build_scripted_model
from tests.support.server_process import ServerProcess, ready_server, start_server
from tests.support.sse import json_events

THOUGHT = "I should look up the weather."
CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
SCRIPT = ["<think>", THOUGHT, "</think>", "<tool_call>", CALL, "</tool_call>"]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def thinking_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    model = build_scripted_model(
        tmp_path_factory.mktemp("scripted"), SCRIPT, max_position_embeddings=TINY_MAX_MODEL_LEN
    )
    work = tmp_path_factory.mktemp("reasoning-server")
    env = {
        **tiny_server_env(model, work / "cache"),
        "NIM_REASONING_PARSER": "deepseek_r1",
        "NIM_ENABLE_AUTO_TOOL_CHOICE": "1",
        "NIM_TOOL_CALL_PARSER": "hermes",
    }
    with ready_server(work, env) as server:
        yield server


def chat(server: ServerProcess, **body: Any) -> dict[str, Any]:
    body = {"model": SERVED_NAME, "messages": QUESTION, "temperature": 0, **body}
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return dict(response.json())


def stream(server: ServerProcess, **body: Any) -> list[dict[str, Any]]:
    body = {"model": SERVED_NAME, "messages": QUESTION, "temperature": 0, "stream": True, **body}
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return json_events(response.text)


def joined(chunks: list[dict[str, Any]], key: str) -> str:
    return "".join(
        c["choices"][0]["delta"].get(key) or "" for c in chunks if c["choices"] and c["choices"][0]
    )


def test_thinking_goes_to_reasoning_content(thinking_server: ServerProcess) -> None:
    body = chat(thinking_server)
    message = body["choices"][0]["message"]
    assert message["reasoning_content"] == THOUGHT
    # Without tools, the answer part is the text after </think>, markers and all.
    assert message["content"] == f"<tool_call>{CALL}</tool_call>"
    assert "tool_calls" not in message
    assert body["choices"][0]["finish_reason"] == "stop"
    # One token of thinking (the sentence is one token of this tokenizer); the markers are not.
    assert body["usage"]["completion_tokens_details"] == {"reasoning_tokens": 1}
    assert body["usage"]["completion_tokens"] == len(SCRIPT) + 1  # and the end of turn


def test_tool_calls_are_read_from_the_answer_only(thinking_server: ServerProcess) -> None:
    body = chat(thinking_server, tools=[WEATHER_TOOL])
    choice = body["choices"][0]
    assert choice["message"]["reasoning_content"] == THOUGHT
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert choice["finish_reason"] == "tool_calls"


def test_streamed_thinking_then_streamed_call(thinking_server: ServerProcess) -> None:
    chunks = stream(thinking_server, tools=[WEATHER_TOOL], stream_options={"include_usage": True})
    assert joined(chunks, "reasoning_content") == THOUGHT
    assert joined(chunks, "content") == ""
    calls = [
        call
        for c in chunks
        if c["choices"]
        for call in c["choices"][0]["delta"].get("tool_calls") or []
    ]
    assert calls
    assert calls[0]["function"]["name"] == "get_weather"
    arguments = "".join(call["function"].get("arguments") or "" for call in calls)
    assert json.loads(arguments) == {"city": "Paris"}
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "tool_calls"
    # No thinking text leaks into a chunk after the answer began, nor the markers anywhere.
    assert "think>" not in json.dumps(chunks)
    assert chunks[-1]["usage"]["completion_tokens_details"] == {"reasoning_tokens": 1}


def test_streamed_thinking_without_tools(thinking_server: ServerProcess) -> None:
    chunks = stream(thinking_server)
    assert joined(chunks, "reasoning_content") == THOUGHT
    assert joined(chunks, "content") == f"<tool_call>{CALL}</tool_call>"


def test_include_reasoning_false_leaves_the_thinking_out(thinking_server: ServerProcess) -> None:
    body = chat(thinking_server, include_reasoning=False)
    message = body["choices"][0]["message"]
    assert "reasoning_content" not in message
    assert message["content"] == f"<tool_call>{CALL}</tool_call>"
    chunks = stream(thinking_server, include_reasoning=False)
    assert joined(chunks, "reasoning_content") == ""
    assert joined(chunks, "content") == f"<tool_call>{CALL}</tool_call>"


def test_cut_short_while_thinking(thinking_server: ServerProcess) -> None:
    body = chat(thinking_server, max_tokens=2)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["reasoning_content"] == THOUGHT
    assert choice["message"]["content"] is None


def test_structured_output_constrains_the_answer_not_the_thinking(
    thinking_server: ServerProcess,
) -> None:
    schema = {"type": "string", "enum": ["sunny"]}
    body = chat(
        thinking_server,
        max_tokens=20,
        response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": schema}},
    )
    message = body["choices"][0]["message"]
    # The scripted thinking is untouched; the scripted tool call after it is not JSON, so
    # only the grammar, applied from </think> on, can have written this answer.
    assert message["reasoning_content"] == THOUGHT
    assert json.loads(message["content"]) == "sunny"


def test_named_tool_choice_after_thinking(thinking_server: ServerProcess) -> None:
    city = {"type": "string", "enum": ["Paris", "Rome"]}
    parameters = {"type": "object", "properties": {"city": city}, "required": ["city"]}
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": parameters}}
    body = chat(
        thinking_server,
        tools=[tool],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=60,
    )
    message = body["choices"][0]["message"]
    assert message["reasoning_content"] == THOUGHT
    (call,) = message["tool_calls"]
    assert json.loads(call["function"]["arguments"])["city"] in ("Paris", "Rome")


def test_reasoning_effort_reaches_the_template(thinking_server: ServerProcess) -> None:
    body = chat(thinking_server, reasoning_effort="low")
    assert body["choices"][0]["message"]["reasoning_content"] == THOUGHT


def test_openai_sdk_sees_reasoning_content(thinking_server: ServerProcess) -> None:
    client = openai.OpenAI(base_url=thinking_server.base_url + "/v1", api_key="x", max_retries=0)
    reply = client.chat.completions.create(
        model=SERVED_NAME,
        messages=QUESTION,  # type: ignore[arg-type]
        temperature=0,
    )
    assert reply.choices[0].message.model_extra == {"reasoning_content": THOUGHT}


# ----- a server without a reasoning parser ------------------------------------------------------


def test_reasoning_effort_without_a_reasoning_parser_is_a_400(http: httpx.Client) -> None:
    body = {"model": SERVED_NAME, "messages": QUESTION, "reasoning_effort": "high"}
    assert_error(http.post("/v1/chat/completions", json=body), 400, "reasoning_effort")
    completion = {"model": SERVED_NAME, "prompt": "Hi", "reasoning_effort": "high"}
    assert_error(http.post("/v1/completions", json=completion), 400, "reasoning_effort")


def test_no_reasoning_fields_without_a_parser(http: httpx.Client) -> None:
    body = {"model": SERVED_NAME, "messages": QUESTION, "max_tokens": 4}
    reply = http.post("/v1/chat/completions", json=body).json()
    assert "reasoning_content" not in reply["choices"][0]["message"]
    assert "completion_tokens_details" not in reply["usage"]


def test_unknown_reasoning_parser_stops_the_server_at_once(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    env = {**tiny_server_env(tiny_model_dir, tmp_path / "cache"), "NIM_REASONING_PARSER": "nope"}
    proc = start_server(tmp_path, env)
    try:
        assert proc.process.wait(120) == 2
    finally:
        proc.stop()
    assert "NIM_REASONING_PARSER" in proc.log()
    assert "deepseek_r1" in proc.log()  # the parsers vLLM has are listed
