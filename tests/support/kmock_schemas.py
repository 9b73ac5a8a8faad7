"""What a real API server says to a server-side apply whose content does not fit the kind's type.

Before merging, the API server converts an applied configuration to the typed form of its kind.
A value of the wrong type (a string where a map belongs) or a field the type does not declare (a
typo in a free-form section such as a NIMService's `affinity`) fails that conversion, and current
API servers answer **500** "failed to create typed patch object (...)" rather than a 4xx
(kubernetes/kubernetes#139253, #118476). The operator must recognise that answer as "this
content is invalid", not as a passing server error, or it would retry an invalid child forever.

kmock stores whatever it is given, so the emulator asks this module first. The types come from
the Kubernetes OpenAPI schemas bundled with `kubernetes-validate` (strict variant: undeclared
fields are errors). Only the two conversion failures above are reported: a server-side apply is a
partial object, so missing required fields are not errors here (the real server checks those
later, on the merged object, with a 422 this emulator does not reproduce).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from typing import Any

import jsonschema
import kubernetes_validate.utils as kv
import referencing

__all__ = ["typed_patch_errors"]

_SCHEMA_VERSION = kv.latest_version()
# JSON Schema type names as the API server's structured-merge types call them.
_SCHEMA_TYPES = {"object": "map", "array": "list", "integer": "numeric", "number": "numeric"}


@functools.cache
def _validator(api_version: str, kind: str) -> jsonschema.Draft202012Validator | None:
    """The strict schema of a built-in kind, or None for kinds it does not know (custom ones)."""
    short_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    directory = f"kubernetes-json-schema/v{_SCHEMA_VERSION}-local-strict"
    try:
        schema = kv.schema_contents(
            f"{directory}/{kind.lower()}-{short_version}.json", _SCHEMA_VERSION
        )
    except FileNotFoundError:
        return None
    definitions = kv.schema_contents(f"{directory}/_definitions.json", _SCHEMA_VERSION)
    registry: referencing.Registry[Any] = referencing.Resource.from_contents(schema) @ (
        referencing.Resource.from_contents(definitions) @ referencing.Registry()
    )
    return jsonschema.Draft202012Validator(schema, registry=registry)


def _path(parts: Iterable[Any]) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in parts)


def _type_name(value: Any) -> str:
    if isinstance(value, Mapping):
        return "map"
    if isinstance(value, list):
        return "list"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "numeric"
    return "string"


def _conversion_failures(error: jsonschema.ValidationError) -> Iterable[str]:
    # An int-or-string or nullable field reports its failure through anyOf/oneOf sub-errors.
    for sub in error.context or ():
        yield from _conversion_failures(sub)
    where = _path(error.absolute_path)
    if error.validator == "type":
        expected = error.validator_value
        names = [expected] if isinstance(expected, str) else list(expected)
        wanted = sorted({_SCHEMA_TYPES.get(name, name) for name in names if name != "null"})
        yield f"{where}: expected {' or '.join(wanted)}, got {_type_name(error.instance)}"
    elif error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
        declared = set(error.schema.get("properties", {}))
        for name in sorted(set(error.instance) - declared):
            yield f"{where}.{name}: field not declared in schema"


def typed_patch_errors(config: Mapping[str, Any]) -> list[str]:
    """Why the API server could not type this applied configuration; empty when it can."""
    api_version, kind = config.get("apiVersion"), config.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return []
    validator = _validator(api_version, kind)
    if validator is None:
        return []
    failures: list[str] = []
    for error in validator.iter_errors(dict(config)):
        failures += [f for f in _conversion_failures(error) if f not in failures]
    return failures
