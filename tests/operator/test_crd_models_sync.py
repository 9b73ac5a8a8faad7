"""The pydantic models and the CRD's OpenAPI schema describe the same object.

Walks both trees side by side and compares property names, required fields, types, enums,
bounds, patterns and defaults. A field added, renamed or re-defaulted on one side only fails here.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from pydantic.fields import FieldInfo

from nim_operator.models import NIMServiceSpec, NIMServiceStatus

CRD_PATH = Path(__file__).parents[2] / "crds" / "nimservice.yaml"
# Keywords that describe the value; the rest (description, CEL rules, list types) are CRD-only.
LEAF_KEYWORDS = (
    "type",
    "enum",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
)


def openapi_root() -> dict[str, Any]:
    crd = yaml.safe_load(CRD_PATH.read_text())
    (version,) = crd["spec"]["versions"]
    root: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return root


def _strip_optional(annotation: Any) -> Any:
    """`X | None` -> X; everything else unchanged (Annotated constraints are kept)."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        arms = tuple(arm for arm in typing.get_args(annotation) if arm is not type(None))
        return arms[0] if len(arms) == 1 else Union[arms]  # noqa: UP007 (built at run time)
    return annotation


def _base(annotation: Any) -> Any:
    if typing.get_origin(annotation) is Annotated:
        return typing.get_args(annotation)[0]
    return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _leaf_from_pydantic(annotation: Any) -> dict[str, Any]:
    schema = TypeAdapter(annotation).json_schema()
    if "anyOf" in schema:
        kinds = sorted(arm.get("type") for arm in schema["anyOf"])
        assert kinds == ["integer", "string"], f"unexpected union {schema}"
        leaf: dict[str, Any] = {"type": "int-or-string"}
        for arm in schema["anyOf"]:
            if "pattern" in arm:
                leaf["pattern"] = arm["pattern"]
        return leaf
    if "const" in schema:
        schema = {**schema, "enum": [schema.pop("const")]}
    # JSON Schema's numeric exclusive bounds are OpenAPI v3.0's bound plus a boolean flag.
    for exclusive, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if exclusive in schema:
            schema = {**schema, bound: schema[exclusive], exclusive: True}
    return {key: schema[key] for key in LEAF_KEYWORDS if key in schema}


def _leaf_from_crd(node: dict[str, Any]) -> dict[str, Any]:
    if node.get("x-kubernetes-int-or-string"):
        leaf: dict[str, Any] = {"type": "int-or-string"}
        if "pattern" in node:
            leaf["pattern"] = node["pattern"]
        return leaf
    return {key: node[key] for key in LEAF_KEYWORDS if key in node}


def compare_model(model: type[BaseModel], node: dict[str, Any], path: str) -> list[str]:
    problems: list[str] = []
    if node.get("type") != "object":
        return [f"{path}: CRD type {node.get('type')!r}, model {model.__name__} is an object"]
    fields = {info.alias or name: info for name, info in model.model_fields.items()}
    declared = node.get("properties", {})
    for missing in sorted(set(declared) - set(fields)):
        problems.append(f"{path}.{missing}: in the CRD, not in {model.__name__}")
    for missing in sorted(set(fields) - set(declared)):
        problems.append(f"{path}.{missing}: in {model.__name__}, not in the CRD")
    model_required = {alias for alias, info in fields.items() if info.is_required()}
    crd_required = set(node.get("required", []))
    if model_required != crd_required:
        problems.append(f"{path}: required {sorted(crd_required)} in CRD, {sorted(model_required)}")
    for alias in sorted(set(fields) & set(declared)):
        problems += compare_field(fields[alias], declared[alias], f"{path}.{alias}")
    return problems


def _field_annotation(info: FieldInfo) -> Any:
    """The field's type with its constraints: pydantic moves a top-level Annotated into metadata."""
    if info.metadata:
        return Annotated[info.annotation, *info.metadata]
    return info.annotation


def compare_field(info: FieldInfo, node: dict[str, Any], path: str) -> list[str]:
    problems = compare_type(_field_annotation(info), node, path)
    if info.is_required():
        if "default" in node:
            problems.append(f"{path}: required in the model but defaulted in the CRD")
        return problems
    model_default = info.get_default(call_default_factory=True)
    if "default" not in node:
        if model_default is not None:
            problems.append(f"{path}: model default {model_default!r}, CRD has none")
        return problems
    # The CRD default, read the way reconcile reads the stored object, must equal the model default.
    crd_default = TypeAdapter(info.annotation).validate_python(node["default"])
    if crd_default != model_default:
        problems.append(f"{path}: CRD default {node['default']!r} != model {model_default!r}")
    return problems


def compare_type(annotation: Any, node: dict[str, Any], path: str) -> list[str]:
    annotation = _strip_optional(annotation)
    base = _base(annotation)
    if _is_model(base):
        return compare_model(base, node, path)
    origin = typing.get_origin(base)
    if origin is list:
        problems = []
        if node.get("type") != "array":
            problems.append(f"{path}: CRD type {node.get('type')!r}, model has a list")
        max_items = TypeAdapter(annotation).json_schema().get("maxItems")
        if max_items != node.get("maxItems"):
            problems.append(f"{path}: maxItems {node.get('maxItems')} in CRD, {max_items} in model")
        (item,) = typing.get_args(base)
        return problems + compare_type(item, node.get("items", {}), f"{path}[]")
    if origin is dict:
        _, value = typing.get_args(base)
        if value is Any:
            preserved = node.get("x-kubernetes-preserve-unknown-fields") is True
            if not preserved or node.get("type") != "object" or "properties" in node:
                return [f"{path}: model is free-form, CRD must preserve unknown fields"]
            return []
        if node.get("type") != "object" or "additionalProperties" not in node:
            return [f"{path}: model is a map, CRD has no additionalProperties"]
        return compare_type(value, node["additionalProperties"], f"{path}{{}}")
    pydantic_leaf, crd_leaf = _leaf_from_pydantic(annotation), _leaf_from_crd(node)
    if pydantic_leaf != crd_leaf:
        return [f"{path}: CRD {crd_leaf} != model {pydantic_leaf}"]
    return []


class TestCRDMatchesModels:
    def test_spec(self) -> None:
        node = openapi_root()["properties"]["spec"]
        assert compare_model(NIMServiceSpec, node, "spec") == []

    def test_status(self) -> None:
        node = openapi_root()["properties"]["status"]
        assert compare_model(NIMServiceStatus, node, "status") == []


# The comparison itself must catch drift, or the tests above prove nothing.


class _Probe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    mode: Literal["a", "b"] | None = None
    tags: Annotated[list[str], Field(max_length=4)] | None = None
    extra: dict[str, Any] | None = None
    ratio: Annotated[float, Field(gt=0, lt=1)] | None = None


PROBE_NODE: dict[str, Any] = {
    "type": "object",
    "properties": {
        "port": {"type": "integer", "minimum": 1, "maximum": 65535, "default": 8000},
        "mode": {"type": "string", "enum": ["a", "b"]},
        "tags": {"type": "array", "maxItems": 4, "items": {"type": "string"}},
        "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        "ratio": {
            "type": "number",
            "minimum": 0,
            "exclusiveMinimum": True,
            "maximum": 1,
            "exclusiveMaximum": True,
        },
    },
}


def _drifted(path: list[str], key: str, value: Any) -> dict[str, Any]:
    node = yaml.safe_load(yaml.safe_dump(PROBE_NODE))
    target = node
    for step in path:
        target = target[step]
    if value is None:
        del target[key]
    else:
        target[key] = value
    return node


class TestComparisonCatchesDrift:
    def test_identical_trees_agree(self) -> None:
        assert compare_model(_Probe, PROBE_NODE, "x") == []

    @pytest.mark.parametrize(
        ("path", "key", "value", "expected"),
        [
            (["properties"], "renamed", {"type": "string"}, "x.renamed: in the CRD"),
            (["properties"], "port", None, "x.port: in _Probe, not in the CRD"),
            (["properties", "port"], "default", 9000, "CRD default 9000"),
            (["properties", "port"], "maximum", 1024, "x.port: CRD"),
            (["properties", "mode"], "enum", ["a", "c"], "x.mode: CRD"),
            (["properties", "tags"], "maxItems", 8, "maxItems 8 in CRD"),
            (["properties", "tags", "items"], "type", "integer", "x.tags[]: CRD"),
            (["properties", "extra"], "x-kubernetes-preserve-unknown-fields", None, "free-form"),
            (["properties", "ratio"], "exclusiveMinimum", None, "x.ratio: CRD"),
            (["properties", "ratio"], "exclusiveMaximum", False, "x.ratio: CRD"),
            ([], "required", ["port"], "x: required ['port']"),
        ],
    )
    def test_each_kind_of_drift_is_reported(
        self, path: list[str], key: str, value: Any, expected: str
    ) -> None:
        problems = compare_model(_Probe, _drifted(path, key, value), "x")
        assert any(expected in problem for problem in problems), problems
