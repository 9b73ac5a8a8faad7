"""Checks and helpers shared by the chat and text completion services."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from nim_server.engine import (
    AdapterRemoved,
    EngineFailure,
    EngineRequestError,
    EngineState,
    InferenceEngine,
    ServedModel,
)
from nim_server.errors import (
    APIError,
    context_length_exceeded,
    engine_failure,
    invalid_request,
    model_not_found,
    service_unavailable,
)
from nim_server.protocol import (
    CompletionTokensDetails,
    ErrorBody,
    ErrorResponse,
    PromptTokensDetails,
    Usage,
)

if TYPE_CHECKING:
    from vllm.logprobs import Logprob

log = logging.getLogger(__name__)

# Seconds a client should wait before retrying while the model loads.
LOADING_RETRY_AFTER = 5

T = TypeVar("T")


# What an incoming X-Request-Id may be to be used as is (a tracing id, not arbitrary text).
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def new_request_id(prefix: str, client_id: str | None = None) -> str:
    """The id of a response: `<prefix>-<client's X-Request-Id>` when it is a sane one.

    The engine's id for the request stays unique either way (engine_request_id), so two
    clients that send the same X-Request-Id do not collide in the engine.
    """
    if client_id is not None and _CLIENT_REQUEST_ID.fullmatch(client_id):
        return f"{prefix}-{client_id}"
    return f"{prefix}-{uuid.uuid4().hex}"


def engine_request_id(request_id: str) -> str:
    return f"{request_id}-{uuid.uuid4().hex[:8]}"


def served_model(engine: InferenceEngine, requested: str | None) -> ServedModel:
    """The model a request addresses, or the error that tells the client why it cannot be served."""
    state = engine.check_health()
    if state is EngineState.LOADING:
        raise service_unavailable(
            f"The model is not ready yet ({engine.reason}); retry after "
            f"{LOADING_RETRY_AFTER} seconds.",
            retry_after=LOADING_RETRY_AFTER,
            code="model_not_ready",
        )
    if state is EngineState.STOPPED:
        raise service_unavailable(
            f"The server is shutting down ({engine.reason}); retry on another replica.",
            retry_after=1,
            code="shutting_down",
        )
    if state is not EngineState.READY:  # failed to load, or died: this process cannot serve
        raise engine_failure(f"The server cannot serve requests: {engine.reason}.")
    model = engine.model
    # `model` omitted or "" (the Nitro client) means the base model this server serves.
    if requested and requested != model.name:
        adapter = engine.adapters.get(requested)
        if adapter is None:
            raise model_not_found(requested)
        return adapter
    return model


def output_budget(
    model: ServedModel, prompt_tokens: int, requested: int | None, *, param: str
) -> int:
    """The number of tokens the engine may generate, or a 400 if the request cannot fit."""
    limit = model.max_model_len
    if prompt_tokens >= limit:
        raise context_length_exceeded(limit, prompt_tokens, None, param=param)
    if requested is None:
        return limit - prompt_tokens
    if prompt_tokens + requested > limit:
        raise context_length_exceeded(limit, prompt_tokens, requested, param="max_tokens")
    return requested


def as_api_error(error: BaseException) -> APIError:
    """Map an engine-side failure to the error the client sees."""
    if isinstance(error, APIError):
        return error
    if isinstance(error, AdapterRemoved):  # as if it had been gone when the request came
        return model_not_found(error.model)
    if isinstance(error, EngineRequestError):
        return invalid_request(str(error), param=error.param)
    if isinstance(error, EngineFailure):
        return engine_failure(f"The inference engine failed: {error}")
    log.exception("unexpected error while generating", exc_info=error)
    return engine_failure("Internal error while generating; see the server log.")


def stream_error_payload(error: BaseException) -> str:
    api_error = as_api_error(error)
    body = ErrorBody(
        message=api_error.message, type=api_error.type, param=api_error.param, code=api_error.code
    )
    return ErrorResponse(error=body).model_dump_json()


async def started(stream: AsyncIterator[T]) -> AsyncIterator[T]:
    """The same stream, its first item already pulled so that submission errors surface now.

    The engine validates some parameters (e.g. a JSON schema) only when the request is added;
    those must become a 400 rather than an in-band error in a stream that already said 200.
    Closing the returned stream closes the engine's, which aborts the request.
    """
    try:
        first: T | None = await anext(stream)
    except StopAsyncIteration:
        first = None
    except Exception as error:
        await close_stream(stream)
        raise as_api_error(error) from None
    except BaseException:  # cancelled (the client left) or exiting: not an error to report
        await close_stream(stream)
        raise
    return _resumed(first, stream)


async def _resumed(first: T | None, rest: AsyncIterator[T]) -> AsyncIterator[T]:
    try:
        if first is not None:
            yield first
        async for item in rest:
            yield item
    finally:
        await close_stream(rest)


async def close_stream(stream: AsyncIterator[Any]) -> None:
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()


def token_text(logprob: Logprob | None, fallback: str) -> str:
    if logprob is not None and logprob.decoded_token is not None:
        return str(logprob.decoded_token)
    return fallback


def top_entries(
    position: dict[int, Logprob], limit: int, fallback: dict[int, str]
) -> list[tuple[str, float]]:
    """The `limit` most likely tokens at one position, best first."""
    ranked = sorted(position.items(), key=lambda item: (item[1].rank or 0, -item[1].logprob))
    return [
        (token_text(logprob, fallback.get(token_id, "")), max(logprob.logprob, -9999.0))
        for token_id, logprob in ranked[:limit]
    ]


def check_message_content(messages: Sequence[dict[str, Any]]) -> None:
    """Reject content parts this text-only server cannot use, naming where they are."""
    for m_index, message in enumerate(messages):
        content = message.get("content")
        if isinstance(content, list):
            for p_index, part in enumerate(content):
                if part.get("type") != "text" or part.get("text") is None:
                    raise invalid_request(
                        f"Content part type {part.get('type')!r} is not supported: this model "
                        "accepts text only ({'type': 'text', 'text': ...}).",
                        param=f"messages.{m_index}.content.{p_index}",
                    )


DONE = "[DONE]"


async def framed_stream(
    chunks: AsyncIterator[str],
    engine_streams: Sequence[AsyncIterator[Any]],
    on_error: Callable[[], None],
) -> AsyncIterator[str]:
    """The SSE payloads of a response: its chunks, an in-band error if one occurs, `[DONE]`.

    Errors after the 200 was sent cannot change the status, so they go in-band. The `finally`
    is also reached early when the client hangs up (the SSE response closes this generator):
    closing the engine streams aborts their requests and frees their slots at once.
    """
    try:
        async for chunk in chunks:
            yield chunk
    except Exception as error:
        on_error()
        yield stream_error_payload(error)
    finally:
        await close_stream(chunks)
        for stream in engine_streams:
            await close_stream(stream)
    yield DONE


def usage(
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int | None = None,
    reasoning_tokens: int | None = None,
) -> Usage:
    """Token counts; `cached_tokens` (prefix-cache hits) once the engine has reported them,
    `reasoning_tokens` when the server has a reasoning parser."""
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        prompt_tokens_details=(
            PromptTokensDetails(cached_tokens=cached_tokens) if cached_tokens is not None else None
        ),
        completion_tokens_details=(
            CompletionTokensDetails(reasoning_tokens=reasoning_tokens)
            if reasoning_tokens is not None
            else None
        ),
    )


async def merge_streams(streams: Sequence[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """Interleave started streams as items arrive, tagging each with its stream's index.

    Closing the merged iterator (a client that went away) cancels every producer, which aborts
    their engine requests.
    """
    queue: asyncio.Queue[tuple[int, T] | tuple[int, BaseException] | None] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[T]) -> None:
        try:
            async for item in stream:
                await queue.put((index, item))
        except Exception as error:
            await queue.put((index, error))
        finally:
            await queue.put(None)

    tasks = [asyncio.create_task(pump(i, stream)) for i, stream in enumerate(streams)]
    running = len(tasks)
    try:
        while running:
            entry = await queue.get()
            if entry is None:
                running -= 1
                continue
            index, item = entry
            if isinstance(item, BaseException):
                raise item
            yield index, item
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
