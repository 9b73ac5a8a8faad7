"""The CRD is a valid, structural apiextensions/v1 object that `kubectl explain` can document.

The API server checks these when the CRD is created; with no cluster here, the rules it applies
(structural schema, defaults valid against their schema, RE2 patterns, paths that exist) are
checked directly on the file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import re2  # type: ignore[import-untyped]  # the regex engine the API server's patterns use
import yaml

from nim_operator import API_GROUP, API_VERSION, KIND, PLURAL
from tests.support.crd_validation import to_json_schema

CRD_PATH = Path(__file__).parents[2] / "crds" / "nimservice.yaml"
KUBERNETES_VERSION = "1.31"


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(CRD_PATH.read_text())
    return loaded


@pytest.fixture(scope="module")
def version(crd: dict[str, Any]) -> dict[str, Any]:
    (only,) = crd["spec"]["versions"]
    return dict(only)


@pytest.fixture(scope="module")
def root(version: dict[str, Any]) -> dict[str, Any]:
    return dict(version["schema"]["openAPIV3Schema"])


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with a dotted path ([] for array items, {} for map values)."""
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")
    if "items" in node:
        yield from walk(node["items"], f"{path}[]")


class TestCRDObject:
    def test_validates_as_a_customresourcedefinition(self, crd: dict[str, Any]) -> None:
        kubernetes_validate.validate(crd, KUBERNETES_VERSION, strict=True)

    def test_names_match_the_operator_constants(
        self, crd: dict[str, Any], version: dict[str, Any]
    ) -> None:
        names = crd["spec"]["names"]
        assert crd["metadata"]["name"] == f"{PLURAL}.{API_GROUP}"
        assert (crd["spec"]["group"], version["name"]) == (API_GROUP, API_VERSION)
        assert (names["kind"], names["plural"], names["shortNames"]) == (KIND, PLURAL, ["nims"])
        assert crd["spec"]["scope"] == "Namespaced"
        assert version["served"]
        assert version["storage"]

    def test_scale_subresource_points_at_declared_fields(
        self, version: dict[str, Any], root: dict[str, Any]
    ) -> None:
        scale = version["subresources"]["scale"]
        assert "status" in version["subresources"]
        spec, status = root["properties"]["spec"], root["properties"]["status"]
        assert scale["specReplicasPath"] == ".spec.replicas"
        assert spec["properties"]["replicas"]["type"] == "integer"
        assert scale["statusReplicasPath"] == ".status.replicas"
        assert status["properties"]["replicas"]["type"] == "integer"
        assert scale["labelSelectorPath"] == ".status.selector"
        assert status["properties"]["selector"]["type"] == "string"

    def test_printer_columns(self, version: dict[str, Any], root: dict[str, Any]) -> None:
        columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
        assert {"Ready", "Replicas", "Model", "Endpoint", "Age"} <= set(columns)
        declared = {path for path, _ in walk(root)}
        for column in columns.values():
            json_path = column["jsonPath"]
            if json_path.startswith(".metadata."):
                continue
            field_path = json_path.split("[")[0]
            assert field_path in declared, f"{column['name']} reads undeclared {json_path}"


class TestStructuralSchema:
    def test_every_node_has_a_type(self, root: dict[str, Any]) -> None:
        for path, node in walk(root):
            typed = "type" in node
            int_or_string = node.get("x-kubernetes-int-or-string") is True
            assert typed != int_or_string, f"{path}: needs exactly one of type, int-or-string"
            if int_or_string:
                assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
            else:
                assert "anyOf" not in node, path
                assert "oneOf" not in node, path
            assert "$ref" not in node, path

    def test_objects_declare_properties_or_values_not_both(self, root: dict[str, Any]) -> None:
        for path, node in walk(root):
            assert not ("properties" in node and "additionalProperties" in node), path
            if node.get("type") == "array":
                assert "items" in node, f"{path}: arrays need items"

    def test_every_property_has_a_description(self, root: dict[str, Any]) -> None:
        undocumented = [
            path
            for path, node in walk(root)
            # Root metadata is ObjectMeta, documented by Kubernetes itself; scalar list items and
            # map values are described by their parent.
            if path not in ("", ".metadata")
            and not path.endswith(("[]", "{}"))
            and not node.get("description")
        ]
        assert undocumented == []

    def test_required_fields_are_declared(self, root: dict[str, Any]) -> None:
        for path, node in walk(root):
            for name in node.get("required", []):
                assert name in node.get("properties", {}), f"{path}: requires undeclared {name}"
                assert "default" not in node["properties"][name], f"{path}.{name}"

    def test_list_map_keys_are_required(self, root: dict[str, Any]) -> None:
        for path, node in walk(root):
            if node.get("x-kubernetes-list-type") == "map":
                required = set(node["items"].get("required", []))
                assert set(node["x-kubernetes-list-map-keys"]) <= required, path

    def test_status_declares_everything_the_operator_writes(self, root: dict[str, Any]) -> None:
        status = root["properties"]["status"]["properties"]
        assert {
            "observedGeneration",
            "replicas",
            "readyReplicas",
            "availableReplicas",
            "selector",
            "endpoint",
            "model",
            "state",
            "conditions",
            "autoscaling",
        } <= set(status)
        # Declared field by field: a structural schema would prune anything undeclared.
        autoscaling = status["autoscaling"]
        assert "x-kubernetes-preserve-unknown-fields" not in autoscaling
        assert {"currentMetric", "desiredReplicas", "lastScaleTime", "history"} <= set(
            autoscaling["properties"]
        )
        record = autoscaling["properties"]["history"]["items"]["properties"]
        assert set(record) == {"time", "from", "to", "metric", "value", "reason"}
        assert status["conditions"]["x-kubernetes-list-map-keys"] == ["type"]


class TestValues:
    def test_defaults_are_valid_for_their_own_schema(self, root: dict[str, Any]) -> None:
        defaulted = [(path, node) for path, node in walk(root) if "default" in node]
        assert len(defaulted) > 10
        for path, node in defaulted:
            try:
                jsonschema.validate(node["default"], to_json_schema(node, strict=True))
            except jsonschema.ValidationError as error:
                pytest.fail(f"{path}: default {node['default']!r} is invalid: {error.message}")

    def test_patterns_compile_in_re2(self, root: dict[str, Any]) -> None:
        patterns = [node["pattern"] for _, node in walk(root) if "pattern" in node]
        assert patterns
        for pattern in patterns:
            re2.compile(pattern)

    @pytest.mark.parametrize(
        ("value", "valid"),
        [
            ("50Gi", True),
            ("1.5", True),
            ("500m", True),
            ("1e3", True),
            (8, True),
            ("50GB", False),
            ("lots", False),
            ("", False),
        ],
    )
    def test_quantities(self, root: dict[str, Any], value: object, valid: bool) -> None:
        size = root["properties"]["spec"]["properties"]["storage"]["properties"]["pvc"]
        schema = to_json_schema(size["properties"]["size"], strict=True)
        assert jsonschema.Draft202012Validator(schema).is_valid(value) is valid

    @pytest.mark.parametrize(
        ("field", "value", "valid"),
        [
            ("replicas", -1, False),
            ("replicas", 0, True),
            ("userID", 0, False),
            ("shutdownTimeoutSeconds", 3601, False),
            ("unknownField", 1, False),
            ("type", "llm", True),
            # Allowed by the schema, as NVIDIA's enum; a CEL rule refuses it (test_crd_cel).
            ("type", "embedding", True),
            ("type", "chat", False),
        ],
    )
    def test_bounds_and_unknown_fields(
        self, root: dict[str, Any], field: str, value: object, valid: bool
    ) -> None:
        spec = {"image": {"repository": "r", "tag": "t"}, field: value}
        schema = to_json_schema(root["properties"]["spec"], strict=True)
        assert jsonschema.Draft202012Validator(schema).is_valid(spec) is valid

    def test_service_port_bounds(self, root: dict[str, Any]) -> None:
        port = root["properties"]["spec"]["properties"]["expose"]["properties"]["service"]
        port = port["properties"]["port"]
        # No default: unset means NVIDIA's older openaiPort when given, else 8000 (the model's).
        assert (port["minimum"], port["maximum"], "default" in port) == (1, 65535, False)
