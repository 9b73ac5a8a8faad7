"""Request-scoped helpers shared by the routers: services, body parsing, auth, disconnects."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError

from nim_server.admission import Admission
from nim_server.engine import InferenceEngine
from nim_server.errors import APIError, from_validation_error, invalid_request
from nim_server.metrics import ServerMetrics
from nim_server.serving import (
    ChatService,
    CompletionService,
    ModelService,
    ResponsesService,
    TokenizeService,
)
from nim_server.serving.adapters import AdapterRegistry
from nim_server.settings import Settings

ModelT = TypeVar("ModelT", bound=BaseModel)
T = TypeVar("T")


@dataclass(frozen=True)
class Services:
    settings: Settings
    engine: InferenceEngine
    adapters: AdapterRegistry | None  # with NIM_PEFT_SOURCE
    metrics: ServerMetrics
    admission: Admission
    chat: ChatService
    completions: CompletionService
    models: ModelService
    tokenizer: TokenizeService
    responses: ResponsesService


# The dependencies are coroutines although they never await: FastAPI runs a plain function in
# its thread pool, a hop to another thread and back on every request for nothing.
async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def require_api_key(request: Request, services: ServicesDep) -> None:
    """Bearer auth when NIM_API_KEY is set; the comparison takes constant time."""
    expected = services.settings.api_key
    if expected is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(
        token.strip().encode(), expected.get_secret_value().encode()
    ):
        raise APIError(
            401,
            "Incorrect or missing API key: send `Authorization: Bearer <key>`.",
            param=None,
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or a 413 as soon as it grows beyond ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:  # chunked bodies announce no length: count as they arrive
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> APIError:
    return APIError(
        413,
        f"The request body is larger than the server accepts ({limit} bytes).",
        code="request_too_large",
    )


async def parse_body(request: Request, model: type[ModelT], limit: int) -> ModelT:
    """Validate the JSON body against ``model``; every failure is a 400 naming the parameter."""
    body = await read_body(request, limit)
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise invalid_request(
            f"The request body is not valid UTF-8 (byte {error.start}): send JSON encoded as UTF-8."
        ) from None
    try:
        return model.model_validate_json(body)
    except ValidationError as error:
        raise from_validation_error(error) from None


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI request body for routes that parse the body themselves (for clients and fuzzers).

    The model itself is added to the document's components by the app (see `app.py`).
    """
    reference = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": reference}}}
    }


class ClientDisconnected(Exception):
    """The client went away before the response was ready."""


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Run ``work`` but cancel it (aborting its engine request) if the client disconnects."""
    task = asyncio.ensure_future(work)

    async def wait_for_disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(wait_for_disconnect())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
        # Let both run their cleanup: the engine abort happens in the work's cancellation.
        await asyncio.gather(task, watcher, return_exceptions=True)
    if task.cancelled():
        raise ClientDisconnected
    return task.result()
