"""OpenAI's Responses API: create (JSON or event stream), retrieve and delete stored responses."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from nim_server.errors import APIError, invalid_request
from nim_server.protocol_responses import (
    DeletedResponse,
    ResponseCreateRequest,
    ResponseObject,
    without_item_tags,
)
from nim_server.routes.dependencies import ServicesDep, body_schema, parse_body, require_api_key
from nim_server.routes.openai import ERRORS, serve_admitted
from nim_server.serving.common import new_request_id
from nim_server.serving.responses import response_not_found

router = APIRouter(dependencies=[Depends(require_api_key)])


@router.post(
    "/v1/responses",
    openapi_extra=body_schema(ResponseCreateRequest),
    responses=ERRORS,
    summary="Create a response (JSON, or the Responses event stream when `stream` is true)",
)
async def create_response(request: Request, services: ServicesDep) -> Response:
    try:
        body = await parse_body(request, ResponseCreateRequest, services.settings.max_request_bytes)
    except APIError as error:
        raise _named_plainly(error) from None
    request_id = new_request_id("resp", request.headers.get("x-request-id"))
    return await serve_admitted(
        request,
        services,
        1,
        request_id,
        lambda: services.responses.create(body, request_id),
        model=body.model,
    )


@router.get(
    "/v1/responses/{response_id}",
    response_model=ResponseObject,
    responses=ERRORS,
    summary="A stored response (kept in this replica's memory; see NIM_RESPONSES_STORE_BYTES)",
)
async def retrieve_response(
    response_id: str, request: Request, services: ServicesDep
) -> ResponseObject:
    if request.query_params.get("stream", "false").lower() not in ("false", "0"):
        # OpenAI replays a background response's events; there are none to replay here.
        raise invalid_request("`stream` is not supported when retrieving a response", "stream")
    stored = services.responses.store.get(response_id)
    if stored is None:
        raise response_not_found(response_id, "response_id")
    return stored.response


@router.delete("/v1/responses/{response_id}", response_model=DeletedResponse, responses=ERRORS)
async def delete_response(response_id: str, services: ServicesDep) -> DeletedResponse:
    if not services.responses.store.delete(response_id):
        raise response_not_found(response_id, "response_id")
    return DeletedResponse(id=response_id)


def _named_plainly(error: APIError) -> APIError:
    """`input.items.0.message.role` -> `input.0.role`, in the param and the message."""
    plain = without_item_tags(error.param)
    if error.param is not None and plain is not None:
        error.message = error.message.replace(error.param, plain)
        error.param = plain
    return error
