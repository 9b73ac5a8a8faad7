"""The structural-schema half of what the API server checks on a custom resource, offline.

The API server validates a custom resource against its CRD's `openAPIV3Schema` (after
defaulting), then runs the CEL rules (tests/operator/test_crd_cel.py evaluates those). This
converts the schema's Kubernetes extensions to plain JSON Schema and validates with `jsonschema`:

* `x-kubernetes-int-or-string` is already spelled as `anyOf: [integer, string]`;
* `x-kubernetes-list-type: set` means no duplicate items (`uniqueItems`);
* `x-kubernetes-preserve-unknown-fields` keeps a node open;
* OpenAPI 3.0's boolean `exclusiveMinimum`/`exclusiveMaximum` become JSON Schema's numeric ones;
* unknown fields: by default the API server *prunes* them (and at most warns); only a request
  with `fieldValidation=Strict` (what `kubectl --validate=strict`, the default, sends) rejects
  them. `strict=True` models the latter with `additionalProperties: false`.

Error lines read like the API server's: `spec.tolerations[0].operator: ...`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import jsonschema

__all__ = ["schema_errors", "to_json_schema"]

_DROPPED = ("properties", "items", "default", "additionalProperties", "description")


def to_json_schema(node: Mapping[str, Any], *, strict: bool) -> dict[str, Any]:
    """A CRD schema node as JSON Schema (see the module docstring for `strict`)."""
    converted = {
        key: value
        for key, value in node.items()
        if not key.startswith("x-kubernetes-") and key not in _DROPPED
    }
    if "properties" in node:
        converted["properties"] = {
            name: to_json_schema(child, strict=strict) for name, child in node["properties"].items()
        }
        if strict and not node.get("x-kubernetes-preserve-unknown-fields"):
            converted["additionalProperties"] = False
    if isinstance(node.get("additionalProperties"), Mapping):
        converted["additionalProperties"] = to_json_schema(
            node["additionalProperties"], strict=strict
        )
    if "items" in node:
        converted["items"] = to_json_schema(node["items"], strict=strict)
    if node.get("x-kubernetes-list-type") == "set":
        converted["uniqueItems"] = True
    # OpenAPI v3.0 marks a bound exclusive with a boolean; JSON Schema gives the bound itself.
    for exclusive, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if converted.pop(exclusive, False) is True:
            converted[exclusive] = converted.pop(bound)
    return converted


def _path(parts: Iterable[Any]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _lines(error: jsonschema.ValidationError) -> Iterable[str]:
    where = _path(error.absolute_path)
    if error.validator == "required" and isinstance(error.instance, Mapping):
        for name in error.validator_value:
            if name not in error.instance:
                yield f"{where}.{name}: Required value" if where else f"{name}: Required value"
    elif error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
        declared = set(error.schema.get("properties", {}))
        for name in sorted(set(error.instance) - declared):
            yield f'{where}.{name}: unknown field "{where}.{name}"'
    else:
        yield f"{where}: {error.message}"


def schema_errors(
    root: Mapping[str, Any], obj: Mapping[str, Any], *, strict: bool = False
) -> list[str]:
    """What the structural schema `root` says about `obj` (already defaulted); empty if valid."""
    validator = jsonschema.Draft202012Validator(to_json_schema(root, strict=strict))
    lines: list[str] = []
    for error in validator.iter_errors(dict(obj)):
        lines += _lines(error)
    return lines
