"""The one structured-output constraint a request asks for, from whichever shape it came in.

Clients ask for constrained decoding four ways: OpenAI's `response_format`, vLLM's
`structured_outputs`, NIM 1.x's `nvext.guided_*` (the OpenAI SDK's `extra_body`) and the same
`guided_*` fields at the top level, as NIM also accepts them. All become the engine's
StructuredOutputsParams; a request that names two constraints is refused rather than one of them
being dropped.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from nim_server.errors import invalid_request
from nim_server.protocol import GuidedFields, SamplingFields

if TYPE_CHECKING:
    from vllm.sampling_params import StructuredOutputsParams

# guided_* field -> the engine's constraint keyword.
_GUIDED = {
    "guided_json": "json",
    "guided_regex": "regex",
    "guided_choice": "choice",
    "guided_grammar": "grammar",
}


def structured_outputs(request: SamplingFields) -> StructuredOutputsParams | None:
    """The engine's constraint for this request, or None for free text; 400 for two of them."""
    from vllm.exceptions import VLLMValidationError
    from vllm.sampling_params import StructuredOutputsParams

    found = _constraints(request)
    if len(found) > 1:
        names = " and ".join(f"`{param}`" for param, _ in found)
        raise invalid_request(
            f"one structured-output constraint per request: got {names}", param=found[1][0]
        )
    if not found:
        return None
    param, options = found[0]
    try:
        return StructuredOutputsParams(**options)
    except VLLMValidationError as error:
        raise invalid_request(str(error.args[0]), param=param) from None


def _constraints(request: SamplingFields) -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    response_format = request.response_format
    if response_format is not None and response_format.type == "json_object":
        found.append(("response_format", {"json_object": True}))
    elif response_format is not None and response_format.type == "json_schema":
        assert response_format.json_schema is not None  # the protocol model guarantees it
        found.append(("response_format", {"json": _schema(response_format.json_schema.schema_)}))
    if request.structured_outputs is not None:
        given = request.structured_outputs.model_dump(exclude_none=True)
        if len(given) != 1:
            raise invalid_request(
                "`structured_outputs` takes exactly one of json, regex, choice, grammar, "
                "json_object",
                param="structured_outputs",
            )
        options = {name.rstrip("_"): value for name, value in given.items()}
        if "json" in options:
            options["json"] = _schema(options["json"])
        found.append(("structured_outputs", options))
    if request.nvext is not None:
        found.extend(_guided(request.nvext, prefix="nvext."))
    found.extend(_guided(request, prefix=""))
    return found


def _guided(fields: GuidedFields, *, prefix: str) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for name, keyword in _GUIDED.items():
        value = getattr(fields, name)
        if value is None:
            continue
        found.append((prefix + name, {keyword: _schema(value) if keyword == "json" else value}))
    return found


def _schema(schema: dict[str, Any] | str | None) -> str:
    """A JSON Schema as text, serialised so the grammar compiler sees what the client sent."""
    if isinstance(schema, str):
        try:
            json.loads(schema)
        except ValueError:
            raise invalid_request("a JSON schema given as a string must be JSON") from None
        return schema
    return json.dumps(schema)
