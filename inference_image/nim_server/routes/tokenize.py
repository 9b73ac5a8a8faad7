"""POST /tokenize and /detokenize (vLLM's paths), behind the API key like /v1."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from nim_server.protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from nim_server.routes.dependencies import ServicesDep, body_schema, parse_body, require_api_key

router = APIRouter(tags=["tokenizer"], dependencies=[Depends(require_api_key)])


@router.post(
    "/tokenize", openapi_extra=body_schema(TokenizeRequest), response_model=TokenizeResponse
)
async def tokenize(request: Request, services: ServicesDep) -> TokenizeResponse:
    body = await parse_body(request, TokenizeRequest, services.settings.max_request_bytes)
    return await services.tokenizer.tokenize(body)


@router.post(
    "/detokenize", openapi_extra=body_schema(DetokenizeRequest), response_model=DetokenizeResponse
)
async def detokenize(request: Request, services: ServicesDep) -> DetokenizeResponse:
    body = await parse_body(request, DetokenizeRequest, services.settings.max_request_bytes)
    return await services.tokenizer.detokenize(body)
