"""SSE streaming of chat and text completions, read byte for byte."""

from __future__ import annotations

import httpx

from nim_server.protocol import ChatCompletionChunk, CompletionResponse
from tests.server.conftest import SERVED_NAME, chat_body
from tests.support.sse import json_events, parse_sse


def stream(http: httpx.Client, path: str, body: dict[str, object]) -> httpx.Response:
    response = http.post(path, json={**body, "stream": True})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    # Every chunk has exactly the documented wire shape (the models forbid extra keys).
    model = ChatCompletionChunk if path.endswith("chat/completions") else CompletionResponse
    for event in json_events(response.text):
        model.model_validate(event)
    return response


def test_chat_stream_framing_role_and_single_finish(http: httpx.Client) -> None:
    response = stream(http, "/v1/chat/completions", chat_body(max_tokens=6))
    assert "\r" not in response.text  # plain `data: ...\n\n` framing
    events = json_events(response.text)
    assert len({e["id"] for e in events}) == 1
    assert all(e["object"] == "chat.completion.chunk" and e["model"] == SERVED_NAME for e in events)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("role" not in e["choices"][0]["delta"] for e in events[1:])
    finishes = [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]]
    assert finishes == ["length"]
    assert events[-1]["choices"][0]["finish_reason"] == "length"


def test_chat_stream_text_matches_non_streaming(http: httpx.Client) -> None:
    body = chat_body(max_tokens=10)
    whole = http.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
    events = json_events(stream(http, "/v1/chat/completions", body).text)
    streamed = "".join(c["delta"].get("content") or "" for e in events for c in e["choices"])
    assert streamed == whole


def test_chat_stream_usage_chunk_before_done(http: httpx.Client) -> None:
    body = chat_body(max_tokens=5, stream_options={"include_usage": True})
    events = json_events(stream(http, "/v1/chat/completions", body).text)
    last = events[-1]
    assert last["choices"] == []
    assert last["usage"]["completion_tokens"] == 5
    usage = last["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + 5
    assert all(e.get("usage") is None for e in events[:-1])


def test_chat_stream_without_usage_has_no_usage_chunk(http: httpx.Client) -> None:
    events = json_events(stream(http, "/v1/chat/completions", chat_body(max_tokens=3)).text)
    assert all(e["choices"] for e in events)


def test_chat_stream_n_choices_each_finish_once(http: httpx.Client) -> None:
    body = chat_body(max_tokens=4, n=3, temperature=1, seed=5)
    events = json_events(stream(http, "/v1/chat/completions", body).text)
    finishes: dict[int, int] = {}
    for event in events:
        for choice in event["choices"]:
            if choice["finish_reason"]:
                finishes[choice["index"]] = finishes.get(choice["index"], 0) + 1
    assert finishes == {0: 1, 1: 1, 2: 1}


def test_chat_stream_logprobs(http: httpx.Client) -> None:
    body = chat_body(max_tokens=4, logprobs=True, top_logprobs=2)
    events = json_events(stream(http, "/v1/chat/completions", body).text)
    entries = [
        entry
        for e in events[1:]
        for c in e["choices"]
        if c["logprobs"]
        for entry in c["logprobs"]["content"]
    ]
    assert 1 <= len(entries) <= 4
    assert all(len(entry["top_logprobs"]) == 2 for entry in entries)


def test_completion_stream_with_usage(http: httpx.Client) -> None:
    body = {
        "prompt": ["The capital of France is", "Hello"],
        "max_tokens": 4,
        "temperature": 0,
        "stream_options": {"include_usage": True},
    }
    events = json_events(stream(http, "/v1/completions", body).text)
    assert all(e["object"] == "text_completion" for e in events)
    texts: dict[int, str] = {}
    finishes: dict[int, str] = {}
    for event in events[:-1]:
        for choice in event["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
            if choice["finish_reason"]:
                assert choice["index"] not in finishes
                finishes[choice["index"]] = choice["finish_reason"]
    assert finishes == {0: "length", 1: "length"}
    assert events[-1]["choices"] == []
    assert events[-1]["usage"]["completion_tokens"] == 8
    whole = http.post("/v1/completions", json={**body, "stream": False, "stream_options": None})
    assert [c["text"] for c in whole.json()["choices"]] == [texts[0], texts[1]]


def test_completion_stream_echo_starts_with_prompt(http: httpx.Client) -> None:
    body = {"prompt": "Kubernetes schedules", "max_tokens": 3, "echo": True, "temperature": 0}
    events = json_events(stream(http, "/v1/completions", body).text)
    text = "".join(c["text"] for e in events for c in e["choices"])
    assert text.startswith("Kubernetes schedules")


def test_keepalive_comments_are_valid_sse() -> None:
    # Clients must skip ":" comment lines (pings); the parser used above does the same.
    assert parse_sse(": ping\n\ndata: {}\n\ndata: [DONE]\n\n") == ["{}", "[DONE]"]
