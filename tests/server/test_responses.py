"""OpenAI's Responses API (`/v1/responses`) on the real engine, through the openai SDK and raw HTTP.

The endpoint answers through the chat path, so at temperature 0 a response and the equivalent
chat completion must be the same text: most tests compare the two, which shows the translation
(instructions, input items, stored history, tools) reached the prompt. The tiny model's weights
are random: function calls come from a named `tool_choice`, which constrains decoding.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.server.conftest import SERVED_NAME, chat_body
from tests.server.test_errors import assert_error
from tests.server.test_tools import CITY

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": CITY,
}
WEATHER_CHOICE = {"type": "function", "name": "get_weather"}
QUESTION = "What is the weather in Paris?"


def chat_text(http: httpx.Client, messages: list[dict[str, Any]], **overrides: Any) -> str:
    response = http.post("/v1/chat/completions", json=chat_body(messages=messages, **overrides))
    assert response.status_code == 200, response.text
    content: str = response.json()["choices"][0]["message"]["content"]
    return content


def sse_events(raw: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) pairs of a Responses stream, checked as strictly as OpenAI frames it."""
    assert raw.endswith("\n\n")
    events = []
    for block in raw.split("\n\n")[:-1]:
        lines = [line for line in block.split("\n") if not line.startswith(":")]
        if not lines:
            continue  # keep-alive comment
        assert len(lines) == 2, block
        assert lines[0].startswith("event: "), block
        assert lines[1].startswith("data: "), block
        name, data = lines[0][len("event: ") :], json.loads(lines[1][len("data: ") :])
        assert data["type"] == name
        events.append((name, data))
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    return events


# ----- text ----------------------------------------------------------------------------------


def test_text_answer_is_the_chat_answer(oai: openai.OpenAI, http: httpx.Client) -> None:
    response = oai.responses.create(
        model=SERVED_NAME,
        instructions="Answer briefly.",
        input="What is the capital of France?",
        max_output_tokens=8,
        temperature=0,
        metadata={"team": "search"},
    )
    assert response.object == "response"
    assert response.id.startswith("resp-")
    assert response.model == SERVED_NAME
    (message,) = response.output
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.id.startswith("msg_")
    (part,) = message.content
    assert part.type == "output_text"
    expected = chat_text(
        http,
        [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "What is the capital of France?"},
        ],
    )
    assert response.output_text == part.text == expected
    usage = response.usage
    assert usage is not None
    assert usage.input_tokens > 0
    assert 0 < usage.output_tokens <= 8
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens >= 0
    assert usage.output_tokens_details.reasoning_tokens == 0
    # Echoed settings, as OpenAI returns them.
    assert response.instructions == "Answer briefly."
    assert response.metadata == {"team": "search"}
    assert (response.temperature, response.max_output_tokens) == (0, 8)
    assert response.tools == []
    assert response.tool_choice == "auto"
    if response.status == "incomplete":  # the random model rarely stops by itself
        assert usage.output_tokens == 8
        assert response.incomplete_details is not None
        assert response.incomplete_details.reason == "max_output_tokens"
        assert message.status == "incomplete"
    else:
        assert response.status == "completed"
        assert response.incomplete_details is None


def test_input_items_with_text_parts_are_the_chat_messages(
    oai: openai.OpenAI, http: httpx.Client
) -> None:
    items: Any = [
        {"role": "developer", "content": "Be terse."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Hello!"}]},
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "Name "},
                {"type": "input_text", "text": "a city."},
            ],
        },
    ]
    response = oai.responses.create(
        model=SERVED_NAME, input=items, max_output_tokens=6, temperature=0
    )
    expected = chat_text(
        http,
        [
            {"role": "developer", "content": "Be terse."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Name a city."},
        ],
        max_tokens=6,
    )
    assert response.output_text == expected


def test_text_format_json_schema_constrains_the_text(oai: openai.OpenAI) -> None:
    response = oai.responses.create(
        model=SERVED_NAME,
        input="What is the capital of France?",
        max_output_tokens=60,
        temperature=0,
        text={"format": {"type": "json_schema", "name": "city", "schema": CITY, "strict": True}},
    )
    assert response.status == "completed"
    assert json.loads(response.output_text)["city"] in {"Paris", "Rome"}
    assert response.text is not None
    assert response.text.format is not None
    assert response.text.format.type == "json_schema"


def test_the_response_id_follows_x_request_id(http: httpx.Client) -> None:
    body = {"model": SERVED_NAME, "input": "Hi", "max_output_tokens": 2, "store": False}
    response = http.post("/v1/responses", json=body, headers={"X-Request-Id": "trace-42"})
    assert response.status_code == 200, response.text
    assert response.json()["id"] == response.headers["x-request-id"] == "resp-trace-42"


# ----- streaming -----------------------------------------------------------------------------


def test_text_stream_is_openais_event_sequence(oai: openai.OpenAI, http: httpx.Client) -> None:
    body = {"model": SERVED_NAME, "input": "Tell me a story.", "max_output_tokens": 12}
    whole = oai.responses.create(**body, temperature=0)  # type: ignore[call-overload]
    raw = http.post("/v1/responses", json={**body, "temperature": 0, "stream": True})
    assert raw.status_code == 200, raw.text
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert "[DONE]" not in raw.text  # OpenAI ends a Responses stream with its last event
    events = sse_events(raw.text)
    names = [name for name, _ in events]
    last = "response.incomplete" if whole.status == "incomplete" else "response.completed"
    deltas = [data["delta"] for name, data in events if name == "response.output_text.delta"]
    assert names == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * len(deltas),
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        last,
    ]
    created = events[0][1]["response"]
    assert created["status"] == "in_progress"
    assert created["output"] == []
    final = events[-1][1]["response"]
    assert final["id"] == created["id"] == raw.headers["x-request-id"]
    assert final["status"] == whole.status
    text = "".join(deltas)
    assert text == whole.output_text  # temperature 0: the same text streamed or not
    assert events[-4][1]["text"] == text
    item = events[-2][1]["item"]
    assert item["content"][0]["text"] == text
    assert final["output"] == [item]
    assert final["usage"]["output_tokens"] == whole.usage.output_tokens  # type: ignore[union-attr]
    item_ids = {data["item_id"] for _, data in events if "item_id" in data}
    assert item_ids == {item["id"]}


def test_sdk_stream_helper_gets_the_final_response(oai: openai.OpenAI) -> None:
    """`responses.stream` checks the order and identity of every event it accumulates."""
    with oai.responses.stream(
        model=SERVED_NAME,
        input="What is the capital of France?",
        max_output_tokens=60,
        temperature=0,
        text={"format": {"type": "json_schema", "name": "city", "schema": CITY, "strict": True}},
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created"
    assert kinds[-1] == "response.completed"
    assert final.status == "completed"
    assert json.loads(final.output_text)["city"] in {"Paris", "Rome"}


async def test_async_sdk_streams_a_function_call(async_oai: openai.AsyncOpenAI) -> None:
    stream = await async_oai.responses.create(
        model=SERVED_NAME,
        input=QUESTION,
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice=WEATHER_CHOICE,  # type: ignore[arg-type]
        max_output_tokens=60,
        temperature=0,
        stream=True,
    )
    events = [event async for event in stream]
    kinds = [event.type for event in events]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert kinds[-3:] == [
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert "response.content_part.added" not in kinds  # a call has arguments, not content
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    done = events[-3]
    assert done.type == "response.function_call_arguments.done"
    assert "".join(deltas) == done.arguments
    assert json.loads(done.arguments)["city"] in {"Paris", "Rome"}
    final = events[-1]
    assert final.type == "response.completed"
    (call,) = final.response.output
    assert call.type == "function_call"
    assert (call.name, call.arguments, call.status) == ("get_weather", done.arguments, "completed")


# ----- function calling ----------------------------------------------------------------------


def test_named_tool_choice_makes_a_function_call(oai: openai.OpenAI) -> None:
    response = oai.responses.create(
        model=SERVED_NAME,
        input=QUESTION,
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice=WEATHER_CHOICE,  # type: ignore[arg-type]
        max_output_tokens=60,
        temperature=0,
    )
    assert response.status == "completed"
    (call,) = response.output
    assert call.type == "function_call"
    assert call.call_id.startswith("call_")
    assert call.id is not None
    assert call.id.startswith("fc_")
    assert call.name == "get_weather"
    assert json.loads(call.arguments)["city"] in {"Paris", "Rome"}
    assert response.tools[0].type == "function"
    assert response.tool_choice.type == "function"  # type: ignore[union-attr]


def test_a_forced_call_leaves_text_format_for_later_turns(oai: openai.OpenAI) -> None:
    """The Agents SDK sends an agent's output type as text.format even on a forced-call turn."""
    response = oai.responses.create(
        model=SERVED_NAME,
        input=QUESTION,
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice=WEATHER_CHOICE,  # type: ignore[arg-type]
        text={"format": {"type": "json_schema", "name": "report", "schema": CITY}},
        max_output_tokens=60,
        temperature=0,
    )
    (call,) = response.output
    assert call.type == "function_call"
    assert response.text is not None
    assert response.text.format is not None
    assert response.text.format.type == "json_schema"  # echoed as given


def test_vllm_sampling_extras_reach_the_chat_path(oai: openai.OpenAI, http: httpx.Client) -> None:
    extras = {"top_k": 5, "seed": 7, "stop": ["\x07"], "repetition_penalty": 1.3}
    response = oai.responses.create(
        model=SERVED_NAME, input="Hi", max_output_tokens=8, temperature=1, extra_body=extras
    )
    expected = chat_text(
        http, [{"role": "user", "content": "Hi"}], max_tokens=8, temperature=1, **extras
    )
    assert response.output_text == expected  # the same seed: the same sample


def test_function_output_continues_the_conversation(oai: openai.OpenAI, http: httpx.Client) -> None:
    """A call's output, sent by previous_response_id or with the whole input: the same prompt."""
    called = oai.responses.create(
        model=SERVED_NAME,
        input=QUESTION,
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice=WEATHER_CHOICE,  # type: ignore[arg-type]
        max_output_tokens=60,
        temperature=0,
    )
    (call,) = called.output
    assert call.type == "function_call"
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"}
    settings: Any = {"tools": [WEATHER_TOOL], "tool_choice": "none", "max_output_tokens": 6}
    chained = oai.responses.create(
        model=SERVED_NAME,
        previous_response_id=called.id,
        input=[result],  # type: ignore[list-item]
        temperature=0,
        **settings,
    )
    whole = oai.responses.create(
        model=SERVED_NAME,
        input=[
            {"role": "user", "content": QUESTION},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            result,
        ],  # type: ignore[list-item]
        temperature=0,
        store=False,
        **settings,
    )
    expected = chat_text(
        http,
        [
            {"role": "user", "content": QUESTION},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call.call_id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": call.arguments},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call.call_id, "content": "Sunny, 21 C"},
        ],
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": CITY}}],
        tool_choice="none",
        max_tokens=6,
    )
    assert chained.output_text == whole.output_text == expected
    assert chained.previous_response_id == called.id


# ----- stored responses ----------------------------------------------------------------------


def test_previous_response_id_continues_without_the_old_instructions(
    oai: openai.OpenAI, http: httpx.Client
) -> None:
    first = oai.responses.create(
        model=SERVED_NAME,
        instructions="Answer in French.",
        input="Hi",
        max_output_tokens=4,
        temperature=0,
    )
    second = oai.responses.create(
        model=SERVED_NAME,
        previous_response_id=first.id,
        input="And then?",
        max_output_tokens=4,
        temperature=0,
    )
    # OpenAI: instructions apply to their own response only, not to the ones chained after it.
    expected = chat_text(
        http,
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": first.output_text},
            {"role": "user", "content": "And then?"},
        ],
        max_tokens=4,
    )
    assert second.output_text == expected
    assert second.usage is not None
    assert first.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens


def test_retrieve_and_delete_a_stored_response(oai: openai.OpenAI) -> None:
    created = oai.responses.create(
        model=SERVED_NAME, input="Hi", max_output_tokens=3, temperature=0
    )
    assert oai.responses.retrieve(created.id).model_dump() == created.model_dump()
    oai.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError) as caught:
        oai.responses.retrieve(created.id)
    assert caught.value.code == "response_not_found"
    with pytest.raises(openai.NotFoundError):
        oai.responses.delete(created.id)


def test_a_streamed_response_is_stored_when_it_ends(oai: openai.OpenAI) -> None:
    stream = oai.responses.create(
        model=SERVED_NAME, input="Hi", max_output_tokens=3, temperature=0, stream=True
    )
    final = list(stream)[-1]
    assert final.type in ("response.completed", "response.incomplete")
    stored = oai.responses.retrieve(final.response.id)
    assert stored.output_text == final.response.output_text
    assert stored.status == final.response.status


def test_store_false_keeps_nothing(oai: openai.OpenAI, http: httpx.Client) -> None:
    response = oai.responses.create(model=SERVED_NAME, input="Hi", max_output_tokens=2, store=False)
    assert response.store is False
    assert_error(http.get(f"/v1/responses/{response.id}"), 404, "response_id")
    body = {"input": "more", "previous_response_id": response.id, "max_output_tokens": 2}
    error = assert_error(http.post("/v1/responses", json=body), 404, "previous_response_id")
    assert error["code"] == "response_not_found"
    assert response.id in error["message"]


# ----- what the server cannot honour ---------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools.0.type"),
        (
            {"tools": [WEATHER_TOOL, {"type": "file_search", "vector_store_ids": ["v"]}]},
            "tools.1.type",
        ),
        ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice"),
        ({"background": True}, "background"),
        ({"reasoning": {"effort": "high"}}, "reasoning.effort"),  # needs a reasoning parser
        ({"reasoning": {"summary": "auto"}}, "reasoning.summary"),
        ({"include": ["reasoning.encrypted_content"]}, "include"),
        ({"truncation": "auto"}, "truncation"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"text": {"verbosity": "low"}}, "text.verbosity"),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input.0.type"),
        ({"input": [{"role": "bot", "content": "Hi"}]}, "input.0.role"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
            "input.0.content.0",
        ),
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": [{"type": "reasoning", "summary": []}]}, "input"),
        # From the chat path, named as the Responses field:
        ({"tools": [WEATHER_TOOL]}, "tool_choice"),  # "auto" needs NIM_ENABLE_AUTO_TOOL_CHOICE
        (
            {"tool_choice": {"type": "function", "name": "nope"}, "tools": [WEATHER_TOOL]},
            "tool_choice",
        ),
        (
            {"tools": [{**WEATHER_TOOL, "parameters": {"type": 5}}], "tool_choice": "required"},
            "tools.0.parameters",
        ),
        ({"max_output_tokens": 10**6}, "max_output_tokens"),
        ({"temperature": 3}, "temperature"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"top_k": -5}, "top_k"),  # a sampling extra, checked by the chat path
    ],
)
def test_what_cannot_be_honoured_is_a_400_naming_it(
    http: httpx.Client, overrides: dict[str, Any], param: str
) -> None:
    body = {"model": SERVED_NAME, "input": "Hi", "max_output_tokens": 2, **overrides}
    error = assert_error(http.post("/v1/responses", json=body), 400, param)
    assert error["type"] == "invalid_request_error"
    assert "items" not in error["message"]  # pydantic's union tags are not the client's names


def test_unsupported_tool_type_through_the_sdk(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        oai.responses.create(
            model=SERVED_NAME,
            input="Search the web",
            tools=[{"type": "web_search"}],
            max_output_tokens=2,
        )
    assert caught.value.param == "tools.0.type"  # type: ignore[attr-defined]
    assert "web_search" in caught.value.message


def test_unknown_model_and_unknown_response(http: httpx.Client) -> None:
    error = assert_error(
        http.post("/v1/responses", json={"model": "nope", "input": "Hi"}), 404, "model"
    )
    assert error["code"] == "model_not_found"
    assert_error(http.get("/v1/responses/resp-nope"), 404, "response_id")
    assert_error(http.get("/v1/responses/resp-nope?stream=true"), 400, "stream")


def test_responses_need_the_api_key(server_url: str) -> None:
    response = httpx.post(f"{server_url}/v1/responses", json={"input": "Hi"}, timeout=30)
    assert_error(response, 401)
