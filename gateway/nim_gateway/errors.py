"""OpenAI error objects, the only shape of error this gateway answers with."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import JSONResponse

__all__ = ["error_body", "error_response", "sse_error_event"]


def error_body(
    message: str, type_: str, *, param: str | None = None, code: str | int | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(
    status: int,
    message: str,
    type_: str,
    *,
    param: str | None = None,
    code: str | int | None = None,
    retry_after: int | None = None,
) -> JSONResponse:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse(
        error_body(message, type_, param=param, code=code), status_code=status, headers=headers
    )


def sse_error_event(message: str, type_: str, code: str | int | None = None) -> bytes:
    """An error after a stream's headers went out: in-band, then the end of the stream."""
    data = json.dumps(error_body(message, type_, code=code))
    return f"data: {data}\n\ndata: [DONE]\n\n".encode()
