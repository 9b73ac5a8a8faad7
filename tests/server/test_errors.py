"""Every user mistake gets a 4xx OpenAI error envelope naming the problem, never a 422 or 500."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.server.conftest import TINY_MAX_MODEL_LEN, chat_body
from tests.support.server_process import ServerProcess

USER = [{"role": "user", "content": "hi"}]


def assert_error(response: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param, error
    return error


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        ({"messages": [{"content": "hi"}]}, "messages.0.role"),
        ({"messages": USER, "temperature": -0.1}, "temperature"),
        ({"messages": USER, "temperature": 2.5}, "temperature"),
        ({"messages": USER, "top_p": 0}, "top_p"),
        ({"messages": USER, "top_p": 1.5}, "top_p"),
        ({"messages": USER, "presence_penalty": 3}, "presence_penalty"),
        ({"messages": USER, "frequency_penalty": -2.5}, "frequency_penalty"),
        ({"messages": USER, "max_tokens": 0}, "max_tokens"),
        ({"messages": USER, "max_completion_tokens": -1}, "max_completion_tokens"),
        ({"messages": USER, "n": 0}, "n"),
        ({"messages": USER, "n": 1000}, "n"),
        ({"messages": USER, "top_logprobs": 50, "logprobs": True}, "top_logprobs"),
        ({"messages": USER, "top_logprobs": 2}, "top_logprobs"),
        ({"messages": USER, "stop": 5}, "stop"),
        ({"messages": USER, "stop": ["x"] * 50}, "stop"),
        ({"messages": USER, "stream_options": {"include_usage": True}}, "stream_options"),
        ({"messages": USER, "logit_bias": {"abc": 1}}, "logit_bias"),
        ({"messages": USER, "logit_bias": {"99999999": 1}}, "logit_bias"),
        ({"messages": USER, "logit_bias": {"5": 1000}}, "logit_bias.5"),
        ({"messages": USER, "response_format": {"type": "yaml"}}, "response_format.type"),
        (
            {"messages": USER, "response_format": {"type": "json_schema"}},
            "response_format.json_schema.schema",
        ),
        ({"messages": USER, "use_beam_search": True}, "use_beam_search"),
        ({"messages": USER, "reasoning_effort": "high"}, "reasoning_effort"),
        ({"messages": USER, "guided_decoding_backend": "outlines"}, "guided_decoding_backend"),
        ({"messages": USER, "nvext": {"guided_jsonn": {}}}, "nvext.guided_jsonn"),
        ({"messages": USER, "guided_choice": []}, "guided_choice"),
        ({"messages": USER, "guided_whitespace_pattern": " "}, "guided_whitespace_pattern"),
        (
            {"messages": USER, "structured_outputs": {"regex": "a", "whitespace_pattern": " "}},
            "structured_outputs.whitespace_pattern",
        ),
        (
            {"messages": USER, "structured_outputs": {"regex": "a", "choice": ["a"]}},
            "structured_outputs",
        ),
        (  # auto, the default with tools, is off unless the server enables it
            {"messages": USER, "tools": [{"type": "function", "function": {"name": "f"}}]},
            "tool_choice",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages.0.content.0",
        ),
        ({"messages": USER, "repetition_penalty": 0}, "repetition_penalty"),
        ({"messages": USER, "min_p": 1.5}, "min_p"),
        ({"messages": USER, "stop_token_ids": [10**9]}, "stop_token_ids"),
        ({"messages": USER, "n": 2, "temperature": 0}, "n"),
    ],
)
def test_chat_bad_parameters_are_400_naming_the_param(
    http: httpx.Client, body: dict[str, Any], param: str
) -> None:
    error = assert_error(http.post("/v1/chat/completions", json=body), 400, param)
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": "x", "logprobs": 50}, "logprobs"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": [-1]}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": ["ok", ""]}, "prompt"),
    ],
)
def test_completion_bad_parameters(http: httpx.Client, body: dict[str, Any], param: str) -> None:
    assert_error(http.post("/v1/completions", json=body), 400, param)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"messages": [{"role": "user", "content": "hi"},]}',  # trailing comma
        b'{"messages": ',
        b"not json at all",
        b"",
    ],
)
def test_malformed_json_is_400(http: httpx.Client, raw: bytes) -> None:
    response = http.post(
        "/v1/chat/completions", content=raw, headers={"content-type": "application/json"}
    )
    error = assert_error(response, 400)
    assert "JSON" in error["message"]


def test_non_utf8_body_is_400(http: httpx.Client) -> None:
    response = http.post(
        "/v1/chat/completions",
        content=b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}',
        headers={"content-type": "application/json"},
    )
    error = assert_error(response, 400)
    assert "UTF-8" in error["message"]


def test_json_array_body_is_400(http: httpx.Client) -> None:
    error = assert_error(http.post("/v1/chat/completions", json=[1, 2]), 400)
    assert "JSON object" in error["message"]


def test_unknown_model_is_404_naming_it(http: httpx.Client) -> None:
    for path, body in [
        ("/v1/chat/completions", chat_body(model="gpt-4o")),
        ("/v1/completions", {"model": "gpt-4o", "prompt": "x"}),
    ]:
        error = assert_error(http.post(path, json=body), 404, "model")
        assert error["code"] == "model_not_found"
        assert "gpt-4o" in error["message"]


def test_prompt_beyond_context_states_the_limit(http: httpx.Client) -> None:
    long_text = "Kubernetes schedules pods onto nodes. " * 1000
    for path, body, param in [
        (
            "/v1/chat/completions",
            chat_body(messages=[{"role": "user", "content": long_text}]),
            "messages",
        ),
        ("/v1/completions", {"prompt": long_text}, "prompt"),
    ]:
        error = assert_error(http.post(path, json=body), 400, param)
        assert error["code"] == "context_length_exceeded"
        assert error["message"].startswith(
            f"This model's maximum context length is {TINY_MAX_MODEL_LEN} tokens."
        )


def test_max_tokens_beyond_context_states_the_limit(http: httpx.Client) -> None:
    for path, body in [
        ("/v1/chat/completions", chat_body(max_tokens=TINY_MAX_MODEL_LEN)),
        ("/v1/completions", {"prompt": "hi", "max_tokens": TINY_MAX_MODEL_LEN}),
    ]:
        error = assert_error(http.post(path, json=body), 400, "max_tokens")
        assert error["message"].startswith(
            f"This model's maximum context length is {TINY_MAX_MODEL_LEN} tokens."
        )
        assert error["code"] == "context_length_exceeded"


def test_unknown_route_and_method(http: httpx.Client) -> None:
    error = assert_error(http.get("/v1/nothing-here"), 404)
    assert "/v1/nothing-here" in error["message"]
    assert_error(http.get("/v1/chat/completions"), 405)


def test_invalid_json_schema_is_400_not_500(http: httpx.Client) -> None:
    body = chat_body(
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "no-such-type"}},
        }
    )
    assert_error(http.post("/v1/chat/completions", json=body), 400)


def test_missing_or_wrong_api_key_is_401(server_url: str) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
        response = httpx.post(
            f"{server_url}/v1/chat/completions", json=chat_body(), headers=headers
        )
        error = assert_error(response, 401)
        assert error["code"] == "invalid_api_key"
        assert response.headers["www-authenticate"] == "Bearer"
    for path in ("/v1/models", "/v1/metadata", "/v1/completions"):
        assert httpx.get(f"{server_url}{path}").status_code in (401, 405)


def test_health_and_metrics_need_no_key(server_url: str) -> None:
    for path in ("/v1/health/live", "/v1/health/ready", "/v1/metrics", "/metrics"):
        assert httpx.get(f"{server_url}{path}").status_code == 200, path


def test_oversized_body_is_413(http: httpx.Client) -> None:
    huge = "x" * (9 * 1024 * 1024)  # beyond the 8 MiB default
    body = {"messages": [{"role": "user", "content": huge}]}
    error = assert_error(http.post("/v1/chat/completions", json=body), 413)
    assert error["code"] == "request_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is counted as bytes arrive
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"x" * (1024 * 1024)
        yield b'"}]}'

    chunked = http.post(
        "/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"}
    )
    assert_error(chunked, 413)


def test_prompts_are_not_logged_at_info(http: httpx.Client, server: ServerProcess) -> None:
    marker = "zebra-quartz-7741"
    assert (
        http.post(
            "/v1/chat/completions",
            json=chat_body(messages=[{"role": "user", "content": f"secret {marker}"}]),
        ).status_code
        == 200
    )
    assert (
        http.post(
            "/v1/chat/completions",
            json=chat_body(messages=[{"role": "user", "content": marker}], temperature=9),
        ).status_code
        == 400
    )
    assert marker not in server.log()


def test_out_of_vocabulary_token_ids_are_400(http: httpx.Client) -> None:
    # Found by the schemathesis run: the engine itself fails (500) on such ids.
    for prompt in ([4294967296], [[1, 2], [10**7]]):
        error = assert_error(http.post("/v1/completions", json={"prompt": prompt}), 400, "prompt")
        assert "vocabulary" in error["message"]


def test_messages_the_chat_template_rejects_are_400(http: httpx.Client) -> None:
    # Found by the schemathesis run: the template's own checks used to surface as a 500.
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [{"type": "unknown"}]},
    ]
    error = assert_error(http.post("/v1/chat/completions", json=chat_body(messages=messages)), 400)
    assert "tool_calls" in error["message"]
