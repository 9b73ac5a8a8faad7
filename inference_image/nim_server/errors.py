"""Errors the API reports, each rendered as one OpenAI error envelope.

Serving code raises these; the app's exception handlers turn them into responses, and a stream
that already started sends them in-band. Nothing here imports FastAPI.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import ValidationError

from nim_server.protocol import ErrorBody, ErrorResponse


@dataclass
class APIError(Exception):
    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message

    def envelope(self) -> ErrorResponse:
        return ErrorResponse(
            error=ErrorBody(message=self.message, type=self.type, param=self.param, code=self.code)
        )


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def model_not_found(model: str) -> APIError:
    return APIError(
        404,
        f"The model `{model}` does not exist.",
        param="model",
        code="model_not_found",
    )


def context_length_exceeded(
    max_model_len: int, prompt_tokens: int, max_tokens: int | None, param: str
) -> APIError:
    # Clients (LangChain, LiteLLM) parse the first sentence: keep it exactly OpenAI's.
    if max_tokens is None:
        detail = f"However, your prompt contains {prompt_tokens} tokens."
    else:
        detail = (
            f"However, you requested {prompt_tokens + max_tokens} tokens "
            f"({prompt_tokens} in the messages, {max_tokens} in the completion)."
        )
    return APIError(
        400,
        f"This model's maximum context length is {max_model_len} tokens. {detail} "
        "Please reduce the length of the prompt or of max_tokens.",
        param=param,
        code="context_length_exceeded",
    )


def service_unavailable(message: str, retry_after: int, code: str) -> APIError:
    return APIError(
        503,
        message,
        type="service_unavailable_error",
        code=code,
        headers={"Retry-After": str(retry_after)},
    )


def engine_failure(message: str) -> APIError:
    return APIError(500, message, type="internal_server_error", code="engine_error")


def from_validation_error(error: ValidationError) -> APIError:
    """A 400 naming the first offending field, as OpenAI does."""
    first = error.errors(include_url=False)[0]
    loc = [str(part) for part in first["loc"]]
    kind = first["type"]
    context = first.get("ctx") or {}
    if kind == "json_invalid":
        reason = first["msg"].removeprefix("Invalid JSON: ")
        return invalid_request(f"The request body is not valid JSON: {reason}.")
    if "param" in context:  # raised by a model-level check that knows the parameter
        return invalid_request(f"{first['msg']}.", param=str(context["param"]))
    if not loc:
        return invalid_request("The request body must be a JSON object.")
    param = ".".join(_drop_union_tags(loc))
    if kind == "missing":
        return invalid_request(f"Missing required parameter: '{param}'.", param=param)
    if kind == "extra_forbidden":
        return invalid_request(f"Unrecognized request argument supplied: {param}", param=param)
    return invalid_request(
        f"Invalid value for '{param}': {_lower_first(first['msg'])}.",
        param=param,
    )


def _drop_union_tags(loc: list[str]) -> list[str]:
    # pydantic puts the union member's type in the location (`stop.str`, `content.list[...]`);
    # users only know field names and list indices.
    return [part for part in loc if not _looks_like_type_tag(part)]


def _looks_like_type_tag(part: str) -> bool:
    return part in {"str", "int", "float", "bool", "list", "dict", "none"} or part.startswith(
        ("list[", "dict[", "function-", "tagged-union", "literal[", "constrained-")
    )


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text else text
