"""Property tests of the wire models: valid requests parse, invalid ones name their parameter."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from nim_server.errors import APIError, from_validation_error
from nim_server.protocol import (
    MAX_CHOICES,
    ChatCompletionChunk,
    ChatCompletionRequest,
    CompletionRequest,
    DeltaMessage,
)

ROLES = ["system", "developer", "user", "assistant", "tool"]
messages = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(ROLES), "content": st.text(max_size=50)}),
    min_size=1,
    max_size=5,
)
valid_sampling = st.fixed_dictionaries(
    {},
    optional={
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0.01, 1),
        "presence_penalty": st.floats(-2, 2),
        "frequency_penalty": st.floats(-2, 2),
        "n": st.integers(1, MAX_CHOICES),
        "seed": st.integers(-(2**31), 2**31),
        "stop": st.one_of(st.text(max_size=5), st.lists(st.text(max_size=5), max_size=4)),
        "max_tokens": st.integers(1, 10**6),
        "top_k": st.integers(-1, 100),
        "min_p": st.floats(0, 1),
        "user": st.text(max_size=10),
    },
)


def parse(model: type[Any], body: object) -> Any:
    try:
        return model.model_validate_json(json.dumps(body))
    except ValidationError as error:
        raise from_validation_error(error) from None


@given(messages=messages, sampling=valid_sampling)
def test_valid_chat_requests_parse(
    messages: list[dict[str, str]], sampling: dict[str, Any]
) -> None:
    request = parse(ChatCompletionRequest, {"messages": messages, **sampling})
    assert [m.role for m in request.messages] == [m["role"] for m in messages]


@given(
    field=st.sampled_from(
        ["temperature", "top_p", "presence_penalty", "frequency_penalty", "min_p"]
    ),
    value=st.one_of(st.floats(max_value=-2.01), st.floats(min_value=2.01, allow_infinity=False)),
)
def test_out_of_range_floats_name_the_param(field: str, value: float) -> None:
    body = {"messages": [{"role": "user", "content": "x"}], field: value}
    with pytest.raises(APIError) as error:
        parse(ChatCompletionRequest, body)
    assert error.value.status == 400
    assert error.value.param == field


@given(role=st.text(min_size=1, max_size=12).filter(lambda r: r not in ROLES))
def test_unknown_roles_are_rejected(role: str) -> None:
    with pytest.raises(APIError) as error:
        parse(ChatCompletionRequest, {"messages": [{"role": role, "content": "x"}]})
    assert error.value.param == "messages.0.role"


@settings(max_examples=50)
@given(
    prompt=st.one_of(
        st.text(min_size=1),
        st.lists(st.text(min_size=1), min_size=1, max_size=4),
        st.lists(st.integers(0, 1000), min_size=1, max_size=8),
    )
)
def test_completion_prompt_forms(prompt: object) -> None:
    assert parse(CompletionRequest, {"prompt": prompt}).prompt == prompt


def test_unknown_fields_are_ignored_like_vllm() -> None:
    request = parse(
        ChatCompletionRequest,
        {"messages": [{"role": "user", "content": "x"}], "parallel_tool_calls": False, "x": 1},
    )
    assert request.messages[0].content == "x"


def test_chunk_serialisation_omits_role_after_first() -> None:
    first = ChatCompletionChunk(id="c", created=1, model="m", choices=[], usage=None).model_dump()
    assert first["object"] == "chat.completion.chunk"
    assert json.loads(DeltaMessage(content="a").model_dump_json()) == {"content": "a"}
    assert json.loads(DeltaMessage(role="assistant", content="").model_dump_json()) == {
        "role": "assistant",
        "content": "",
    }
