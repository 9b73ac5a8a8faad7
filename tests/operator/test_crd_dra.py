"""spec.draResources and resources.claims: the CRD's schema and CEL rules agree with the model.

As in test_crd_cel: each invalid spec must be refused by a CEL rule of the CRD with the expected
message (evaluated by cel-python after structural defaulting, as the API server does) AND by
NIMServiceSpec with the same message; NVIDIA's DRA samples pass both, with NVIDIA's defaults.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError

from nim_operator.models import NIMServiceSpec
from tests.operator.test_crd_cel import apply_defaults, cel_violations, nimservice, openapi_root
from tests.support.crd_validation import schema_errors

GPU = {"name": "gpu", "deviceClassName": "gpu.nvidia.com", "driverName": "gpu.nvidia.com"}

# NVIDIA's samples (config/samples/nim/serving/advanced/dra): a template made beforehand, and
# templates the operator creates from selectors or from CEL expressions.
NVIDIA_SAMPLES = {
    "manual template": [{"resourceClaimTemplateName": "gpu-resourceclaimtemplate"}],
    "attribute and capacity selectors": [
        {
            "claimCreationSpec": {
                "devices": [
                    {
                        **GPU,
                        "attributeSelectors": [
                            {
                                "key": "architecture",
                                "op": "Equal",
                                "value": {"stringValue": "Ampere"},
                            }
                        ],
                        "capacitySelectors": [
                            {"key": "memory", "op": "GreaterThanOrEqual", "value": "40Gi"}
                        ],
                    }
                ]
            }
        }
    ],
    "cel expressions": [
        {
            "claimCreationSpec": {
                "devices": [
                    {
                        **GPU,
                        "celExpressions": [
                            'device.capacity["gpu.nvidia.com"].memory'
                            '.compareTo(quantity("40Gi")) >= 0'
                        ],
                    }
                ]
            }
        }
    ],
    "a shared claim, one request": [{"resourceClaimName": "node-gpus", "requests": ["gpu"]}],
}


def one_device(**device: Any) -> list[dict[str, Any]]:
    """draResources with one generated template of one device request."""
    return [{"claimCreationSpec": {"devices": [{"name": "gpu", **device}]}}]


INVALID = {
    "no source": (
        {"draResources": [{"requests": ["gpu"]}]},
        "draResources[] needs exactly one of resourceClaimName, resourceClaimTemplateName",
    ),
    "claim and template": (
        {"draResources": [{"resourceClaimName": "a", "resourceClaimTemplateName": "b"}]},
        "draResources[] needs exactly one of resourceClaimName, resourceClaimTemplateName",
    ),
    "template and creation spec": (
        {
            "draResources": [
                {
                    "resourceClaimTemplateName": "b",
                    "claimCreationSpec": {"devices": [{"name": "gpu"}]},
                }
            ]
        },
        "draResources[] needs exactly one of resourceClaimName, resourceClaimTemplateName",
    ),
    "cel expressions with selectors": (
        {
            "draResources": one_device(
                celExpressions=["true"],
                attributeSelectors=[{"key": "a", "value": {"boolValue": True}}],
            )
        },
        "celExpressions must not be set if attributeSelectors or capacitySelectors are set",
    ),
}

# NVIDIA's CRD takes these, and so does ours; no Kubernetes object can hold them (or, for a
# container claim, no pod has the claim), so the operator refuses them: Failed, InvalidSpec, with
# this message.
ACCEPTED_THEN_REFUSED = {
    "container claim not declared": (
        {
            "draResources": [{"resourceClaimName": "a"}],
            "resources": {"claims": [{"name": "dra-1"}]},
        },
        "resources.claims names the pod claims of draResources",
    ),
    "container claim without draResources": (
        {"resources": {"claims": [{"name": "dra-0"}]}},
        "resources.claims names the pod claims of draResources",
    ),
    "container claim by the claim's own name": (
        {
            "draResources": [{"resourceClaimName": "gpus"}],
            "resources": {"claims": [{"name": "gpus"}]},
        },
        "resources.claims names the pod claims of draResources",
    ),
    "container claim request not a DNS label": (
        {
            "draResources": [{"resourceClaimName": "gpus"}],
            "resources": {"claims": [{"name": "dra-0", "request": "Big_GPU"}]},
        },
        "resources.claims[].request must be a DNS label",
    ),
    "request name not a DNS label": (
        {"draResources": [{"resourceClaimName": "a", "requests": ["gpu", "gpu.big"]}]},
        "draResources[].requests[] must be a DNS label",
    ),
    "device name a subdomain, not a label": (
        {"draResources": [{"claimCreationSpec": {"devices": [{"name": "gpu.big"}]}}]},
        "claimCreationSpec.devices[].name must be a DNS label",
    ),
    "device name of 253 characters": (
        {"draResources": [{"claimCreationSpec": {"devices": [{"name": "g" * 253}]}}]},
        "claimCreationSpec.devices[].name must be a DNS label",
    ),
    "two devices of one name": (
        {
            "draResources": [
                {"claimCreationSpec": {"devices": [{"name": "gpu"}, {"name": "gpu", "count": 2}]}}
            ]
        },
        "claimCreationSpec.devices need distinct names",
    ),
    "count 0": (
        {"draResources": one_device(count=0)},
        "claimCreationSpec.devices[].count must be at least 1",
    ),
    "generateName not a DNS label": (
        {
            "draResources": [
                {"claimCreationSpec": {"generateName": "GPU", "devices": [{"name": "gpu"}]}}
            ]
        },
        "claimCreationSpec.generateName must be a DNS label",
    ),
    "attribute value with two types": (
        {
            "draResources": one_device(
                attributeSelectors=[{"key": "a", "value": {"boolValue": True, "intValue": 1}}]
            )
        },
        "an attribute selector value takes one of boolValue, intValue",
    ),
    "version that is not semver": (
        {
            "draResources": one_device(
                attributeSelectors=[{"key": "v", "value": {"versionValue": '1") || true'}}]
            )
        },
        "versionValue must be a semantic version",
    ),
    "more selectors than a device request holds": (
        {
            "draResources": one_device(
                attributeSelectors=[{"key": f"a{i}", "value": {"intValue": i}} for i in range(20)],
                capacitySelectors=[{"key": f"c{i}", "value": i} for i in range(12)],
            )
        },
        "a device takes at most 31 selectors",
    ),
    "more cel expressions than a device request holds": (
        {"draResources": one_device(celExpressions=["true"] * 32)},
        "a device takes at most 31 selectors",
    ),
    "an empty cel expression": (
        {"draResources": one_device(celExpressions=[""])},
        "celExpressions[] must not be empty",
    ),
}

# NVIDIA's CRD takes these; ours did not: each now passes the schema, the CEL rules and the model.
NVIDIA_ACCEPTS = {
    "several requests": [{"resourceClaimTemplateName": "rdma", "requests": ["nic", "gpu"]}],
    "an attribute selector without a value": one_device(
        attributeSelectors=[{"key": "gpu.nvidia.com/mig", "op": "Equal"}]
    ),
    "an empty attribute value": one_device(attributeSelectors=[{"key": "mig", "value": {}}]),
    "keys that are not CEL names": one_device(
        attributeSelectors=[{"key": "example.com/a-b.c", "value": {"stringValue": "x"}}],
        capacitySelectors=[{"key": "in", "value": "1"}],
    ),
    "an int beyond int32": one_device(
        attributeSelectors=[{"key": "memory", "value": {"intValue": 2**40}}]
    ),
    "25 attribute selectors": one_device(
        attributeSelectors=[{"key": f"a{i}", "value": {"intValue": i}} for i in range(25)]
    ),
    "32 entries": [{"resourceClaimName": f"c{i}"} for i in range(32)],
    "32 devices": [{"claimCreationSpec": {"devices": [{"name": f"gpu{i}"} for i in range(32)]}}],
    "a long cel expression": one_device(celExpressions=["true || " * 2000 + "true"]),
}


def model_error(spec: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as caught:
        NIMServiceSpec.from_body(spec)
    return str(caught.value)


class TestNvidiaSamples:
    @pytest.mark.parametrize("resources", NVIDIA_SAMPLES.values(), ids=NVIDIA_SAMPLES.keys())
    def test_pass_schema_cel_and_model(self, resources: list[dict[str, Any]]) -> None:
        obj = nimservice(draResources=resources)
        assert schema_errors(openapi_root(), obj, strict=True) == []
        assert cel_violations(obj) == []
        spec = NIMServiceSpec.from_body(obj["spec"])
        assert spec.dra_resources is not None

    def test_defaults_match_nvidias(self) -> None:
        obj = nimservice(draResources=[{"claimCreationSpec": {"devices": [{"name": "gpu"}]}}])
        defaulted = apply_defaults(openapi_root(), copy.deepcopy(obj))
        device = defaulted["spec"]["draResources"][0]["claimCreationSpec"]["devices"][0]
        assert device == {
            "name": "gpu",
            "count": 1,
            "deviceClassName": "gpu.nvidia.com",
            "driverName": "gpu.nvidia.com",
        }
        # The model's defaults are the same: the operator reads an older object the same way.
        assert NIMServiceSpec.from_body(obj["spec"]) == NIMServiceSpec.from_body(defaulted["spec"])

    def test_container_claims_naming_declared_pod_claims_pass(self) -> None:
        obj = nimservice(
            draResources=[{"resourceClaimName": "a"}, {"resourceClaimTemplateName": "b"}],
            resources={"claims": [{"name": "dra-1", "request": "gpu"}, {"name": "dra-0"}]},
        )
        assert cel_violations(obj) == []
        NIMServiceSpec.from_body(obj["spec"])


class TestInvalid:
    @pytest.mark.parametrize(("spec", "message"), INVALID.values(), ids=INVALID.keys())
    def test_cel_and_model_refuse_with_the_same_message(
        self, spec: dict[str, Any], message: str
    ) -> None:
        obj = nimservice(**spec)
        assert schema_errors(openapi_root(), obj, strict=True) == []
        violations = cel_violations(obj)
        assert any(message in violation for violation in violations), violations
        assert message in model_error(obj["spec"])

    @pytest.mark.parametrize(
        ("spec", "message"), ACCEPTED_THEN_REFUSED.values(), ids=ACCEPTED_THEN_REFUSED.keys()
    )
    def test_accepted_as_by_nvidia_then_refused_by_the_operator(
        self, spec: dict[str, Any], message: str
    ) -> None:
        obj = nimservice(**spec)
        defaulted = apply_defaults(openapi_root(), copy.deepcopy(obj))
        assert schema_errors(openapi_root(), defaulted, strict=True) == []
        assert cel_violations(obj) == []
        assert message in model_error(obj["spec"])

    @pytest.mark.parametrize(
        ("resources", "where"),
        [
            ([{"resourceClaimName": "Not_A_Name"}], "resourceClaimName"),
            ([{"claimCreationSpec": {"devices": []}}], "devices"),
            ([{"resourceClaimName": f"c{i}"} for i in range(33)], "draResources"),
            (
                [{"claimCreationSpec": {"devices": [{"name": f"d{i}"} for i in range(33)]}}],
                "devices",
            ),
        ],
    )
    def test_schema_and_model_refuse_bad_values(
        self, resources: list[dict[str, Any]], where: str
    ) -> None:
        obj = nimservice(draResources=resources)
        errors = schema_errors(openapi_root(), obj)
        assert any(where in error for error in errors), errors
        assert where in model_error(obj["spec"])

    def test_a_container_claim_is_named_once(self) -> None:
        spec = {
            "image": {"repository": "nim", "tag": "1"},
            "draResources": [{"resourceClaimName": "a"}],
            "resources": {"claims": [{"name": "dra-0"}, {"name": "dra-0", "request": "gpu"}]},
        }
        # The CRD declares the list a map keyed by name (as corev1 does, and so NVIDIA's CRD),
        # which the API server enforces.
        node = openapi_root()["properties"]["spec"]["properties"]["resources"]["properties"]
        assert node["claims"]["x-kubernetes-list-map-keys"] == ["name"]
        assert "resources.claims must not name a claim twice" in model_error(spec)


class TestNvidiaAccepts:
    @pytest.mark.parametrize("resources", NVIDIA_ACCEPTS.values(), ids=NVIDIA_ACCEPTS.keys())
    def test_schema_cel_and_model_accept(self, resources: list[dict[str, Any]]) -> None:
        obj = nimservice(draResources=resources)
        defaulted = apply_defaults(openapi_root(), copy.deepcopy(obj))
        assert schema_errors(openapi_root(), defaulted, strict=True) == []
        assert cel_violations(obj) == []
        assert NIMServiceSpec.from_body(defaulted["spec"]).dra_resources is not None

    def test_only_lists_with_rules_on_their_items_are_capped(self) -> None:
        """A real API server estimates a CEL rule's cost times the most items of every list
        above it, and refuses a CRD past its budget: those lists need a maxItems (32, what a
        resource.k8s.io/v1 claim allows); the others take any length, as NVIDIA's CRD."""
        node = openapi_root()["properties"]["spec"]["properties"]["draResources"]
        assert node["maxItems"] == 32
        devices = node["items"]["properties"]["claimCreationSpec"]["properties"]["devices"]
        assert devices["maxItems"] == 32
        assert "x-kubernetes-validations" in node["items"]
        assert "x-kubernetes-validations" in devices["items"]
        device = devices["items"]["properties"]
        for uncapped in ("attributeSelectors", "capacitySelectors", "celExpressions"):
            assert "maxItems" not in device[uncapped]
            assert "x-kubernetes-validations" not in str(device[uncapped])
        assert "maxItems" not in node["items"]["properties"]["requests"]
        claims = openapi_root()["properties"]["spec"]["properties"]["resources"]["properties"]
        assert "maxItems" not in claims["claims"]

    @pytest.mark.parametrize(
        "path", [("spec", "draResources"), ("spec", "resources"), ("status", "draResourceStatuses")]
    )
    def test_every_list_above_a_rule_is_capped(self, path: tuple[str, str]) -> None:
        node = openapi_root()
        for name in path:
            node = node["properties"][name]
        assert unbounded_lists_above_rules(node, ".".join(path)) == []


def unbounded_lists_above_rules(node: dict[str, Any], where: str) -> list[str]:
    """The lists without maxItems that hold (at any depth) a node with CEL rules."""
    found: list[str] = []

    def walk(node: dict[str, Any], where: str, lists: list[tuple[str, dict[str, Any]]]) -> None:
        if node.get("x-kubernetes-validations"):
            found.extend(f"{path} above {where}" for path, n in lists if "maxItems" not in n)
        if node.get("type") == "array":
            walk(node["items"], f"{where}[]", [*lists, (where, node)])
        for name, child in (node.get("properties") or {}).items():
            walk(child, f"{where}.{name}", lists)

    walk(node, where, [])
    return sorted(set(found))
