"""Structured outputs in every shape clients send them, constraining the real engine's output.

The tiny model's weights are random, so free text would almost never match a regex or a schema:
an answer that does shows the constraint reached the engine. Each shape is checked end to end:
NIM's `nvext.guided_*` (through the OpenAI SDK's extra_body), the same fields at the top level,
vLLM's `structured_outputs`, and OpenAI's `response_format` (tests/server/test_chat.py).
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import openai
import pytest

from tests.server.conftest import SERVED_NAME, chat_body
from tests.server.test_errors import assert_error
from tests.support.sse import json_events

# One enum property: the random model's favourite token is "\r", which a schema with more room
# for whitespace lets it repeat until max_tokens.
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "enum": ["Paris", "Rome", "Berlin"]}},
    "required": ["city"],
    "additionalProperties": False,
}
REGEX = r"[0-9]{3}-[a-z]{2}"
CHOICES = ["alpha", "beta", "gamma"]


def content(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "stop", choice
    text = choice["message"]["content"] if "message" in choice else choice["text"]
    assert isinstance(text, str)
    return text


def assert_schema_obeyed(text: str) -> None:
    value = json.loads(text)
    assert set(value) == {"city"}
    assert value["city"] in {"Paris", "Rome", "Berlin"}


def test_nvext_guided_json_through_the_openai_sdk(oai: openai.OpenAI) -> None:
    reply = oai.chat.completions.create(
        model=SERVED_NAME,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=60,
        temperature=0,
        extra_body={"nvext": {"guided_json": SCHEMA}},
    )
    assert reply.choices[0].finish_reason == "stop"
    assert_schema_obeyed(reply.choices[0].message.content or "")


@pytest.mark.parametrize(
    "constraint",
    [
        {"guided_regex": REGEX},
        {"nvext": {"guided_regex": REGEX}},
        {"structured_outputs": {"regex": REGEX}},
    ],
    ids=["top-level", "nvext", "structured_outputs"],
)
def test_regex_in_each_shape(http: httpx.Client, constraint: dict[str, Any]) -> None:
    text = content(http.post("/v1/chat/completions", json=chat_body(max_tokens=20, **constraint)))
    assert re.fullmatch(REGEX, text), text


@pytest.mark.parametrize(
    "constraint",
    [
        {"guided_choice": CHOICES},
        {"nvext": {"guided_choice": CHOICES}},
        {"structured_outputs": {"choice": CHOICES}},
    ],
    ids=["top-level", "nvext", "structured_outputs"],
)
def test_choice_in_each_shape_for_text_completions(
    http: httpx.Client, constraint: dict[str, Any]
) -> None:
    body = {"model": SERVED_NAME, "prompt": "Pick one:", "max_tokens": 10, "temperature": 0}
    assert content(http.post("/v1/completions", json={**body, **constraint})) in CHOICES


def test_json_schema_as_a_string_and_in_structured_outputs(http: httpx.Client) -> None:
    for constraint in (
        {"guided_json": json.dumps(SCHEMA)},
        {"structured_outputs": {"json": SCHEMA}},
    ):
        body = chat_body(max_tokens=60, **constraint)
        assert_schema_obeyed(content(http.post("/v1/chat/completions", json=body)))


def test_grammar(http: httpx.Client) -> None:
    grammar = 'root ::= "yes" | "no" | "maybe later"'
    body = chat_body(max_tokens=10, nvext={"guided_grammar": grammar})
    assert content(http.post("/v1/chat/completions", json=body)) in {"yes", "no", "maybe later"}


def test_streamed_output_is_constrained_too(http: httpx.Client) -> None:
    body = chat_body(max_tokens=20, stream=True, guided_regex=REGEX)
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    text = "".join(
        event["choices"][0]["delta"].get("content") or ""
        for event in json_events(response.text)
        if event["choices"]
    )
    assert re.fullmatch(REGEX, text), text


def test_nvext_sampling_extras_reach_the_engine(http: httpx.Client) -> None:
    """`nvext.ignore_eos` keeps generating to max_tokens, as the top-level field does."""
    body = chat_body(max_tokens=30, nvext={"ignore_eos": True, "top_k": 1})
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 30


def test_two_constraints_are_refused_not_one_dropped(http: httpx.Client) -> None:
    body = chat_body(response_format={"type": "json_object"}, nvext={"guided_regex": REGEX})
    error = assert_error(http.post("/v1/chat/completions", json=body), 400, "nvext.guided_regex")
    assert "`response_format` and `nvext.guided_regex`" in error["message"]


@pytest.mark.parametrize(
    "constraint",
    [{"guided_regex": "[unclosed"}, {"guided_json": "{not json"}, {"guided_grammar": "root ::= "}],
)
def test_a_constraint_the_engine_cannot_compile_is_400(
    http: httpx.Client, constraint: dict[str, Any]
) -> None:
    response = http.post("/v1/chat/completions", json=chat_body(**constraint))
    assert assert_error(response, 400)["type"] == "invalid_request_error"


def test_neutral_values_of_unhonoured_fields_are_accepted(http: httpx.Client) -> None:
    body = chat_body(use_beam_search=False, length_penalty=1.0)
    assert http.post("/v1/chat/completions", json=body).status_code == 200
