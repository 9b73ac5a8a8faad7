"""The official OpenAI SDK against the server: chat, streaming, errors, concurrency."""

from __future__ import annotations

import asyncio

import openai
import pytest

from tests.server.conftest import SERVED_NAME

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_sdk_chat(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(
        model=SERVED_NAME,
        messages=QUESTION,
        max_tokens=5,
        temperature=0,  # type: ignore[arg-type]
    )
    assert completion.model == SERVED_NAME
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 5


def test_sdk_stream(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model=SERVED_NAME,
        messages=QUESTION,  # type: ignore[arg-type]
        max_tokens=6,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_sdk_completions_and_models(oai: openai.OpenAI) -> None:
    completion = oai.completions.create(model=SERVED_NAME, prompt="Hello", max_tokens=3)
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 3
    assert [m.id for m in oai.models.list()] == [SERVED_NAME]
    assert oai.models.retrieve(SERVED_NAME).id == SERVED_NAME


def test_sdk_errors_map_to_sdk_exceptions(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as not_found:
        oai.chat.completions.create(model="no-such-model", messages=QUESTION)  # type: ignore[arg-type]
    assert "no-such-model" in str(not_found.value)
    with pytest.raises(openai.BadRequestError) as bad:
        oai.chat.completions.create(model=SERVED_NAME, messages=QUESTION, temperature=5)  # type: ignore[arg-type]
    assert bad.value.body["param"] == "temperature"  # type: ignore[index]
    wrong_key = openai.OpenAI(base_url=str(oai.base_url), api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong_key.models.list()


async def test_sixteen_concurrent_requests(async_oai: openai.AsyncOpenAI) -> None:
    async def one(i: int) -> int:
        if i % 2:
            stream = await async_oai.chat.completions.create(
                model=SERVED_NAME,
                messages=QUESTION,  # type: ignore[arg-type]
                max_tokens=8 + i,
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"ignore_eos": True},  # sampling may pick EOS early otherwise
            )
            usage = [c.usage async for c in stream if c.usage]
            return usage[-1].completion_tokens
        completion = await async_oai.chat.completions.create(
            model=SERVED_NAME,
            messages=QUESTION,  # type: ignore[arg-type]
            max_tokens=8 + i,
            extra_body={"ignore_eos": True},
        )
        assert completion.usage is not None
        return completion.usage.completion_tokens

    results = await asyncio.gather(*(one(i) for i in range(16)))
    assert results == [8 + i for i in range(16)]
