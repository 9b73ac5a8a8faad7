"""The OpenAI-compatible inference routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
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
    ServicesDep,
    body_schema,
    parse_body,
    require_api_key,
    until_disconnected,
)
from nim_server.serving.common import new_request_id

router = APIRouter(dependencies=[Depends(require_api_key)])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "Invalid request",
        401: "Missing or wrong API key",
        404: "Unknown model",
        503: "Model not loaded yet",
    }.items()
}
# Seconds between SSE comment lines that keep idle proxies from closing a slow stream.
SSE_PING_SECONDS = 15


def _respond(result: BaseModel | AsyncIterator[str], request_id: str) -> Response:
    headers = {"X-Request-Id": request_id}
    if isinstance(result, BaseModel):
        return Response(result.model_dump_json(), media_type="application/json", headers=headers)
    return EventSourceResponse(
        result,
        sep="\n",
        ping=SSE_PING_SECONDS,
        headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.post(
    "/v1/chat/completions",
    openapi_extra=body_schema(ChatCompletionRequest),
    responses=_ERRORS,
    summary="Create a chat completion (JSON, or SSE when `stream` is true)",
)
async def chat_completions(request: Request, services: ServicesDep) -> Response:
    body = await parse_body(request, ChatCompletionRequest)
    request_id = new_request_id("chatcmpl")
    result = await until_disconnected(request, services.chat.create(body, request_id))
    return _respond(result, request_id)


@router.post(
    "/v1/completions",
    openapi_extra=body_schema(CompletionRequest),
    responses=_ERRORS,
    summary="Create a text completion (JSON, or SSE when `stream` is true)",
)
async def completions(request: Request, services: ServicesDep) -> Response:
    body = await parse_body(request, CompletionRequest)
    request_id = new_request_id("cmpl")
    result = await until_disconnected(request, services.completions.create(body, request_id))
    return _respond(result, request_id)


@router.get("/v1/models", response_model=ModelList, responses=_ERRORS)
async def list_models(services: ServicesDep) -> ModelList:
    return services.models.list()


@router.get("/v1/models/{model_id:path}", response_model=ModelCard, responses=_ERRORS)
async def get_model(model_id: str, services: ServicesDep) -> ModelCard:
    # `:path` because NIM model ids contain slashes (meta/llama-3.1-8b-instruct).
    return services.models.get(model_id)
