"""The Responses translation without the engine: the event stream built from chat chunks, and
the bounded response store. The server tests (test_responses.py) cover what the engine produces;
these cover what it rarely does: reasoning deltas (with a reasoning parser), errors mid-stream,
a text answer after a call, eviction.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import openai
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from nim_server.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatCompletionResponse,
    CompletionTokensDetails,
    Usage,
)
from nim_server.protocol_responses import OutputMessage, OutputReasoning, ResponseObject
from nim_server.serving.common import DONE
from nim_server.serving.response_output import finished, output_messages
from nim_server.serving.response_store import ResponseStore
from nim_server.serving.responses_stream import ResponseEventStream

SDK_EVENT: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> str:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    return json.dumps({"id": "x", "choices": [choice], "usage": None})


USAGE = json.dumps(
    {
        "id": "x",
        "choices": [],
        "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
    }
)


async def run(payloads: list[str]) -> tuple[list[dict[str, Any]], list[ResponseObject]]:
    async def chunks() -> AsyncIterator[str]:
        for payload in payloads:
            yield payload

    finished: list[ResponseObject] = []
    stream = ResponseEventStream(ResponseObject(id="resp-1", status="in_progress", model="m"))
    events = []
    async for event in stream.run(chunks(), finished.append):
        data = json.loads(event["data"])
        assert data["type"] == event["event"]
        SDK_EVENT.validate_python(data)  # each event parses as the openai SDK's own type
        events.append(data)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events, finished


async def test_reasoning_then_text_then_call_are_three_items() -> None:
    events, (final,) = await run(
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"reasoning_content": "Think"}),
            chunk({"reasoning_content": "ing."}),
            chunk({"content": "Let me check."}),
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"a"'},
                        }
                    ]
                }
            ),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}, "tool_calls"),
            USAGE,
            DONE,
        ]
    )
    assert [item.type for item in final.output] == ["reasoning", "message", "function_call"]
    reasoning, message, call = final.output
    assert reasoning.content[0].text == "Thinking."  # type: ignore[union-attr]
    assert message.content[0].text == "Let me check."  # type: ignore[union-attr]
    assert (call.call_id, call.name, call.arguments) == ("call_1", "f", '{"a":1}')  # type: ignore[union-attr]
    assert final.status == "completed"
    assert final.usage is not None
    assert final.usage.total_tokens == 9
    kinds = [e["type"] for e in events]
    assert (
        kinds.count("response.output_item.added") == kinds.count("response.output_item.done") == 3
    )
    assert kinds[-1] == "response.completed"
    # Each item is closed before the next one opens.
    added = [i for i, kind in enumerate(kinds) if kind == "response.output_item.added"]
    done = [i for i, kind in enumerate(kinds) if kind == "response.output_item.done"]
    assert added[0] < done[0] < added[1] < done[1] < added[2] < done[2]


async def test_length_ends_as_incomplete() -> None:
    events, (final,) = await run([chunk({"content": "abc"}, "length"), USAGE, DONE])
    assert events[-1]["type"] == "response.incomplete"
    assert final.status == "incomplete"
    assert final.incomplete_details is not None
    assert final.incomplete_details.reason == "max_output_tokens"
    assert final.output[0].status == "incomplete"


async def test_an_error_mid_stream_fails_the_response() -> None:
    error = {
        "error": {"message": "The inference engine failed", "type": "x", "code": "engine_error"}
    }
    events, finished = await run([chunk({"content": "abc"}), json.dumps(error), DONE])
    assert finished == []  # a failed response is not stored
    last = events[-1]
    assert last["type"] == "response.failed"
    assert last["response"]["status"] == "failed"
    assert last["response"]["error"]["message"] == "The inference engine failed"
    parsed = openai.types.responses.ResponseFailedEvent.model_validate(last)
    assert parsed.response.error is not None


def test_a_reasoning_answer_is_a_reasoning_item_then_the_message() -> None:
    answer = ChatCompletionResponse(
        id="x",
        model="m",
        choices=[
            ChatChoice(
                index=0,
                message=AssistantMessage(content="Paris.", reasoning_content="France's capital."),
                finish_reason="stop",
            )
        ],
        usage=Usage(
            prompt_tokens=3,
            completion_tokens=7,
            total_tokens=10,
            completion_tokens_details=CompletionTokensDetails(reasoning_tokens=4),
        ),
    )
    response = finished(ResponseObject(id="resp-1", status="in_progress", model="m"), answer)
    reasoning, message = response.output
    assert isinstance(reasoning, OutputReasoning)
    assert reasoning.content[0].text == "France's capital."
    assert isinstance(message, OutputMessage)
    assert message.content[0].text == "Paris."
    assert response.usage is not None
    assert response.usage.output_tokens_details.reasoning_tokens == 4
    assert output_messages(response) == [{"role": "assistant", "content": "Paris."}]


def stored(response_id: str, text: str = "x") -> ResponseObject:
    return ResponseObject(id=response_id, status="completed", model="m", instructions=text)


def test_store_evicts_the_least_recently_used_within_its_bytes() -> None:
    one = len(stored("a").model_dump_json()) + len("[]")
    store = ResponseStore(max_bytes=3 * one)
    for name in "abc":
        store.put(stored(name), [])
    assert store.get("a") is not None  # used: "b" is now the oldest
    store.put(stored("d"), [])
    assert store.get("b") is None
    assert [store.get(name) is not None for name in "acd"] == [True, True, True]
    assert store.size <= 3 * one
    store.put(stored("e", "x" * 10 * one), [])  # larger than the whole store: not kept
    assert store.get("e") is None
    assert len(store) == 3
    assert store.delete("a")
    assert not store.delete("a")
    assert store.size == 2 * one
