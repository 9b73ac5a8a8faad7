"""The OpenAI-compatible inference routes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel
from sse_starlette import EventSourceResponse

from nim_server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ErrorResponse,
    ModelCard,
    ModelList,
)
from nim_server.routes.dependencies import (
    Services,
    ServicesDep,
    body_schema,
    parse_body,
    require_api_key,
    until_disconnected,
)
from nim_server.serving.common import close_stream, new_request_id

router = APIRouter(dependencies=[Depends(require_api_key)])

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "Invalid request",
        401: "Missing or wrong API key",
        404: "Unknown model",
        413: "Request body too large",
        429: "Server at capacity; retry after Retry-After seconds",
        503: "Model not loaded yet, or shutting down",
    }.items()
}
# Seconds between SSE comment lines that keep idle proxies from closing a slow stream.
SSE_PING_SECONDS = 15
SSEEvent = dict[str, str]  # {event, data}: a named event, as the Responses API sends them


async def serve_admitted(
    request: Request,
    services: Services,
    weight: int,
    request_id: str,
    work: Callable[[], Awaitable[BaseModel | AsyncIterator[str] | AsyncIterator[SSEEvent]]],
    *,
    model: str | None,
) -> Response:
    """Run ``work`` holding an admission ticket until its response (or stream) is finished.

    ``model`` is the id the request named (None or "" for the base model): no default, so no
    route can leave it out and count its requests under the base model.
    """
    admission = services.admission
    ticket = admission.admit(weight)
    try:
        result = await until_disconnected(request, work())
    except BaseException:
        admission.release(ticket)
        raise
    # Counted once the service accepted it: `model` is then an id this server serves.
    services.metrics.model_requests.labels(model=model or services.engine.model.name).inc()
    headers = {"X-Request-Id": request_id, **admission.rate_limit_headers()}
    if isinstance(result, BaseModel):
        admission.release(ticket)
        return Response(result.model_dump_json(), media_type="application/json", headers=headers)

    async def released_at_end() -> AsyncIterator[str | SSEEvent]:
        try:
            async for payload in result:
                yield payload
        finally:
            # Also reached when the client hangs up: closing this closes the service's stream.
            await close_stream(result)
            admission.release(ticket)

    return EventSourceResponse(
        released_at_end(),
        sep="\n",
        ping=SSE_PING_SECONDS,
        headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.post(
    "/v1/chat/completions",
    openapi_extra=body_schema(ChatCompletionRequest),
    responses=ERRORS,
    summary="Create a chat completion (JSON, or SSE when `stream` is true)",
)
async def chat_completions(request: Request, services: ServicesDep) -> Response:
    body = await parse_body(request, ChatCompletionRequest, services.settings.max_request_bytes)
    request_id = new_request_id("chatcmpl", request.headers.get("x-request-id"))
    return await serve_admitted(
        request,
        services,
        body.n,
        request_id,
        lambda: services.chat.create(body, request_id),
        model=body.model,
    )


@router.post(
    "/v1/completions",
    openapi_extra=body_schema(CompletionRequest),
    responses=ERRORS,
    summary="Create a text completion (JSON, or SSE when `stream` is true)",
)
async def completions(request: Request, services: ServicesDep) -> Response:
    body = await parse_body(request, CompletionRequest, services.settings.max_request_bytes)
    request_id = new_request_id("cmpl", request.headers.get("x-request-id"))
    return await serve_admitted(
        request,
        services,
        body.n * body.prompt_count,
        request_id,
        lambda: services.completions.create(body, request_id),
        model=body.model,
    )


@router.get("/v1/models", response_model=ModelList, responses=ERRORS)
async def list_models(services: ServicesDep) -> ModelList:
    return services.models.list()


@router.get("/v1/models/{model_id:path}", response_model=ModelCard, responses=ERRORS)
async def get_model(model_id: str, services: ServicesDep) -> ModelCard:
    # `:path` because NIM model ids contain slashes (meta/llama-3.1-8b-instruct).
    return services.models.get(model_id)
